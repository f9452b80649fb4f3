"""Hostile lm-eval task files (issue 30): a task file is code, so a recipe (a file from
strangers) names lm-eval tasks by their registered names only; the task files a user names
get the recipes' YAML rules (no aliases, bounded size) and bounds on what lm-eval reads for
them (their includes, their folder), before lm-eval sees them.

Every refusal is one ``snows-hf: error:`` line, no traceback, exit code 1, and leaves the
folders as they were; no task file's code runs.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_hostile_security import _one_error, _tree  # the hostile suites' checks

from snows_hf.cli import main
from snows_hf.fields import SettingError

pytest.importorskip("lm_eval")

TASK_DIR = Path(__file__).parent / "data" / "lmeval"
TASK = "snows_tiny_choice"


def _task_config(**changes):
    """The offline test task as a dict, its data file named by absolute path."""
    config = yaml.safe_load((TASK_DIR / f"{TASK}.yaml").read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(TASK_DIR / "items.jsonl")
    return config | changes


def _write_task(path: Path, text: str | None = None, **changes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else yaml.safe_dump(_task_config(**changes), sort_keys=False))
    return path


# --- 1. a recipe names lm-eval tasks by their registered names only ---------------------------

def _jinja_tasks(tmp_path: Path) -> Path:
    """A task folder (and a suffix-less task file) whose prompt template runs a shell command
    that writes MARKER: what lm-eval's unsandboxed Jinja does with ``doc_to_text``."""
    marker = tmp_path / "MARKER"
    payload = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}{{context}}"
    _write_task(tmp_path / "jinja" / "choice.yaml", doc_to_text=payload)
    _write_task(tmp_path / "choice", doc_to_text=payload)  # a task file without a suffix
    # lm-eval's !function tag spelled with a URI escape, importing Python that writes MARKER
    _write_task(tmp_path / "spelled" / "spelled.yaml", yaml.safe_dump(_task_config(task="spelled")).replace(
        "test_split:", "process_docs: !fun%63tion utils.process\ntest_split:"))
    (tmp_path / "spelled" / "utils.py").write_text(f"open({str(marker)!r}, 'w')\ndef process(docs):\n    return docs\n")
    return marker


