"""Hostile inputs and unlucky users (issue 20): output folders, locks, leftovers, resume.

Every refusal is one ``snows-hf: error:`` line, a non-zero exit, no traceback, and the
folder tree (every file hashed, every link read) exactly as it was before.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import patch_everywhere
from safetensors.torch import load_file, save_file

import snows_hf.loading
from snows_hf.cli import main
from snows_hf.workflow import checkpoint_dir
from snows_hf.methods import get_method

FAST = ["--dataset", "random", "--method", "mask-only", "--mask", "magnitude", "--num-samples", "4", "--no-eval", "--quiet"]
ROOT = str(Path(snows_hf.loading.__file__).parents[1])  # subprocesses import the snows_hf under test
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}


def _tree(root="."):
    """Every path under ``root``: a file's sha256, a link's target, a folder's mode."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_symlink():
            found[str(path)] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[str(path)] = oct(path.stat().st_mode & 0o777)
        else:
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _refused(argv, message, capsys):
    before = _tree()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert code != 0
    assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]), err
    assert message in errors[0] and "Traceback" not in err, errors[0]
    assert _tree() == before  # nothing written, nothing lost
    return errors[0]


@pytest.fixture
def no_loading(monkeypatch):
    """Refusals come before any weight is read."""

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    patch_everywhere(monkeypatch, snows_hf.loading, "load_model", load_model)


def _fake_output(folder, extra=()):
    """A folder as a snows-hf save leaves it (its report.json lists what it wrote), plus ``extra`` files."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "report.json").write_text(json.dumps({"layers": [], "snows_hf_files": ["model.safetensors", "report.json"]}))
    for name in extra:
        (folder / name).write_text("mine")


def _setup_wrapped_model(vit_dir):
    shutil.copytree(vit_dir, "wrap/model")


def _forged_output(folder, files, **report):
    """A stranger's folder whose ``report.json`` claims the user's ``files`` as snows-hf's own."""
    folder = Path(folder)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    listed = sorted([*files, "report.json"])
    (folder / "report.json").write_text(json.dumps({"layers": [], "snows_hf_files": listed, **report}))


def _linked_output(folder):
    """An output whose listed weights are a link to a file outside it."""
    os.mkdir(folder)
    os.symlink("/etc/passwd", f"{folder}/model.safetensors")
    Path(folder, "report.json").write_text(json.dumps({"layers": [], "snows_hf_files": ["model.safetensors", "report.json"]}))


BAD_NAME = "bad\udcff"  # the bytes b"bad\xff" as Python spells a path that is not UTF-8
LONG_NAME = "n" * 250  # fits the filesystem's 255 bytes, its temporary and checkpoint names beside it do not


