"""Hostile inputs (issue 20): code a repo ships, links out of a pushed folder, recipes built
to exhaust memory, local paths in what a push publishes.

Every refusal is one ``snows-hf: error:`` line, no traceback, a non-zero exit, and leaves
the folders as they were.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_llama, tiny_tokenizer
from hub_server import TOKEN

from snows_hf.cli import main

PRUNE = ["--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "random", "--num-samples", "2", "--seq-len", "8"]


def _tree(folder):
    """Every path under ``folder`` with a digest of its bytes: what a refused command must leave alone."""
    def digest(path):
        return not path.is_symlink() and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest()

    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*"))}


def _one_error(stderr):
    """The single ``snows-hf: error:`` line of ``stderr``, after checking there is no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("snows-hf: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --- 1. code a repo ships runs only with --trust-remote-code ---------------------------------

def _evil_code(folder, marker, config_file, auto_class, kind="tokenization"):
    """Give ``folder`` an ``auto_map`` entry in ``config_file`` pointing at Python that, once
    imported, writes ``marker``."""
    module = f"{kind}_evil"
    (folder / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').write('the repo code ran')\n"
        "from transformers import PreTrainedTokenizerFast as Base\n"
        "class Evil(Base):\n    pass\n")
    path = folder / config_file
    settings = json.loads(path.read_text()) if path.exists() else {}
    ref = f"{module}.Evil"
    settings["auto_map"] = {auto_class: [ref, None] if auto_class == "AutoTokenizer" else ref}
    path.write_text(json.dumps(settings))


def _client_env(tmp_path, **extra):
    """A fresh process: its own HF_HOME (transformers copies repo code into its modules cache)."""
    return dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), **extra)


@pytest.mark.parametrize("where", ["model folder", "--processor folder"])
def test_repo_code_never_runs_on_a_piped_yes(llama_dir, tmp_path, where):
    """transformers asks "Do you wish to run the custom code? [y/N]" on stdin when it is not
    told: a "y" piped in (or typed by someone who did not read it) ran the repo's code."""
    marker = tmp_path / "MARKER"
    code_dir = llama_dir
    extra = []
    if where == "--processor folder":
        code_dir = tmp_path / "processor"
        code_dir.mkdir()
        extra = ["--processor", str(code_dir)]
    _evil_code(code_dir, marker, "tokenizer_config.json", "AutoTokenizer")
    before = _tree(tmp_path)
    cmd = [sys.executable, "-m", "snows_hf", "prune", str(llama_dir), *PRUNE, "--output-dir", str(tmp_path / "out"),
           "--quiet", *extra]
    result = subprocess.run(cmd, input="y\ny\ny\n", capture_output=True, text=True, timeout=300,
                            env=_client_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    line = _one_error(result.stderr)
    assert "tokenizer_config.json" in line and "tokenization_evil.Evil" in line and "--trust-remote-code" in line
    assert "[y/N]" not in result.stdout + result.stderr  # nobody was asked
    assert not marker.exists()
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "fixture, config_file, auto_class",
    [("llama_dir", "config.json", "AutoModelForCausalLM"),
     ("llama_dir", "tokenizer_config.json", "AutoTokenizer"),
     ("vit_dir", "preprocessor_config.json", "AutoImageProcessor"),
     ("vit_dir", "processor_config.json", "AutoProcessor")],
)
@pytest.mark.parametrize("command", ["prune", "prune --dry-run", "eval"])
def test_repo_code_is_refused_before_anything_loads(request, tmp_path, capsys, fixture, config_file, auto_class,
                                                    command):
    folder = request.getfixturevalue(fixture)
    marker = tmp_path / "MARKER"
    _evil_code(folder, marker, config_file, auto_class, kind="processing")
    before = _tree(tmp_path)
    name, *flags = command.split()
    args = PRUNE + ["--output-dir", str(tmp_path / "out")] if name == "prune" else ["--dataset", "some/texts"]
    assert main([name, str(folder), *args, *flags, "--quiet"]) == 1
    line = _one_error(capsys.readouterr().err)
    assert config_file in line and f"{auto_class} -> processing_evil.Evil" in line and "--trust-remote-code" in line
    assert not marker.exists()
    assert _tree(tmp_path) == before


