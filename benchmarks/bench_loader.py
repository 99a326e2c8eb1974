"""A training process's memory when it reads an epoch of packed rows: peak RSS after its first batches.

    .venv/bin/python benchmarks/bench_loader.py --rows 400000 --context 512

Writes a synthetic sequences folder (one epoch, `--rows` rows of `--context` uint32 tokens and uint16 positions in
shard files of 4,096 rows, as `sequences build` writes them) to a temporary folder, then, in a fresh interpreter,
opens it with `PackedLoader` as `simslm train` does, reads `--batches` batches of 8 rows and reports the wall time,
the peak resident memory (`ru_maxrss`, which counts the pages of mapped files it touched, and the kernel's
read-ahead around them) and the process's own memory then (`RssAnon`: what it cannot give back).

With `--pieces`, the loader is `PieceLoader` (`train --batching pieces`), whose first batch first reads the epoch's
positions once to find its documents (here one a row); its time and the table's memory are in the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROBE = """
import resource, sys, time
from simslm.sequences.loader import PackedLoader, PieceLoader
started = time.perf_counter()
loader = (PieceLoader(sys.argv[1], batch_size=8, seed=0, pad_id=1000, row_length=int(sys.argv[4]))
          if sys.argv[3] == "pieces" else PackedLoader(sys.argv[1], batch_size=8, seed=0))
for _ in range(int(sys.argv[2])):
    next(loader)
anonymous = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:"))
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, anonymous / 1e6)
"""


def write_folder(folder: Path, rows: int, context: int, per_shard: int = 4096) -> float:
    """The folder's size in GB."""
    epoch = folder / "epoch-000"
    epoch.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shards, positions = [], []
    for number, start in enumerate(range(0, rows, per_shard)):
        count = min(per_shard, rows - start)
        shards.append(f"shard-{number:05d}.npy")
        positions.append(f"positions-{number:05d}.npy")
        np.save(epoch / shards[-1], rng.integers(0, 1000, (count, context), dtype=np.uint32))
        np.save(epoch / positions[-1], np.tile(np.arange(context, dtype=np.uint16), (count, 1)))
    (folder / "index.json").write_text(json.dumps({"format": 2, "context_length": context, "epochs": [
        {"epoch": 0, "shards": shards, "position_shards": positions, "num_chunks": rows}]}))
    return rows * context * 6 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--pieces", action="store_true", help="read it as `train --batching pieces` does")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        size = write_folder(Path(folder), args.rows, args.context)
        kind = "pieces" if args.pieces else "rows"
        out = subprocess.run([sys.executable, "-c", PROBE, folder, str(args.batches), kind, str(args.context)],
                             capture_output=True, text=True, check=True).stdout.split()
        print(f"an epoch of {args.rows} rows x {args.context} ({size:.2f} GB of tokens and positions), read as {kind}: "
              f"{args.batches} batches in {float(out[0]):.2f} s, peak {float(out[1]):.2f} GB, own memory "
              f"{float(out[2]):.2f} GB")


if __name__ == "__main__":
    main()