REFUSED = [
    # 2: --overwrite never deletes what snows-hf did not write
    pytest.param(lambda m: Path("notes.txt").write_text("mine"), ["prune", "{m}", "--sparsity", "2:4", "--output-dir", ".", "--overwrite"],
                 "is the current folder or holds it", id="output-is-cwd"),
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "..", "--overwrite"],
                 "is the current folder or holds it", id="output-holds-cwd"),
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "{m}", "--overwrite"],
                 "would replace the input", id="output-is-model"),
    pytest.param(_setup_wrapped_model, ["prune", "wrap/model", "--sparsity", "2:4", "--output-dir", "wrap", "--overwrite"],
                 "would replace the input 'wrap/model'", id="output-holds-model"),
    pytest.param(lambda m: (os.mkdir("out"), Path("out/notes.txt").write_text("mine")),
                 ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out", "--overwrite"],
                 "out holds files snows-hf did not write (notes.txt); choose another --output-dir", id="foreign-files"),
    pytest.param(lambda m: _fake_output("out", ["notes.txt", "a.txt", "b.txt", "c.txt"]),
                 ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out", "--overwrite"],
                 "out holds files snows-hf did not write (a.txt, b.txt, c.txt, ...)", id="snows-output-with-user-files"),
    pytest.param(lambda m: _fake_output("out"), ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out"],
                 "is not empty; pass --overwrite", id="snows-output-without-overwrite"),
    pytest.param(lambda m: _fake_output("out"), ["convert", "out", "--to", "compact", "--output-dir", "out", "--overwrite"],
                 "would replace the input 'out'", id="convert-into-itself"),
    pytest.param(lambda m: _fake_output("out"), ["convert", "out", "--to", "compact", "--output-dir", ".", "--overwrite"],
                 "is the current folder", id="convert-into-cwd"),
    pytest.param(lambda m: Path("notes.txt").write_text("mine"), ["demo", "--output-dir", ".", "--overwrite"],
                 "is the current folder", id="demo-into-cwd"),
    pytest.param(lambda m: (os.mkdir("other"), Path("other/notes.txt").write_text("mine")), ["demo", "--output-dir", "other"],
                 "other holds files snows-hf did not write (notes.txt)", id="demo-over-user-files"),
    # 13: symlinked and empty paths, all checked before loading
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--output-dir", ""], "the output path is empty", id="output-dir-empty"),
    pytest.param(None, ["demo", "--output-dir", ""], "the output path is empty", id="demo-output-dir-empty"),
    pytest.param(lambda m: _fake_output("out"), ["convert", "out", "--to", "compact", "--output-dir", ""],
                 "the output path is empty", id="convert-output-dir-empty"),
    pytest.param(lambda m: os.symlink("nowhere", "link"), ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "link"],
                 "is a symlink to", id="dangling-output-link"),
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--block-path", ""], "--block-path is empty", id="block-path-empty"),
    pytest.param(lambda m: Path("afile").write_text("x"), ["prune", "{m}", "--sparsity", "2:4", "--offload-dir", "afile"],
                 "offload_dir 'afile' is a file", id="offload-dir-is-a-file"),
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--offload-dir", ""], "offload_dir is empty", id="offload-dir-empty"),
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--offload-dir", "missing"], "offload_dir 'missing' does not exist",
                 id="offload-dir-missing"),
    # issue 30, 17: a report.json is no proof; only files named as snows-hf names its own are ever replaced
    pytest.param(lambda m: _forged_output("out", {"notes.txt": "mine"}),
                 ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out", "--overwrite"],
                 "out holds files snows-hf did not write (notes.txt)", id="forged-report-lists-a-user-file"),
    pytest.param(lambda m: _forged_output("out", {"docs/plan.txt": "mine", "config.json": "{}"}),
                 ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out", "--overwrite"],
                 "out holds files snows-hf did not write (docs/)", id="forged-report-lists-a-user-folder"),
    pytest.param(lambda m: _forged_output("out", {"weights.safetensors": "mine"}),
                 ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out", "--overwrite"],
                 "out holds files snows-hf did not write (weights.safetensors)", id="forged-report-lists-user-weights"),
    pytest.param(lambda m: (_fake_output("src"), _forged_output("out", {"notes.txt": "mine"})),
                 ["convert", "src", "--to", "compact", "--output-dir", "out", "--overwrite"],
                 "out holds files snows-hf did not write (notes.txt)", id="convert-over-forged-report"),
    pytest.param(lambda m: _forged_output("out", {"notes.txt": "mine"}, demo={}), ["demo", "--output-dir", "out"],
                 "out holds files snows-hf did not write (notes.txt)", id="demo-over-forged-demo-report"),
    pytest.param(lambda m: _linked_output("out"),
                 ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out", "--overwrite"],
                 "out holds files snows-hf did not write (model.safetensors)", id="output-holds-a-link"),
    pytest.param(lambda m: (Path("victim").write_text("mine"), os.symlink("victim", ".out.snows-hf-lock")),
                 ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out"],
                 "/.out.snows-hf-lock' is no lock file snows-hf can take (Too many levels of symbolic links)", id="lock-file-is-a-link"),
    pytest.param(lambda m: os.mkdir(".out.snows-hf-lock"), ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "out"],
                 "/.out.snows-hf-lock' is no lock file snows-hf can take (Is a directory)", id="lock-file-is-a-folder"),
    # issue 30, 16: what only the save would have found, found before loading
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--output-dir", BAD_NAME],
                 "output path 'bad\\udcff' is not valid UTF-8", id="output-dir-not-utf8"),
    pytest.param(lambda m: _fake_output("src"), ["convert", "src", "--to", "compact", "--output-dir", BAD_NAME],
                 "output path 'bad\\udcff' is not valid UTF-8", id="convert-output-dir-not-utf8"),
    pytest.param(None, ["demo", "--output-dir", BAD_NAME], "output path 'bad\\udcff' is not valid UTF-8",
                 id="demo-output-dir-not-utf8"),
    pytest.param(lambda m: os.makedirs(f"{BAD_NAME}/data"), ["prune", "{m}", "--sparsity", "2:4", "--dataset", BAD_NAME],
                 "dataset 'bad\\udcff' is not valid UTF-8", id="dataset-path-not-utf8"),
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--output-dir", LONG_NAME],
                 "output folder name 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...' is 250 bytes", id="output-name-too-long"),
    pytest.param(lambda m: _fake_output("src"), ["convert", "src", "--to", "compact", "--output-dir", LONG_NAME],
                 "is 250 bytes", id="convert-output-name-too-long"),
    pytest.param(None, ["prune", "{m}", "--sparsity", "2:4", "--output-dir", "/".join(["d" * 200] * 21)],
                 "bytes, too long for this system's 4096-byte paths", id="output-path-too-long"),
]


