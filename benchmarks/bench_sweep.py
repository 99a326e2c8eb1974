"""Local executor: two single-thread runs at once vs one two-thread run at a time.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_sweep.py --runs 4

The same grid of small runs (family depths 2 and 3, random init, text sequences at
context 256) is executed twice per setting in fresh sweep folders, alternating the two
settings; wall time of the whole sweep (process start, training, saving) is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from simslm.scaling import execute, sweep
from simslm.sequences.build import BuildConfig, build_sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=3e11)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "data"
        build_sequences(BuildConfig(out=str(data), streams=("text",),
                                                        text_corpus="tinystories-sample[:300]", context_length=256))
        spec = sweep.SweepSpec(variants=(sweep.Variant(name="text", data=str(data), init="random"),),
                               depths=(2, 3), budgets_flops=(args.budget, 2 * args.budget),
                               train={"batch_size": 8, "checkpoint_every": 1000})
        settings = {"2 runs x 1 thread": (2, 1), "1 run x 2 threads": (1, 2)}
        times: dict[str, list[float]] = {name: [] for name in settings}
        for repeat in range(args.repeats):
            for name, (parallel, threads) in settings.items():
                folder = scratch / f"{name.replace(' ', '')}-{repeat}"
                sweep.plan_sweep(spec, folder)
                started = time.perf_counter()
                execute.run_sweep(folder, num_parallel=parallel, threads_per_run=threads)
                times[name].append(time.perf_counter() - started)
    print("| local executor setting (4 runs) | sweep wall time, median | runs (s) |\n| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} s | {', '.join(f'{v:.1f}' for v in values)} |")
    ratio = statistics.median(times["1 run x 2 threads"]) / statistics.median(times["2 runs x 1 thread"])
    print(f"\n2 x 1 thread is {ratio:.2f}x the speed of 1 x 2 threads")


if __name__ == "__main__":
    main()
