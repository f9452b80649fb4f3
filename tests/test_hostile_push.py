"""Hostile folders for ``push`` (issue 30): a link swapped in while a push runs, files too
large to rewrite, a large file that must go up without being read whole.

Each file is opened once, without following links, and what is uploaded comes from that
open file: a link that appears after the folder was listed stops the push with one line,
one that appears after the file was opened changes nothing that is sent. Only the files
snows-hf writes and rewrites (the card, the report, the recipe, the run log) are read,
each within a bound; any other file streams from its descriptor.
"""

import base64
import hashlib
import json
import os
import tracemalloc

import huggingface_hub
import pytest
from hub_server import TOKEN

from snows_hf.cli import main

LIMIT = 16 * 2**20  # the most push reads of a file it rewrites
SECRET = b"hf_secretThatMustNeverLeaveThisMachine0123456789"


def _tree(folder):
    """Every path under ``folder``: a file's sha256, a link's target (what a refused push must leave alone)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[str(path)] = "folder"
    return found


def _one_error(stderr):
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("snows-hf: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _folder(tmp_path):
    """A pushable folder: snows-hf's own files, a text file of the user's, weights, a subfolder."""
    folder = tmp_path / "pruned"
    (folder / "sub").mkdir(parents=True)
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "README.md": b"# a pruned model\n",
        "report.json": b'{"layers": []}\n',
        "notes.txt": b"the user's own notes\n",
        "model.safetensors": b"weights" * 100,
        "sub/extra.bin": b"more weights" * 10,
    }
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    return folder, files


def _secrets(tmp_path):
    """A secret file and a secret folder outside the pushed one (a token, a private cache)."""
    place = tmp_path / "home" / ".cache" / "huggingface"
    place.mkdir(parents=True)
    (place / "token").write_bytes(SECRET)
    (place / "extra.bin").write_bytes(SECRET)
    return place


def _reached(hub, secret):
    """Whether ``secret`` reached the hub in any request body, as it is or base64-encoded
    (a commit carries small files as base64)."""
    encoded = base64.b64encode(secret)
    return any(secret in body or encoded in body for body in hub.received)


def _swap(victim, secrets):
    """Move ``victim`` aside and put a link to a secret in its place."""
    os.rename(victim, f"{victim}.moved")
    os.symlink(secrets if victim.name == "sub" else secrets / "token", victim)


class _Listed:
    """What ``os.scandir`` returns, read in full before the swap (as a race would have it)."""

    def __init__(self, entries):
        self.entries = iter(entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return self.entries

    def __next__(self):
        return next(self.entries)

    def close(self):
        pass


def _after_listing(monkeypatch, victim, secrets):
    """Swap ``victim`` right after its folder is listed, before anything opens it."""
    real, parent, done = os.scandir, os.stat(victim.parent), []

    def scandir(path="."):
        with real(path) as listing:
            entries = list(listing)
        here = os.stat(path)
        if not done and (here.st_dev, here.st_ino) == (parent.st_dev, parent.st_ino):
            done.append(True)
            _swap(victim, secrets)
        return _Listed(entries)

    monkeypatch.setattr(os, "scandir", scandir)


def _before(method):
    """Swap ``victim`` when ``HfApi.method`` is called (after every file was opened)."""
    def install(monkeypatch, victim, secrets):
        real = getattr(huggingface_hub.HfApi, method)

        def wrapped(self, *args, **kwargs):
            if not victim.is_symlink():
                _swap(victim, secrets)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(huggingface_hub.HfApi, method, wrapped)

    return install


VICTIMS = ["notes.txt", "README.md", "model.safetensors", "sub/extra.bin", "sub"]


@pytest.mark.parametrize("victim", VICTIMS)
def test_a_link_swapped_in_after_listing_stops_the_push(hub, tmp_path, monkeypatch, capsys, victim):
    folder, _ = _folder(tmp_path)
    secrets = _secrets(tmp_path)
    _after_listing(monkeypatch, folder / victim, secrets)
    assert main(["push", str(folder), "tester/raced", "--token", TOKEN, "--quiet"]) == 1
    line = _one_error(capsys.readouterr().err)
    assert repr(victim) in line and "symbolic link" in line, line
    assert not _reached(hub, SECRET) and hub.repos.get(("model", "tester/raced")) is None
    assert os.readlink(folder / victim)  # the swap did happen


@pytest.mark.parametrize("seam", ["create_repo", "create_commit"])
@pytest.mark.parametrize("victim", VICTIMS)
def test_a_link_swapped_in_after_opening_uploads_the_original(hub, tmp_path, monkeypatch, capsys, victim, seam):
    folder, files = _folder(tmp_path)
    secrets = _secrets(tmp_path)
    _before(seam)(monkeypatch, folder / victim, secrets)
    assert main(["push", str(folder), "tester/raced", "--token", TOKEN, "--quiet"]) == 0, capsys.readouterr().err
    assert (folder / victim).is_symlink()  # the swap did happen
    assert not _reached(hub, SECRET)
    assert hub.repos[("model", "tester/raced")].files == files  # as they were when opened


def test_a_special_file_swapped_in_after_listing_stops_the_push(hub, tmp_path, monkeypatch, capsys):
    folder, _ = _folder(tmp_path)
    real, done = os.scandir, []

    def scandir(path="."):
        with real(path) as listing:
            entries = list(listing)
        if not done:
            done.append(True)
            os.rename(folder / "notes.txt", folder / "notes.txt.moved")
            os.mkfifo(folder / "notes.txt")  # opening it to read would wait for a writer forever
        return _Listed(entries)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(["push", str(folder), "tester/raced", "--token", TOKEN, "--quiet"]) == 1
    line = _one_error(capsys.readouterr().err)
    assert "'notes.txt'" in line and "not a regular file" in line, line
    assert hub.repos == {}


# --- files too large to rewrite: one line, nothing sent -----------------------------------------

OVERSIZED = [
    pytest.param("report.json", lambda n: b'{"layers": [], "x": "' + b"x" * n + b'"}', id="report"),
    pytest.param("recipe.yaml", lambda n: b"prune: {sparsity: '2:4'}\n#" + b"x" * n + b"\n", id="recipe"),
    pytest.param("README.md", lambda n: b"# card\n" + b"x" * n, id="card"),
    pytest.param("snows-hf.log", lambda n: b"x" * (n + 1), id="run-log"),
]


@pytest.mark.parametrize("name, content", OVERSIZED)
def test_a_file_push_rewrites_is_read_only_within_a_bound(hub, tmp_path, capsys, name, content):
    folder, _ = _folder(tmp_path)
    (folder / name).write_bytes(content(LIMIT))
    before = _tree(tmp_path)
    assert main(["push", str(folder), "tester/big", "--token", TOKEN, "--quiet"]) == 1
    line = _one_error(capsys.readouterr().err)
    assert repr(name) in line and "MiB" in line and len(line) < 300, line
    assert hub.repos == {} and hub.received == []
    assert _tree(tmp_path) == before


def test_a_large_file_push_does_not_rewrite_streams_from_its_descriptor(hub, tmp_path, monkeypatch):
    """A 24 MiB text file of the user's goes up byte for byte (local paths included: push
    rewrites only its own files) while push itself holds far less than the file in memory."""
    folder, _ = _folder(tmp_path)
    line = f"{tmp_path}/data/shard.jsonl was read\n".encode()
    big = line * (24 * 2**20 // len(line))
    (folder / "big.txt").write_bytes(big)
    peaks = []
    real = huggingface_hub.HfApi.create_commit

    def create_commit(self, *args, **kwargs):  # what push held before uploading anything
        peaks.append(tracemalloc.get_traced_memory()[1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    import transformers  # noqa: F401 - imported beforehand: what quiet's first import allocates is not push's

    tracemalloc.start()
    try:
        assert main(["push", str(folder), "tester/large", "--token", TOKEN, "--quiet"]) == 0
    finally:
        tracemalloc.stop()
    assert peaks and max(peaks) < len(big) // 3, (max(peaks), len(big))
    assert hub.repos[("model", "tester/large")].files["big.txt"] == big


def test_only_the_files_snows_hf_writes_are_rewritten(hub, tmp_path, monkeypatch):
    """The card, report, recipe and run log lose the local paths they name; a JSON or text
    file of the user's is uploaded as it is."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder, files = _folder(tmp_path)
    local = str(tmp_path / "home" / "private")
    (folder / "report.json").write_text(json.dumps({"layers": [], "source_model": f"{local}/model"}))
    (folder / "snows-hf.log").write_text(f"INFO snows_hf: loading {local}/model\n")
    (folder / "eval.json").write_text(json.dumps({"model": f"{local}/model"}))
    assert main(["push", str(folder), "tester/mixed", "--token", TOKEN, "--quiet"]) == 0
    pushed = hub.repos[("model", "tester/mixed")].files
    assert local.encode() not in pushed["report.json"] + pushed["snows-hf.log"]
    assert json.loads(pushed["report.json"])["source_model"] == "model"
    assert pushed["eval.json"] == (folder / "eval.json").read_bytes()
    assert pushed["notes.txt"] == files["notes.txt"]
