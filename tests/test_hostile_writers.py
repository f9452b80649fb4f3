"""Writers that race, and failures only the save would have met (issue 30: 5, 16, 17).

Every writer (``prune``, ``convert``, ``RunResult.save``, the demo) holds its output
from its first check to its final rename: a second snows-hf writer is refused, and a
target that another program wrote meanwhile is never replaced. A refusal is one
``snows-hf: error:`` line, exit code 1, no traceback, and the first output byte for byte.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import patch_everywhere
from test_hostile_outputs import ENV, FAST, _refused, _tree

import snows_hf
import snows_hf.card
from snows_hf.cli import main
from snows_hf.fields import SettingError
from snows_hf.workflow import checkpoint_dir, default_output_dir

PRUNE = ["--sparsity", "2:4", *FAST]

# a writer that stops inside its save (the weights written, the rename not yet done) until "go" exists
PAUSED = """
import os, sys, time
import snows_hf.card
from snows_hf.cli import main

original = snows_hf.card.write_card

def write_card(*args, **kwargs):
    original(*args, **kwargs)
    print("saving", flush=True)
    while not os.path.exists("go"):
        time.sleep(0.05)

for module in list(sys.modules.values()):  # every module that took the name at import
    if getattr(module, "write_card", None) is original:
        module.write_card = write_card
sys.exit(main(sys.argv[1:]))
"""


def _paused(argv):
    """Start ``snows-hf ARGV`` in another process; return it once it is inside its save."""
    writer = subprocess.Popen([sys.executable, "-c", PAUSED, *argv], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    line = writer.stdout.readline()
    assert line.strip() == "saving", writer.communicate()[1]
    return writer


def _finish(writer):
    Path("go").touch()
    out, err = writer.communicate(timeout=300)
    Path("go").unlink()
    assert writer.returncode == 0, err
    return out


@pytest.fixture
def source(vit_dir):
    """A snows-hf output to convert (``src``)."""
    assert main(["prune", str(vit_dir), "--output-dir", "src", *PRUNE]) == 0
    return Path("src")


def test_a_second_convert_into_one_folder_is_refused_while_the_first_writes(source, capsys):
    first = _paused(["convert", "src", "--to", "compact", "--output-dir", "out"])
    try:
        line = _refused(["convert", "src", "--to", "dense", "--output-dir", "out"], "another snows-hf run (pid", capsys)
        assert str(first.pid) in line
    finally:
        _finish(first)
    config = json.loads(Path("out/config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "snows-hf"  # the first one's, complete
    assert sorted(p.name for p in Path(".").iterdir()) == ["out", "src", "tiny-vit"]  # no lock, no temporary left


def test_a_convert_into_the_output_of_a_running_prune_is_refused(source, vit_dir, capsys):
    pruning = _paused(["prune", str(vit_dir), "--output-dir", "out", *PRUNE])
    try:
        _refused(["convert", "src", "--to", "compact", "--output-dir", "out", "--overwrite"], "another snows-hf run (pid",
                 capsys)
        _refused(["prune", str(vit_dir), "--output-dir", "out", "--overwrite", *PRUNE], "another snows-hf run (pid", capsys)
    finally:
        _finish(pruning)
    assert json.loads(Path("out/report.json").read_text())["source_model"] == str(vit_dir)
    assert "quantization_config" not in json.loads(Path("out/config.json").read_text())  # the prune's dense output


HOLD = """
import time
from snows_hf.output_claim import claim_output

with claim_output("out"):
    print("held", flush=True)
    time.sleep(300)