@pytest.mark.parametrize("setup, argv, message", REFUSED)
def test_dangerous_output_paths_are_refused_up_front(setup, argv, message, vit_dir, no_loading, capsys):
    if setup is not None:
        setup(vit_dir)
    argv = [a.format(m=vit_dir) for a in argv]
    if argv[0] == "prune" and "--output-dir" not in argv:
        argv += ["--output-dir", "out"]
    _refused(argv + FAST[:2] if argv[0] == "prune" and "--dataset" not in argv else argv, message, capsys)


def test_a_symlinked_output_is_written_through_and_kept(vit_dir):
    os.mkdir("real")
    os.symlink("real", "link")
    args = ["prune", str(vit_dir), "--sparsity", "2:4", "--output-dir", "link", *FAST]
    assert main(args) == 0
    assert main(args + ["--overwrite"]) == 0  # replaced through the link too
    assert os.readlink("link") == "real" and Path("real/model.safetensors").is_file()
    assert sorted(p.name for p in Path(".").iterdir()) == ["link", "real", "tiny-vit"]  # no stray .link.old-*


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_folders_honour_the_umask(vit_dir, umask):
    previous = os.umask(umask)
    try:
        args = ["prune", str(vit_dir), "--sparsity", "2:4", "--output-dir", "out", *FAST]
        assert main(args) == 0
        assert Path("out").stat().st_mode & 0o777 == 0o777 & ~umask
        os.chmod("out", 0o755)
        assert main(args + ["--overwrite"]) == 0
        assert Path("out").stat().st_mode & 0o777 == 0o777 & ~umask
    finally:
        os.umask(previous)


KILLED_SAVE = """
import os, signal, sys
import snows_hf.output_claim as claim
from snows_hf.output_claim import atomic_output_dir

if sys.argv[1] == "old":  # killed while removing the replaced folder
    claim.shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
else:  # keeps the first one's leftover, for the next run to find both
    claim.remove_stale_temporaries = lambda out: []
with atomic_output_dir("out", overwrite=True) as tmp:
    (tmp / "report.json").write_text('{"snows_hf_files": ["report.json"]}')
    if sys.argv[1] == "tmp":  # killed halfway through writing the new folder
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_leftovers_of_a_killed_save_are_removed_by_the_next_run_only(vit_dir):
    _fake_output("out")
    for when in ("old", "tmp"):
        killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, when], env=ENV, capture_output=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = sorted(p.name for p in Path(".").iterdir() if p.name.startswith(".out."))
    assert [name.split("-")[0] for name in leftovers] == [".out.old", ".out.snows", ".out.tmp"]  # and the dead one's lock
    live = Path(f".out.tmp-{os.getppid()}-0123abcd")  # a save in progress in a live process
    live.mkdir()
    Path(".out.tmp-mine").mkdir()  # not named as snows-hf names its folders
    assert main(["prune", str(vit_dir), "--sparsity", "2:4", "--output-dir", "out", "--overwrite", *FAST]) == 0
    assert sorted(p.name for p in Path(".").iterdir()) == [live.name, ".out.tmp-mine", "out", "tiny-vit"]
    assert "model.safetensors" in json.loads(Path("out/report.json").read_text())["snows_hf_files"]


HOLD_LOCK = """
import time
from snows_hf.output_claim import claim_output

with claim_output("out"):
    print("locked", flush=True)
    time.sleep(300)
