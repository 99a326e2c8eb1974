"""A local sweep of the demo's own runs, as simslm ran it before 2026-12-03 and as it runs now, side by side.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_demo_sweep.py DEMO_OUT [--budgets 1.25e11] [--repeats 2]

DEMO_OUT is a finished `simslm demo --out` folder. Its sweep spec is planned again at `--budgets` (every variant
and depth) into fresh folders beside it, and run with the demo's executor settings (2 runs at once, 1 thread
each), alternating:

- before: every run a new interpreter (`--fresh-processes`), on glibc's malloc defaults
  (SIMSLM_KEEP_FREED_MEMORY=0);
- now: the defaults, every run a fork of a server that has done the imports once, freed memory kept for reuse.

Reports each sweep's wall time, and checks that both give the same validation losses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from simslm.scaling import collect, execute, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_out")
    parser.add_argument("--budgets", default="1.25e11")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    demo = Path(args.demo_out).resolve()
    # The spec with its paths placed (absolute), as `sweep run` reads it: the copies live beside the demo's sweep.
    spec = sweep.load_sweep(demo / "sweep")["spec"]
    spec["budgets_flops"] = [float(budget) for budget in args.budgets.split(",")]
    times: dict[str, list[float]] = {"before": [], "now": []}
    losses: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for name in times:
            out = demo / f"bench-sweep-{name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            sweep.plan_sweep(sweep.SweepSpec.from_json(spec), out)
            if name == "before":
                os.environ["SIMSLM_KEEP_FREED_MEMORY"] = "0"  # read by every run's process
            started = time.perf_counter()
            counts = execute.run_sweep(out, num_parallel=2, threads_per_run=1, fresh_processes=name == "before")
            times[name].append(time.perf_counter() - started)
            os.environ.pop("SIMSLM_KEEP_FREED_MEMORY", None)
            assert counts == {"done": sum(counts.values())}, counts
            losses[name] = [row["loss_speech"] for row in sorted(collect.collect(out), key=lambda row: row["run_dir"])]
            print(f"{name}: {len(losses[name])} runs in {times[name][-1]:.1f} s", flush=True)
    assert losses["before"] == losses["now"], "the two sweeps gave different losses"
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"\n| sweep of {len(losses['now'])} runs | median of {args.repeats}, alternated (s) | runs (s) |\n"
          f"| --- | --- | --- |\n| before | {before:.1f} | {', '.join(f'{t:.1f}' for t in times['before'])} |\n"
          f"| now | {now:.1f} ({before / now:.2f}x faster) | {', '.join(f'{t:.1f}' for t in times['now'])} |")
    print("validation speech CE of every run: identical")


if __name__ == "__main__":
    main()