"""


def _demo_writer(_):
    from snows_hf.demo import run_demo

    run_demo("out")


def _python_save(vit_dir):
    result = snows_hf.run(vit_dir, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, "random", save=False, progress=False)
    result.save("out")


@pytest.mark.parametrize("writer", [
    pytest.param(["prune", "{m}", "--output-dir", "out", *PRUNE], id="prune"),
    pytest.param(["convert", "src", "--to", "compact", "--output-dir", "out"], id="convert"),
    pytest.param(["demo", "--output-dir", "out"], id="demo"),
    pytest.param(_python_save, id="RunResult.save"),
    pytest.param(_demo_writer, id="run_demo"),
])
def test_every_writer_is_refused_while_another_holds_the_output(writer, source, vit_dir, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        if callable(writer):
            before = _tree()
            with pytest.raises(SettingError, match=rf"another snows-hf run \(pid {holder.pid}\) is writing this output"):
                writer(vit_dir)
            assert _tree() == before
        else:
            _refused([a.format(m=vit_dir) for a in writer], f"another snows-hf run (pid {holder.pid})", capsys)
    finally:
        holder.kill()
        holder.wait()


def test_two_converts_started_together_leave_one_output_and_one_error_line(source):
    command = [sys.executable, "-m", "snows_hf", "convert", "src", "--to", "compact", "--output-dir", "out", "--quiet"]
    writers = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [(w.wait(timeout=300), w.stderr.read()) for w in writers]
    assert sorted(code for code, _ in results) == [0, 1], results
    err = next(err for code, err in results if code == 1)
    lines = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "another snows-hf run" in lines[0] or "is not empty" in lines[0], lines[0]
    assert json.loads(Path("out/config.json").read_text())["quantization_config"]["quant_method"] == "snows-hf"
    assert sorted(p.name for p in Path(".").iterdir()) == ["out", "src", "tiny-vit"]


def _during_the_save(monkeypatch, event):
    original = snows_hf.card.write_card

    def write_card(*args, **kwargs):
        original(*args, **kwargs)
        event()

    patch_everywhere(monkeypatch, snows_hf.card, "write_card", write_card)


WRITERS = [
    pytest.param(["convert", "src", "--to", "compact", "--output-dir", "out"], id="convert"),
    pytest.param(["prune", "{m}", "--output-dir", "out", *PRUNE], id="prune"),
]


@pytest.mark.parametrize("argv", WRITERS)
@pytest.mark.parametrize("change, message", [
    pytest.param("appears", "output folder 'out' appeared while snows-hf was writing it", id="appears"),
    pytest.param("grows", "output folder 'out' changed while snows-hf was writing it", id="grows"),
])
def test_a_target_another_program_writes_meanwhile_is_never_replaced(argv, change, message, source, vit_dir, monkeypatch,
                                                                    capsys):
    argv = [a.format(m=vit_dir) for a in argv]
    if change == "appears":  # a finished output, as another program (or a snows-hf without locks) leaves it
        shutil.copytree(source, "first")
        expected = {k.replace("first", "out", 1): v for k, v in _tree("first").items()}
        event = lambda: shutil.copytree("first", "out")
    else:  # the earlier output being replaced gets a file of the user's
        shutil.copytree(source, "out")
        argv += ["--overwrite"]
        expected = {**_tree("out"), "out/notes.txt": _tree_of_text("mine")}
        event = lambda: Path("out/notes.txt").write_text("mine")
    _during_the_save(monkeypatch, event)
    capsys.readouterr()
    before = _tree()
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert len(lines) == 1 and err.rstrip("\n").endswith(lines[0]) and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    after = _tree()
    assert {k: v for k, v in after.items() if k == "out" or k.startswith("out/")} == {"out": after["out"], **expected}
    kept = os.path.relpath(checkpoint_dir("out"))  # a prune keeps its finished blocks, for a resume
    new = {k for k in set(after) - set(before) if k != "out" and not k.startswith("out/")}
    assert {k for k in new if argv[0] != "prune" or not k.startswith(kept)} == set(), new


def _tree_of_text(text):
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def test_a_python_save_refuses_a_target_that_appeared_meanwhile(vit_dir, monkeypatch):
    result = snows_hf.run(vit_dir, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, "random", save=False, progress=False)
    os.mkdir("first")
    Path("first/notes.txt").write_text("mine")
    _during_the_save(monkeypatch, lambda: shutil.copytree("first", "out"))
    with pytest.raises(SettingError, match="output folder 'out' appeared while snows-hf was writing it") as caught:
        result.save("out")
    assert caught.value.field == "output_dir"
    assert Path("out/notes.txt").read_text() == "mine" and sorted(os.listdir("out")) == ["notes.txt"]
    assert result.output_dir is None


# issue 30, 16: a file-size limit below what the output needs is found before any pruning
LIMITED = """
import resource, sys
import snows_hf.loading
from snows_hf.cli import main

def load_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the refusal")

if sys.argv[2] == "prune":  # a local model's size is known from its files
    snows_hf.loading.load_model = load_model
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("argv", [
    pytest.param(["prune", "{m}", "--output-dir", "out", *PRUNE], id="prune"),
    pytest.param(["convert", "src", "--to", "dense", "--output-dir", "out"], id="convert"),
])
def test_a_file_size_limit_below_the_model_is_refused_before_any_work(argv, source, vit_dir):
    argv = [a.format(m=vit_dir) for a in argv]
    before = _tree()
    limited = subprocess.run([sys.executable, "-c", LIMITED, str(16 * 1024), *argv], env=ENV, capture_output=True, check=False,
                             text=True, timeout=300)
    lines = [line for line in limited.stderr.splitlines() if line.startswith("snows-hf: error:")]
    assert limited.returncode == 1 and len(lines) == 1 and "Traceback" not in limited.stderr, limited.stderr
    assert "the file-size limit of this process (16 KiB)" in lines[0] and "--resume" not in lines[0], lines[0]
    assert _tree() == before