"""


def test_a_second_live_run_into_one_output_is_refused_naming_the_first(vit_dir, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["prune", str(vit_dir), "--sparsity", "2:4", "--output-dir", "out", *FAST]
        line = _refused(args, f"another snows-hf run (pid {holder.pid}) is writing this output", capsys)
        assert "--resume" not in line and "delete" not in line
        assert Path(".out.snows-hf-lock").read_text().strip() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the dead owner's lock is taken over
    assert sorted(p.name for p in Path(".").iterdir()) == ["out", "tiny-vit"]  # lock and checkpoint gone


def _interrupted_run(llama_dir, monkeypatch):
    """A CLI run stopped in block 1 of 2: block 0 is in the checkpoint."""
    cls = get_method("mask-only")
    original, seen = cls.prune_module, {"n": 0}

    def prune_module(self, job):
        seen["n"] += 1
        if seen["n"] == 9:
            raise KeyboardInterrupt
        return original(self, job)

    monkeypatch.setattr(cls, "prune_module", prune_module)
    args = ["prune", str(llama_dir), "--sparsity", "2:4", "--seq-len", "16", "--output-dir", "out", *FAST]
    assert main(args) == 130
    monkeypatch.setattr(cls, "prune_module", original)
    return args + ["--resume"], Path(checkpoint_dir("out"))


def _edit_block(folder, edit):
    path = folder / "block-00000.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, str(path))


def _edit_state(folder, edit):
    state = json.loads((folder / "state.json").read_text())
    edit(state)
    (folder / "state.json").write_text(json.dumps(state))


Q = "model.layers.0.self_attn.q_proj.weight"
TAMPERED = [
    pytest.param(lambda f: _edit_block(f, lambda t: t.update({Q: torch.ones(1)})),
                 f"block 0 of the checkpoint holds {Q} as [1] float32, the model's is [32, 32] float32", id="shape-1"),
    pytest.param(lambda f: _edit_block(f, lambda t: t.update({Q: t[Q].double()})), "as [32, 32] float64", id="dtype"),
    pytest.param(lambda f: _edit_block(f, lambda t: t.update({Q: torch.randn(32, 32)})), "not in the 2:4 pattern", id="pattern"),
    pytest.param(lambda f: _edit_block(f, lambda t: t.pop("model.layers.0.mlp.up_proj.weight")),
                 "block 0 has no weight model.layers.0.mlp.up_proj.weight", id="missing-tensor"),
    pytest.param(lambda f: _edit_block(f, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)})),
                 "holds model.layers.0.extra.weight, which this run does not prune", id="extra-tensor"),
    pytest.param(lambda f: (f / "block-00000.safetensors").write_bytes((f / "block-00000.safetensors").read_bytes()[:50]),
                 "block-00000.safetensors is unreadable", id="truncated-block"),
    pytest.param(lambda f: _edit_state(f, lambda s: s.update(blocks_done=99)), "it counts 99 blocks done, and the model has 2",
                 id="blocks-done-too-many"),
    pytest.param(lambda f: _edit_state(f, lambda s: s.update(blocks_done=-1)), "it counts -1 blocks done", id="blocks-done-negative"),
    pytest.param(lambda f: _edit_state(f, lambda s: s["layers"][0].update(block=1)), "is reported in block 1, not one of the 1 done",
                 id="layer-in-unfinished-block"),
    pytest.param(lambda f: _edit_state(f, lambda s: s.update(rng=[7])), "random-generator state is malformed", id="rng"),
]


@pytest.mark.parametrize("tamper, message", TAMPERED)
def test_a_tampered_checkpoint_is_refused_with_the_hint_to_delete_it(tamper, message, llama_dir, monkeypatch, capsys):
    resume, folder = _interrupted_run(llama_dir, monkeypatch)
    capsys.readouterr()
    tamper(folder)
    line = _refused(resume, message, capsys)
    assert f"delete {folder}" in line or f"'{folder}' cannot be resumed" in line, line
    assert "rerun with --resume" not in line


def test_the_resumed_report_measures_sparsity_from_the_saved_weights(llama_dir, monkeypatch):
    resume, folder = _interrupted_run(llama_dir, monkeypatch)
    _edit_state(folder, lambda s: [layer.update(sparsity=0.99) for layer in s["layers"]])
    assert main(resume) == 0
    layers = json.loads(Path("out/report.json").read_text())["layers"]
    assert len(layers) == 14 and all(layer["sparsity"] == pytest.approx(0.5) for layer in layers)
    assert not folder.exists()