def test_repo_code_of_a_hub_repo_is_refused_before_it_is_loaded(hub, tmp_path):
    from huggingface_hub import HfApi

    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    marker = tmp_path / "MARKER"
    _evil_code(base, marker, "tokenizer_config.json", "AutoTokenizer")
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("tester/evil")
    api.upload_folder(folder_path=str(base), repo_id="tester/evil")
    before = _tree(tmp_path)
    cmd = [sys.executable, "-m", "snows_hf", "prune", "tester/evil", *PRUNE, "--output-dir", str(tmp_path / "out"),
           "--quiet"]
    env = _client_env(tmp_path, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
    result = subprocess.run(cmd, input="y\n", capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    line = _one_error(result.stderr)
    assert "'tester/evil'" in line and "tokenizer_config.json" in line and "--trust-remote-code" in line
    assert not marker.exists()
    assert not any(r.startswith("GET /tester/evil/resolve/main/model.safetensors") for r in hub.requests)
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith("hf-home")} == before


def test_an_output_carries_no_code_files(llama_dir, tmp_path):
    (llama_dir / "helpers.py").write_text("raise SystemExit('imported')\n")  # code that no auto_map names
    assert main(["prune", str(llama_dir), *PRUNE, "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    assert not list((tmp_path / "out").rglob("*.py"))


# --- 5. push uploads the regular files inside the folder, nothing a link reaches ---------------

def _saved_folder(tmp_path):
    folder = tmp_path / "pruned"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _token_file(tmp_path):
    secret = tmp_path / "home" / ".cache" / "huggingface"
    secret.mkdir(parents=True)
    (secret / "token").write_text(TOKEN)
    return secret


@pytest.mark.parametrize(
    "link, target",
    [("token", lambda tmp: _token_file(tmp) / "token"),  # a file outside
     ("secrets", _token_file),  # a folder outside
     ("nested/token", lambda tmp: _token_file(tmp) / "token"),  # deeper inside
     ("alias.json", lambda tmp: tmp / "pruned" / "config.json")],  # even one that stays inside
)
def test_push_refuses_a_link_before_any_request(hub, tmp_path, capsys, link, target):
    folder = _saved_folder(tmp_path)
    path = folder / link
    path.parent.mkdir(exist_ok=True)
    path.symlink_to(target(tmp_path))
    before = _tree(tmp_path)
    assert main(["push", str(folder), "tester/linked", "--token", TOKEN, "--quiet"]) == 1
    line = _one_error(capsys.readouterr().err)
    assert repr(link) in line and "symbolic link" in line
    assert hub.requests == [] and hub.repos == {}
    assert _tree(tmp_path) == before


# --- 6. a recipe is a few hundred bytes of plain YAML ------------------------------------------

_BOMB = "\n".join(  # 8 levels of 9 aliases: 43 million strings once expanded, 350 bytes of YAML
    ["prune: {sparsity: '2:4'}", "model:"]
    + [f"  - &{name} [" + ",".join([f'"{name * 3}"'] * 9 if i == 0 else [f"*{prev}"] * 9) + "]"
       for i, (prev, name) in enumerate(zip(" abcdefg", "abcdefgh"))] + [""])


def test_an_alias_bomb_recipe_is_refused_in_bounded_memory(tmp_path):
    """466 bytes of nested aliases expanded to gigabytes in the error line that quoted the
    value; under an address-space limit the refusal is one short line."""
    (tmp_path / "bomb.yaml").write_text(_BOMB)
    assert len(_BOMB) < 600
    code = (
        "import resource, sys\n"
        "import snows_hf.data, snows_hf.config, snows_hf.recipe, yaml\n"  # what loading a recipe imports
        "from snows_hf.cli import main\n"
        "size = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**29, size + 2**29))\n"  # 512 MiB more than the imports
        "sys.exit(main(['prune', '--recipe', 'bomb.yaml', '--dry-run']))\n"
    )
    before = _tree(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=_client_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    line = _one_error(result.stderr)
    assert "alias" in line and len(line) < 300
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "text, message",
    [("prune: {sparsity: '2:4', cg_iters: 'X'}\n", "prune.cg_iters must be an int"),
     ("prune: {sparsity: 'X'}\n", "invalid sparsity"),
     ("prune: {sparsity: '2:4', method: 'X'}\n", "unknown method"),
     ("prune:\n  sparsity: '2:4'\n  ? 'X'\n  : 1\n", "unknown keys prune."),  # "?": a key over 1024 characters
     ("prune: {sparsity: '2:4'}\n? 'X'\n: 1\n", "unknown sections"),
     ("prune: {sparsity: '2:4'}\nmodel: ['X']\n", "model must be a Hub id"),
     ("prune: {sparsity: '2:4'}\ndata: {seq_len: ['X', 'X']}\n", "data.seq_len must be an int"),
     ("prune: {sparsity: '2:4'}\nmodel: *X\n", "alias"),
     ("prune: {sparsity: '2:4'}\n" + "#" * 2**20 + "\n", "over 1 MiB"),
     ("prune: {sparsity: '2:4', seed: " + "9" * 5000 + "}\n", "not valid YAML"),
     ("[" * 100_000, "nested too deeply")],
)
def test_a_huge_recipe_value_gives_a_short_line(tmp_path, capsys, text, message):
    (tmp_path / "r.yaml").write_text(text.replace("X", "x" * 100_000))
    before = _tree(tmp_path)
    assert main(["prune", "--recipe", "r.yaml", "--dry-run"]) == 1
    line = _one_error(capsys.readouterr().err)
    assert message in line and len(line) < 300, line[:500]
    assert _tree(tmp_path) == before


# --- 16. what a push publishes names no local path ----------------------------------------------

def test_push_publishes_no_local_path_and_keeps_the_local_files(hub, home_llama_dir, tmp_path, monkeypatch):
    model = home_llama_dir
    home = model.parents[1]
    data = home / "private" / "texts.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 120}" for j in range(30))}) + "\n"
                            for i in range(40)))
    out = tmp_path / "work" / "out"
    argv = ["prune", str(model), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", str(data),
            "--num-samples", "4", "--seq-len", "16", "--eval-samples", "2", "--offload-activations", "disk",
            "--output-dir", str(out), "--quiet"]
    assert main(argv) == 0
    local = {p.name: p.read_bytes() for p in out.iterdir()}
    for name in ("report.json", "recipe.yaml", "snows-hf.log"):
        assert str(tmp_path).encode() in local[name], name  # the case this test is about
    assert str(home).encode() in local["report.json"] and str(home).encode() in local["recipe.yaml"]

    assert main(["push", str(out), "tester/private-paths", "--token", TOKEN, "--quiet"]) == 0
    pushed = hub.repos[("model", "tester/private-paths")].files
    assert set(pushed) == set(local)
    for name, data_bytes in pushed.items():
        for secret in (str(tmp_path), str(home), os.path.realpath(tmp_path), TOKEN):
            assert secret.encode() not in data_bytes, (name, secret)
    report = json.loads(pushed["report.json"])
    assert report["source_model"] == "tiny-llama" and report["data"]["dataset"] == "texts.jsonl"
    assert report["calibration"]["dataset"] == "texts.jsonl" and report["config"]["offload_dir"] == "work"
    recipe = yaml.safe_load(pushed["recipe.yaml"])
    assert recipe["model"] == "tiny-llama" and recipe["data"]["dataset"] == "texts.jsonl"
    assert pushed["model.safetensors"] == local["model.safetensors"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == local  # the local copy keeps what reruns need
