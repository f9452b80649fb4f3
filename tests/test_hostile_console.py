"""What reaches the terminal (issue 30): a command whose reader goes away ends quietly, as
command line tools do, and other libraries' log lines and warnings stay off stderr (in
the run's log instead), so stderr carries snows-hf's own lines and progress bars only.

The commands run as ``python -m snows_hf`` in a fresh process, with this checkout's
``snows_hf`` first on the path: a library's first import is where it adds its own handler.
"""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import snows_hf
from snows_hf.cli import CLOSED_PIPE, main
from snows_hf.console import other_libraries_to_log

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(snows_hf.__file__).parents[1]))


def _texts(path, n=40):
    path.write_text("".join('{"text": "' + " ".join(f"w{(i * 7 + j) % 120}" for j in range(30)) + '"}\n' for i in range(n)))
    return path


def _run(argv, **options):
    return subprocess.run([sys.executable, "-m", "snows_hf", *argv], env=ENV, timeout=300, **options)


# --- a reader that goes away -------------------------------------------------------------------

@pytest.mark.parametrize("argv, code", [
    pytest.param(["recipes"], CLOSED_PIPE, id="recipes"),
    pytest.param(["inspect", "{vit}"], CLOSED_PIPE, id="inspect"),
    pytest.param(["prune", "--help"], 0, id="help"),  # argparse's own quiet exit
])
def test_a_closed_pipe_ends_the_command_quietly(vit_dir, argv, code):
    """``snows-hf inspect DIR | head -1``: the reader closes the pipe; writing to it is no error
    to report, and the exit code is the one a shell gives a process SIGPIPE ended (141)."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line
    try:
        result = _run([arg.format(vit=vit_dir) for arg in argv], stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert result.returncode == code and CLOSED_PIPE == 141, result.stderr[-3000:]
    assert _foreign(result.stderr) == []  # no "Broken pipe", no "Exception ignored", no traceback


def test_a_closed_pipe_is_told_apart_from_a_broken_pipe_inside(monkeypatch, capsys):
    """A BrokenPipeError from anything but the terminal's streams (a worker, a socket) is a
    failure like any other: one line, exit code 1."""
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("snows_hf.cli.cmd_recipes", broken)  # the parser is built with it
    assert main(["recipes"]) == 1
    assert capsys.readouterr().err == "snows-hf: error: [Errno 32] Broken pipe\n"


# --- other libraries' lines ---------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BAR = re.compile(r".*?\[\d+:\d\d(?::\d\d)?[<,][^\]]*\]")  # a tqdm bar, up to its "[00:01<00:02, 3.1it/s]"


def _foreign(stderr):
    """What ``stderr`` holds besides snows-hf's lines and progress bars (one line per piece)."""
    lines = [BAR.sub("", ANSI.sub("", part)).strip() for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if line and not line.startswith("snows-hf: ")]


def test_an_offloaded_run_prints_no_other_librarys_lines(llama_dir, tmp_path):
    """accelerate's offload warning (a model placed within --max-memory) goes to the run's
    log, not to the terminal."""
    data = _texts(tmp_path / "d.jsonl")
    argv = ["prune", str(llama_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", str(data),
            "--num-samples", "4", "--seq-len", "16", "--eval-samples", "2", "--max-memory", "20KiB",
            "--output-dir", str(tmp_path / "out")]
    result = _run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _foreign(result.stderr) == []
    log = (tmp_path / "out" / "snows-hf.log").read_text()
    assert "WARNING accelerate.big_modeling: Some parameters are on the meta device" in log


def test_a_failing_dataset_is_one_line_without_the_librarys_own(llama_dir, tmp_path):
    """datasets logs its own "Failed to load JSON" before the error snows-hf reports."""
    (tmp_path / "bad.jsonl").write_text('{"text": "w1 w2"}\n{broken\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["eval", str(llama_dir), "--dataset", "bad.jsonl", "--num-samples", "4", "--seq-len", "16", "--quiet"]
    result = _run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snows-hf: error: cannot load dataset 'bad.jsonl'"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_library_that_adds_its_own_handler_meanwhile_is_routed(capsys):
    """A library first imported during a command adds a stderr handler and stops propagating
    (transformers, datasets and lm-eval do): its records reach the run's log, not stderr;
    after the command, its handler is back."""
    from snows_hf.workflow import run_log

    name = "snows_hf_test_library_routed"
    with run_log() as log, other_libraries_to_log():
        library = logging.getLogger(name)  # created meanwhile, as a first import would
        library.addHandler(logging.StreamHandler(sys.stderr))
        library.propagate = False
        library.warning("offloaded to the disk")
        warnings.warn("a library's warning")
        logging.getLogger("another.library").error("failed to read file")
    err = capsys.readouterr().err
    assert err == ""
    assert f"WARNING {name}: offloaded to the disk" in log.text()
    assert "WARNING py.warnings:" in log.text() and "a library's warning" in log.text()
    assert "ERROR another.library: failed to read file" in log.text()
    assert len(library.handlers) == 1 and library.propagate is False  # as the library set it
    library.warning("after the command")
    assert capsys.readouterr().err == "after the command\n"
    library.handlers.clear()