@pytest.mark.parametrize("error, advice", [
    pytest.param(UnicodeEncodeError("utf-8", "x\udcff", 1, 2, "surrogates not allowed"), None, id="not-encodable"),
    pytest.param(OSError(errno.ENAMETOOLONG, "File name too long"), None, id="name-too-long"),
    pytest.param(OSError(errno.EFBIG, "File too large"), "raise the file-size limit, then rerun with --resume",
                 id="file-too-large"),
    pytest.param(RuntimeError("Error while serializing: I/O error: File too large (os error 27)"),
                 "raise the file-size limit, then rerun with --resume", id="file-too-large-from-rust"),
    pytest.param(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
                 "free disk space, then rerun with --resume", id="disk-full-from-rust"),
    pytest.param(OSError(errno.EIO, "Input/output error"), "rerun with --resume to continue", id="other"),
])
def test_a_failed_save_advises_a_resume_only_where_it_can_get_further(error, advice, vit_dir, monkeypatch, capsys):
    def write_card(*args, **kwargs):
        raise error

    patch_everywhere(monkeypatch, snows_hf.card, "write_card", write_card)
    assert main(["prune", str(vit_dir), "--output-dir", "out", *PRUNE]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert len(lines) == 1 and err.rstrip("\n").endswith(lines[0]) and "Traceback" not in err, err
    if advice is None:
        assert "--resume" not in lines[0] and "a resume would fail the same way" in lines[0], lines[0]
    else:
        assert advice in lines[0], lines[0]
    assert not Path("out").exists() and Path(checkpoint_dir("out"), "state.json").is_file()


# issue 30, 17: a huge folder is refused from its top level, never walked
def _scans(monkeypatch):
    real, seen = os.scandir, []

    def scandir(path="."):
        seen.append(os.path.realpath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return seen


def test_the_home_folder_as_output_is_refused_without_walking_it(tmp_path, vit_dir, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / "projects" / "deep").mkdir(parents=True)
    for i in range(50):
        (home / "projects" / "deep" / f"{i}.txt").write_text("mine")
    (home / "notes.txt").write_text("mine")
    (home / "report.json").write_text(json.dumps({"snows_hf_files": ["notes.txt", "projects/deep/0.txt", "report.json"]}))
    monkeypatch.setenv("HOME", str(home))
    os.mkdir("work")
    monkeypatch.chdir("work")
    seen = _scans(monkeypatch)
    _refused(["prune", str(vit_dir), "--output-dir", "~", "--overwrite", *PRUNE],
             f"{home} holds files snows-hf did not write (notes.txt, projects/)", capsys)
    assert not [p for p in seen if p.startswith(str(home / "projects"))], seen


def test_a_folder_of_many_entries_is_refused_after_reading_a_bounded_number(vit_dir, monkeypatch, capsys):
    os.mkdir("out")
    names = [f"model-{i:05d}-of-05000.safetensors" for i in range(1, 5001)]  # each named as a shard would be
    for name in names:
        Path("out", name).touch()
    Path("out/report.json").write_text(json.dumps({"snows_hf_files": names + ["report.json"]}))
    real, read, out = os.scandir, [], os.path.realpath("out")

    class Counted:
        def __init__(self, path="."):
            self.entries, self.counted = real(path), os.path.realpath(path) == out

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.entries.close()

        def __iter__(self):
            for entry in self.entries:
                read.extend([entry.name] if self.counted else [])
                yield entry

        def close(self):
            self.entries.close()

    before = _tree()
    monkeypatch.setattr(os, "scandir", Counted)
    code = main(["prune", str(vit_dir), "--output-dir", "out", "--overwrite", *PRUNE])
    monkeypatch.setattr(os, "scandir", real)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("snows-hf: error: out holds more than 1000 entries, more than snows-hf writes")
    assert len(err.splitlines()) == 1 and _tree() == before, err
    assert 1000 <= len(read) <= 1001, len(read)


# the partial of round one: `prune .` inside a model folder
@pytest.mark.parametrize("model", [".", "./", "../tiny-vit", "../tiny-vit/"])
def test_a_model_named_from_inside_its_folder_is_saved_beside_it_under_its_name(model, vit_dir, monkeypatch):
    inside = sorted(os.listdir(vit_dir))
    monkeypatch.chdir(vit_dir)
    assert default_output_dir(model, "2:4") == os.path.join("..", "tiny-vit-pruned-2of4")
    assert main(["prune", model, *PRUNE]) == 0
    assert sorted(os.listdir(".")) == inside  # nothing hidden or new inside the model folder
    assert Path("../tiny-vit-pruned-2of4/model.safetensors").is_file()


def test_convert_from_inside_an_output_folder_writes_beside_it(source, monkeypatch):
    inside = sorted(os.listdir(source))
    monkeypatch.chdir(source)
    assert main(["convert", ".", "--to", "compact"]) == 0
    assert sorted(os.listdir(".")) == inside
    assert Path("../src-compact/model.safetensors").is_file()


@pytest.mark.parametrize("model, expected", [
    ("google/vit-base-patch16-224", "vit-base-patch16-224-pruned-2of4"),
    ("models/tiny-vit/", "tiny-vit-pruned-2of4"),
    ("models/tiny-vit/.", "tiny-vit-pruned-2of4"),
])
def test_the_default_output_is_named_after_the_model(model, expected, vit_dir):
    shutil.copytree(vit_dir, "models/tiny-vit")
    assert default_output_dir(model, "2:4") == expected