def _recipe(path: Path, tasks) -> Path:
    path.write_text(yaml.safe_dump({"prune": {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"},
                                    "data": {"dataset": "random", "num_samples": 2, "seq_len": 8},
                                    "evaluation": {"tasks": tasks, "limit": 2}}))
    return path


RECIPE_TASKS = [
    pytest.param(["jinja"], id="bare-name-of-a-folder"),
    pytest.param(["./jinja"], id="dot-slash"),
    pytest.param(["jinja/"], id="trailing-slash"),
    pytest.param(["jinja/choice.yaml"], id="yaml-file"),
    pytest.param(["choice"], id="bare-name-of-a-file"),
    pytest.param(["{tmp}/jinja"], id="absolute-folder"),
    pytest.param(["{tmp}/jinja/choice.yaml"], id="absolute-file"),
    pytest.param(["~"], id="home"),
    pytest.param(["~/jinja"], id="under-home"),
    pytest.param(["nowhere.yaml"], id="missing-yaml-file"),
    pytest.param(["nowhere.yml"], id="missing-yml-file"),
    pytest.param(["no/such/folder"], id="missing-folder"),
    pytest.param(["arc_easy", "./jinja"], id="after-a-name"),
    pytest.param("arc_easy,jinja", id="comma-separated"),
    pytest.param([".."], id="parent"),
    pytest.param(["spelled"], id="escaped-function-tag"),
    pytest.param(["./spelled/spelled.yaml"], id="escaped-function-tag-file"),
]


@pytest.mark.parametrize("tasks", RECIPE_TASKS)
def test_a_recipe_naming_task_files_is_refused_and_no_code_runs(tasks, llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    marker = _jinja_tasks(tmp_path)
    tasks = [t.format(tmp=tmp_path) for t in tasks] if isinstance(tasks, list) else tasks
    _recipe(tmp_path / "r.yaml", tasks)
    before = _tree(tmp_path)
    code = main(["prune", str(llama_dir), "--recipe", "r.yaml", "--output-dir", "out", "--no-eval"])
    line = _one_error(capsys.readouterr().err)
    assert code == 1
    assert "evaluation.tasks" in line and "registered" in line and "a task file runs code" in line, line
    assert "--tasks" in line  # the user's own way to name task files
    assert not marker.exists()
    assert _tree(tmp_path) == before


def test_the_users_tasks_replace_a_recipes_task_paths(tmp_path):
    """A recipe written by the user's own run names their task folder: rerun with it, the
    user names the folder again (the hint of the refusal), and the recipe's entry is not used."""
    from snows_hf.recipe import load_recipe_tasks

    _write_task(tmp_path / "mine" / "t.yaml")
    recipe = _recipe(tmp_path / "r.yaml", [str(tmp_path / "mine")])
    with pytest.raises(SettingError, match="evaluation.tasks") as caught:
        load_recipe_tasks(recipe)
    assert caught.value.field == "tasks"
    settings = load_recipe_tasks(recipe, tasks=[str(tmp_path / "mine")])
    assert settings.tasks == [str(tmp_path / "mine")] and settings.limit == 2
    assert load_recipe_tasks(_recipe(tmp_path / "names.yaml", ["arc_easy", "piqa"])).tasks == ["arc_easy", "piqa"]
    assert load_recipe_tasks(recipe, limit=3, tasks="piqa").to_dict() == {"tasks": ["piqa"], "limit": 3}


def test_registered_names_are_looked_up_in_lm_evals_own_tasks_only(monkeypatch):
    """Names alone build lm-eval's index of its own tasks, with no folder of anyone's added."""
    import lm_eval.tasks

    from snows_hf.harness import resolve_tasks

    made = []

    class Manager:
        def __init__(self, **options):
            made.append(options)
            self.task_index = {"arc_easy": object()}
            self.all_tasks = ["arc_easy"]

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Manager)
    assert resolve_tasks(["arc_easy"]).names == ["arc_easy"]
    assert made == [{"include_path": None, "include_defaults": True}]


# --- 2, 15. the task files a user names: the recipes' YAML rules and bounds on what lm-eval reads --

_BOMB = "\n".join(  # 8 levels of 9 aliases: 43 million strings once expanded, under 400 bytes of YAML
    ["metadata:", "  version: 1.0", "  notes:"]
    + [f"    - &{name} [" + ",".join([f'"{name * 3}"'] * 9 if i == 0 else [f"*{prev}"] * 9) + "]"
       for i, (prev, name) in enumerate(zip(" abcdefg", "abcdefgh"))] + [""])


def _chain(folder: Path, length: int) -> Path:
    """``t0.yaml`` includes ``t1.yaml`` ... includes the task: a chain of ``length`` includes."""
    _write_task(folder / f"t{length}.yaml")
    for i in range(length):
        (folder / f"t{i}.yaml").write_text(f"include: t{i + 1}.yaml\ntask: chained{i}\n")
    return folder / "t0.yaml"


def _fifo(path: Path) -> None:
    """A named pipe nobody writes to. Should a reader block on it, a helper thread writes a
    line and closes it, for a minute, so that a test fails instead of hanging."""
    os.mkfifo(path)

    def rescue():
        for _ in range(120):
            time.sleep(0.5)
            try:
                end = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # fails while no reader waits
            except OSError:
                continue
            os.write(end, b"task: unblocked\n")
            os.close(end)

    threading.Thread(target=rescue, daemon=True).start()


def _setup_user_files(tmp_path: Path, named: str) -> None:
    """Each case in a folder of its own (lm-eval indexes a named file's whole folder)."""
    task = yaml.safe_dump(_task_config(), sort_keys=False)
    _write_task(tmp_path / "alias" / "t.yaml", task + "metadata: &meta {version: 1}\nextra: *meta\n")
    _write_task(tmp_path / "big" / "t.yaml", task + "#" * 2**20 + "\n")
    (tmp_path / "utf16").mkdir()
    (tmp_path / "utf16" / "t.yaml").write_bytes(task.encode("utf-16"))  # with its byte order mark
    _write_task(tmp_path / "elsewhere" / "base.yaml", "metadata: &m {version: 1}\nextra: *m\n")
    _write_task(tmp_path / "inc_alias" / "t.yaml", task + "include: ../elsewhere/base.yaml\n")
    _write_task(tmp_path / "cycle" / "a.yaml", "include: b.yaml\ntask: a\n")
    _write_task(tmp_path / "cycle" / "b.yaml", "include: [c.yaml]\n")
    _write_task(tmp_path / "cycle" / "c.yaml", "{include: a.yaml}\n")  # a flow mapping
    _write_task(tmp_path / "self" / "t.yaml", "'include': t.yaml\ntask: s\n")  # a quoted key
    _chain(tmp_path / "deep", 12)
    _write_task(tmp_path / "diamond" / "d.yaml", task)
    (tmp_path / "diamond" / "b.yaml").write_text("include: d.yaml\n")
    (tmp_path / "diamond" / "c.yaml").write_text("include: d.yaml\n")
    (tmp_path / "diamond" / "a.yaml").write_text("include: [b.yaml, c.yaml]\ntask: a\n")
    _write_task(tmp_path / "missing" / "t.yaml", task + "include: nowhere.yaml\n")
    _write_task(tmp_path / "mapping" / "t.yaml", task + "include: {a: 1}\n")
    _write_task(tmp_path / "number" / "t.yaml", task + "include: [7]\n")
    _write_task(tmp_path / "folder_inc" / "t.yaml", task + "include: ../elsewhere\n")
    _write_task(tmp_path / "block" / "t.yaml", task + "include: |-\n  ../elsewhere/base.yaml\n")  # a block scalar
    _write_task(tmp_path / "device" / "t.yaml", task + "include: /dev/zero\n")
    if named.startswith("fifo"):
        _write_task(tmp_path / "fifo" / "t.yaml", task + "include: pipe.yaml\n")
        _fifo(tmp_path / "fifo" / "pipe.yaml")
    if named == "many":
        (tmp_path / "many").mkdir()
        for i in range(1001):
            (tmp_path / "many" / f"t{i:04d}.yaml").write_text(f"task: many{i}\n")


USER_FILES = [
    pytest.param("alias/t.yaml", "uses the YAML alias *meta", id="alias"),
    pytest.param("big/t.yaml", "over 1 MiB", id="over-1-MiB"),
    pytest.param("utf16/t.yaml", "is not UTF-8 text", id="utf-16-with-bom"),
    pytest.param("inc_alias", "base.yaml' uses the YAML alias *m", id="alias-in-an-included-file-outside"),
    pytest.param("cycle", "includes itself: a.yaml -> b.yaml -> c.yaml -> a.yaml", id="include-cycle"),
    pytest.param("cycle/b.yaml", "includes itself: b.yaml -> c.yaml -> a.yaml -> b.yaml", id="include-cycle-from-a-file"),
    pytest.param("self/t.yaml", "includes itself: t.yaml -> t.yaml", id="include-self"),
    pytest.param("deep/t0.yaml", "includes files more than 8 deep", id="include-chain-too-long"),
    pytest.param("diamond", "includes 'd.yaml' twice", id="include-diamond"),
    pytest.param("missing/t.yaml", "nowhere.yaml': No such file or directory", id="include-missing"),
    pytest.param("mapping/t.yaml", "include: must name YAML files", id="include-mapping"),
    pytest.param("number/t.yaml", "include: must name YAML files", id="include-number"),
    pytest.param("folder_inc/t.yaml", "elsewhere' is not a regular file", id="include-folder"),
    pytest.param("block/t.yaml", "base.yaml' uses the YAML alias *m", id="include-block-scalar"),
    pytest.param("fifo/t.yaml", "pipe.yaml' is not a regular file", id="include-fifo"),
    pytest.param("device/t.yaml", "/dev/zero' is not a regular file", id="include-device"),
    pytest.param("many", "more than 1000", id="folder-of-too-many-files"),
]


@pytest.mark.parametrize("tasks, message", USER_FILES)
def test_hostile_task_files_are_one_line_before_lm_eval_reads_them(tasks, message, llama_dir, tmp_path, capsys):
    _setup_user_files(tmp_path, tasks)
    before = _tree(tmp_path)
    code = main(["eval", str(llama_dir), "--tasks", tasks, "--limit", "2"])
    line = _one_error(capsys.readouterr().err)
    assert code == 1
    assert message in line and len(line) < 400, line
    assert _tree(tmp_path) == before


def test_a_shallow_include_chain_is_read_as_lm_eval_reads_it(tmp_path):
    from snows_hf.harness import resolve_tasks

    suite = resolve_tasks([str(_chain(tmp_path / "shallow", 3))])
    assert suite.names == ["chained0"]


def test_the_users_own_task_files_run_their_python_as_lm_eval_does(tmp_path):
    """A task file the user names is theirs to run: its !function (however spelled) imports
    Python from the file's own folder, though lm-eval reads the file through a private link."""
    from snows_hf.harness import resolve_tasks

    marker = tmp_path / "MARKER"
    _jinja_tasks(tmp_path)
    suite = resolve_tasks([str(tmp_path / "spelled")])
    assert suite.names == ["spelled"] and not marker.exists()  # indexing runs nothing
    assert list(suite.manager.load(suite.names)["tasks"]) == ["spelled"]
    assert marker.exists()


def test_an_alias_bomb_task_file_is_refused_in_bounded_memory(tmp_path, llama_dir):
    """Under 400 bytes of nested aliases, which lm-eval expands to gigabytes once it copies
    the task's config: under an address-space limit the refusal is one short line."""
    task = {key: value for key, value in _task_config().items() if key != "metadata"}
    (tmp_path / "bomb.yaml").write_text(yaml.safe_dump(task, sort_keys=False) + _BOMB)
    assert len(_BOMB) < 400
    code = (
        "import resource, sys\n"
        "import lm_eval, lm_eval.tasks, yaml\n"
        "import snows_hf.cli, snows_hf.harness, snows_hf.workflow\n"  # what scoring tasks imports
        "size = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**29, size + 2**29))\n"  # 512 MiB more than the imports
        f"sys.exit(snows_hf.cli.main(['eval', {str(llama_dir)!r}, '--tasks', 'bomb.yaml', '--limit', '2']))\n"
    )
    before = _tree(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1",
                                     PYTHONPATH=str(Path(__file__).parents[1])))  # this checkout's snows_hf
    assert result.returncode == 1, result.stderr[-3000:]
    line = _one_error(result.stderr)
    assert "alias" in line and len(line) < 300
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith("hf-home")} == before


