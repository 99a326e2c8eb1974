"""`--batching rows` against `--batching pieces` (slamkit's batches) on a demo's data, side by side.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_batching.py DEMO_OUT [--tokens 300000] \
        [--seeds 0,1] [--repeats 2]

DEMO_OUT is a finished `simslm demo --out` folder. Each contender trains the demo's depth-1 text LM (TWIST) on its
interleaved sequences for the same token budget and is validated on its held-out speech, once per seed and
repeat, alternating, each run a process of its own (`simslm train`, fp32, the CPU's SDPA). The contenders:

- rows: `batch_size` rows of the context a step (simslm's default);
- pieces: `batch_size` documents a step, laid first-fit into rows of the context (what SDPA gets);
- pieces, one row: the same documents end to end in one row, as slamkit's `DataCollatorWithFlattening` lays them
  and as flash-attn and flex attention get them on a GPU (forced here through `train.loop.ROW_FREE_KERNELS`).

Reports steps, tokens seen, the speech validation loss and the median wall time of each; and checks that both
layouts of pieces give the same losses.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONTENDERS = {"rows": ("rows", False), "pieces": ("pieces", False), "pieces, one row": ("pieces", True)}

# One run in a process of its own: `simslm train`'s own main, with the one-row layout forced when asked.
_RUN = """
import sys
import simslm.train.loop as train_module
from simslm.cli import main
if sys.argv[1] == "1":
    train_module.ROW_FREE_KERNELS = ("sdpa",)
sys.exit(main(sys.argv[2:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_out")
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    demo = Path(args.demo_out).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench_batching-"))
    results: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    try:
        for repeat in range(args.repeats):
            for seed in (int(seed) for seed in args.seeds.split(",")):
                for name, (batching, one_row) in CONTENDERS.items():
                    run = work / f"{batching}-{int(one_row)}-{seed}-{repeat}"
                    subprocess.run([sys.executable, "-c", _RUN, str(int(one_row)), "train", "--run-dir", str(run),
                                    "--data", str(demo / "sequences" / "interleaved"),
                                    "--validation-data", str(demo / "sequences" / "validation"),
                                    "--base-model", str(demo / "textlm" / "depth-1" / "model"),
                                    "--budget-tokens", str(args.tokens), "--batching", batching, "--seed", str(seed),
                                    "--attention", "sdpa", "--precision", "fp32"],
                                   check=True, capture_output=True)
                    result = json.loads((run / "result.json").read_text())
                    results[name].append({"seed": seed, "steps": result["steps"], "tokens": result["tokens"],
                                          "speech": result["validation"]["loss_speech"],
                                          "wall": result["wall_sec"]})
                    shutil.rmtree(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, runs in results.items():
        by_seed = {run["seed"]: run for run in runs}
        print(f"{name:16s} steps {sorted({run['steps'] for run in runs})}  tokens "
              f"{[by_seed[seed]['tokens'] for seed in sorted(by_seed)]}  speech CE "
              f"{[round(by_seed[seed]['speech'], 4) for seed in sorted(by_seed)]}  "
              f"median wall {statistics.median(run['wall'] for run in runs):.2f} s")
    walls = {name: statistics.median(run["wall"] for run in runs) for name, runs in results.items()}
    print(f"pieces in rows of the context run {walls['pieces, one row'] / walls['pieces']:.2f}x as fast as in one "
          f"row; for the same tokens, pieces take {walls['pieces'] / walls['rows']:.2f}x the wall time of rows")
    for first, second in zip(results["pieces"], results["pieces, one row"]):
        assert abs(first["speech"] - second["speech"]) < 1e-4 * abs(first["speech"]), (first, second)


if __name__ == "__main__":
    main()
