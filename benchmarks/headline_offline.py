"""The headline command, exactly as typed, against a loopback Hub (no network here).

    python benchmarks/headline_offline.py   # writes benchmarks/results/headline_offline.txt

It serves, from tests/hub_server.py on 127.0.0.1, a *tiny random* ViT (2 blocks, hidden
32, 3 classes named like ImageNet's) under the id ``google/vit-large-patch16-224`` and a
stand-in of the default image dataset ``frgfm/imagenette`` (1,600 random 24x24 photos in
Imagenette's layout and class names), then runs

    snows-hf prune google/vit-large-patch16-224 --sparsity 2:4

and records what it printed (progress bars left out). The figures are those of a random
model on random images: what the transcript shows is the flow (the bundled recipe taken
as the base, the dataset streamed, labels matched by name), not accuracy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub_repos import imagenette_like, vit_repo  # noqa: E402
from hub_server import TOKEN, HubServer  # noqa: E402

COMMAND = ["snows-hf", "prune", "google/vit-large-patch16-224", "--sparsity", "2:4"]


def _is_bar(line: str) -> bool:
    return "\r" in line or "\x1b[" in line or line.startswith(("blocks:", "block "))


def main() -> int:
    server = HubServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server.repos[("model", "google/vit-large-patch16-224")] = vit_repo(Path(tmp) / "vit")
            server.repos[("dataset", "frgfm/imagenette")] = imagenette_like(per_class=160)
            env = dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(Path(tmp) / "hf-home"),
                       HF_HUB_OFFLINE="0", HF_TOKEN=TOKEN)
            run = subprocess.run([sys.executable, "-m", "snows_hf", *COMMAND[1:]], capture_output=True, text=True,
                                 env=env, cwd=tmp, timeout=1800)
        # progress bars redraw with carriage returns and cursor moves: keep the lines they leave
        lines = [line for line in (run.stderr + run.stdout).split("\n") if line.strip() and not _is_bar(line)]
        lines = [line for line in lines if not line.startswith(("Loading weights", "Writing model shards", "[transformers]"))]
        transcript = "$ " + " ".join(COMMAND) + "\n" + "\n".join(lines) + "\n"
        print(transcript, end="")
        out = ROOT / "benchmarks" / "results" / "headline_offline.txt"
        out.write_text(transcript)
        print(f"(exit {run.returncode}; written to {out.relative_to(ROOT)})")
        return run.returncode
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
