"""Bytes a streamed read takes: ``datasets``' own shuffle against snows-hf's seeded order.

    python benchmarks/stream_order.py   # writes benchmarks/results/stream_order.json

Serves, from tests/hub_server.py on 127.0.0.1, a dataset of 20 parquet shards of 3,000
short text rows each, and reads its first 96 rows three ways, each in a fresh process
with the server's byte counts reset: ``IterableDataset`` in storage order, with
``shuffle(seed=0, buffer_size=B)`` for B = 1 and 64, and in snows-hf's order
(:class:`snows_hf.data.SplitRows`: seeded shard order, 1,000-row shuffle buffer).
Prints how many shards were opened and the share of the dataset's bytes that was sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub_repos import commit, parquet  # noqa: E402
from hub_server import HubServer, Repo  # noqa: E402

SHARDS, ROWS = 20, 3000
READ = """
import datasets, itertools, sys
from snows_hf.data import SplitRows
ds = datasets.load_dataset("tester/sharded", split="train", streaming=True)
way = sys.argv[1]
if way == "snows-hf":
    rows = (row for _, row in SplitRows(ds, seed=0))
else:
    rows = iter(ds if way == "storage" else ds.shuffle(seed=0, buffer_size=int(way.split("=")[1])))
print(len(list(itertools.islice(rows, 96))))
"""


def _dataset() -> Repo:
    repo = Repo("dataset", False)
    for shard in range(SHARDS):
        path = f"data/train-{shard:05d}-of-{SHARDS:05d}.parquet"
        texts = [" ".join(f"w{(shard * 7919 + i * 31 + j) % 120}" for j in range(24)) for i in range(ROWS)]
        repo.files[path] = parquet({"text": texts})
        repo.lfs.add(path)
    return commit(repo)


def main() -> int:
    server = HubServer().start()
    results = []
    try:
        server.repos[("dataset", "tester/sharded")] = repo = _dataset()
        total = sum(len(data) for data in repo.files.values())
        for way in ("storage", "shuffle buffer_size=1", "shuffle buffer_size=64", "snows-hf"):
            server.sent.clear()
            with tempfile.TemporaryDirectory() as home:
                env = dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=home, HF_HUB_OFFLINE="0")
                run = subprocess.run([sys.executable, "-c", READ, way.split(" ")[-1] if way != "snows-hf" else way],
                                     capture_output=True, text=True, env=env, timeout=600)
            if run.returncode != 0:
                print(run.stderr[-2000:], file=sys.stderr)
                return 1
            sent = server.bytes_sent("dataset", "tester/sharded")
            results.append({"way": way, "shards_read": len(sent), "bytes": sum(sent.values()), "dataset_bytes": total,
                            "share": sum(sent.values()) / total})
    finally:
        server.stop()
    print(f"{'read of 96 rows':<26} {'shards':>6} {'share of bytes':>15}")
    for r in results:
        print(f"{r['way']:<26} {r['shards_read']:>6} {r['share']:>15.1%}")
    out = ROOT / "benchmarks" / "results" / "stream_order.json"
    out.write_text(json.dumps({"shards": SHARDS, "rows_per_shard": ROWS, "rows_read": 96, "results": results}, indent=2) + "\n")
    print(f"(written to {out.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
