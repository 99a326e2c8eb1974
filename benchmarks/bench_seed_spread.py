"""How far training runs of one demo cell spread, against the intervals one run per cell prints.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_seed_spread.py DEMO_OUT --out FOLDER \
        [--seeds 1,2] [--budgets 1.25e11,3.2e11] [--depths 1,2,3] [--variants interleaved-twist,textless-twist]

DEMO_OUT is a finished `simslm demo --out` folder, whose runs are seed 0. Its sweep spec is planned again, cut to
`--variants`, `--depths` and `--budgets`, with `seeds` = `--seeds` (and no bench: the speech CE is what is compared),
into FOLDER, and run with the demo's executor settings (2 runs at once, 1 thread each). Those runs and the demo's own
seed-0 runs of the same cells are then read as cells (`collect.cells`), and printed:

- per cell, each seed's validation speech CE, their mean and standard deviation;
- per budget with both TWIST variants: finding 1's difference (interleaved + TWIST minus textless, best size by mean)
  with `collect.cell_difference`'s interval over seeds and batches, beside the demo's seed-0 difference with its
  interval over batches alone;
- each (variant, budget)'s best size by mean, beside seed 0's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from simslm.scaling import collect, execute, sweep


def _numbers(text: str, kind=float) -> tuple:
    return tuple(kind(value) for value in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_out")
    parser.add_argument("--out", required=True, help="folder for the replicate sweep")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--budgets", default="1.25e11,3.2e11")
    parser.add_argument("--depths", default="1,2,3")
    parser.add_argument("--variants", default="interleaved-twist,textless-twist")
    args = parser.parse_args()
    demo = Path(args.demo_out).resolve() / "sweep"
    stored = sweep.load_sweep(demo)["spec"]  # paths placed (absolute), as `sweep run` reads them
    variants = args.variants.split(",")
    stored.update(variants=[v for v in stored["variants"] if v["name"] in variants],
                  budgets_flops=list(_numbers(args.budgets)), depths=list(_numbers(args.depths, int)),
                  seeds=list(_numbers(args.seeds, int)), bench=[], bracket_models={},
                  train={key: value for key, value in stored["train"].items() if key != "seed"})
    sweep.plan_sweep(sweep.SweepSpec.from_json(stored), args.out)
    execute.run_sweep(args.out, executor="local", num_parallel=2, threads_per_run=1)

    replicates = collect.collect(args.out)
    wanted = {(row["variant"], row["member"], row["budget"]) for row in replicates}
    seed0 = [row for row in collect.collect(demo) if (row["variant"], row["member"], row["budget"]) in wanted]
    rows = seed0 + replicates
    print("| variant | budget | size | speech CE per seed | mean | SD |\n| --- | --- | --- | --- | --- | --- |")
    for cell in sorted(collect.cells(rows), key=lambda c: (c["variant"], c["budget"], c["parameters"])):
        losses = [row["loss_speech"] for row in cell["replicates"]]
        seeds = ", ".join(f"{row['seed']}: {row['loss_speech']:.3f}" for row in cell["replicates"])
        print(f"| {cell['variant']} | {cell['budget']:.3g} | {cell['member']} | {seeds} | {np.mean(losses):.3f} | "
              f"{np.std(losses, ddof=1):.3f} |")
    best, alone = collect.best_runs(rows), collect.best_runs(seed0)
    for budget in sorted({budget for _, budget in best}):
        pair, single = [best.get((v, budget)) for v in ("interleaved-twist", "textless-twist")], \
            [alone.get((v, budget)) for v in ("interleaved-twist", "textless-twist")]
        if None in pair or None in single:
            continue
        replicated, once = collect.cell_difference(*pair), collect.speech_loss_difference(*single)
        print(f"finding 1 at C={budget:.3g}: {len(pair[0]['replicates'])} seeds ({pair[0]['member']} vs "
              f"{pair[1]['member']}) {replicated[0]:+.3f} [{replicated[1]:+.3f}, {replicated[2]:+.3f}]; seed 0 alone "
              f"({single[0]['member']} vs {single[1]['member']}) {once[0]:+.3f} [{once[1]:+.3f}, {once[2]:+.3f}]")
    for (variant, budget), cell in sorted(best.items()):
        print(f"best size, {variant} at C={budget:.3g}: {cell['member']} by mean ({cell['loss_speech']:.3f}); "
              f"seed 0 alone: {alone[(variant, budget)]['member']}")


if __name__ == "__main__":
    main()