def test_a_named_task_file_is_indexed_alone_not_with_its_folder(tmp_path):
    """lm-eval indexes a folder: a named file's siblings (here one with an alias, one over
    1 MiB) are neither read nor indexed."""
    from snows_hf.harness import resolve_tasks

    named = _write_task(tmp_path / "downloads" / "mine.yaml")
    (tmp_path / "downloads" / "other.yaml").write_text("task: other\nmetadata: &m {v: 1}\nx: *m\n")
    _write_task(tmp_path / "downloads" / "big.yaml", "task: big\n" + "#" * 2**20 + "\n")
    suite = resolve_tasks([str(named)])
    assert suite.names == [TASK]
    assert set(suite.manager.task_index) == {TASK}


def test_a_named_task_folder_is_walked_and_read_within_bounds(tmp_path, monkeypatch):
    from snows_hf.harness import suite as harness  # where the bounds are read

    folder = tmp_path / "tasks"
    for i in range(4):
        _write_task(folder / "deeper" / str(i) / "t.yaml", f"task: t{i}\n" + "#" * 100 + "\n")
    monkeypatch.setattr(harness, "MAX_TASK_BYTES", 300)
    with pytest.raises(SettingError, match=r"over 300 bytes of YAML") as caught:
        harness.resolve_tasks([str(folder)])
    assert caught.value.field == "tasks"
    monkeypatch.setattr(harness, "MAX_TASK_BYTES", 10_000)
    monkeypatch.setattr(harness, "MAX_FOLDER_ENTRIES", 6)
    with pytest.raises(SettingError, match=r"more than 6 entries"):
        harness.resolve_tasks([str(folder)])
    monkeypatch.setattr(harness, "MAX_FOLDER_ENTRIES", 100)
    assert harness.resolve_tasks([str(folder)]).names == ["t0", "t1", "t2", "t3"]


# --- 14. scoring tasks prints nothing of other libraries ----------------------------------------

@pytest.mark.parametrize("quiet", [True, False])
def test_scoring_tasks_prints_no_lines_of_other_libraries(quiet, llama_dir, tmp_path, capfd, monkeypatch):
    """lm-eval runs git for a commit hash ("fatal: not a git repository" outside one) and
    draws progress bars; datasets draws its own: none of it reaches stderr, with or without
    ``--quiet`` (transformers' bar of the weights loaded, before scoring, is switched off here)."""
    from transformers.utils import logging as transformers_logging

    monkeypatch.setattr(transformers_logging, "is_progress_bar_enabled", lambda: False)
    task = _write_task(tmp_path / "tasks" / f"{TASK}.yaml")
    code = main(["eval", str(llama_dir), "--tasks", str(task), "--limit", "2", "--json", "e.json"]
                + (["--quiet"] if quiet else []))
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert out.splitlines()[1].startswith(f"{TASK} (2)")
    assert [line for line in err.splitlines() if not line.startswith("snows-hf: ")] == []
    assert err == "" if quiet else f"snows-hf: lm-eval: scoring the model model on {TASK}" in err
    assert json.loads(Path("e.json").read_text())["tasks"]["model"][0]["samples"] == 2
