"""Pairwise scoring at several batch sizes, today's scorer: whether more sides a batch (a token budget) pays.

    SIMSLM_MIRROR=../shared/data SIMSLM_QUIET=1 .venv/bin/python benchmarks/bench_scoring_batches.py

bench_eval.py's synthetic sets (stories260K + 500 units, 200 pairs each of random, tSC-shaped and sBLIMP-shaped
sides, every token scored), two batches at once (the default); each batch size timed `--repeats` times, alternating,
medians reported in pairs per second; scores checked equal to 1e-5 across batch sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch
    from bench_eval import KINDS, synthetic_sets

    from simslm import machine
    from simslm.eval.scoring import sequence_log_likelihoods
    from simslm.sequences.vocabulary import Vocabulary
    from simslm.train.build import build_model
    from simslm.train.plan import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    machine.keep_freed_memory()
    torch.manual_seed(0)
    vocabulary = Vocabulary.build("stories260K", num_units=500)
    model = build_model(TrainConfig(run_dir="", data="", base_model="stories260K", budget_tokens=1), len(vocabulary),
                        256, quiet=True).eval()
    sets = synthetic_sets(len(vocabulary), args.pairs)
    print("| pairs | " + " | ".join(f"batch {size}" for size in args.batch_sizes) + " |")
    print("| --- |" + " --- |" * len(args.batch_sizes))
    for kind in KINDS:
        sequences, scored, sides = sets[kind]
        times: dict[int, list[float]] = {size: [] for size in args.batch_sizes}
        reference = None
        for _ in range(args.repeats):
            for size in args.batch_sizes:
                started = time.perf_counter()
                sums, counts = sequence_log_likelihoods(model, sequences, scored, vocabulary=vocabulary,
                                                        batch_size=size, pairs=sides, concurrent_batches=2)
                times[size].append(time.perf_counter() - started)
                reference = sums / counts if reference is None else reference
                assert np.abs(sums / counts - reference).max() < 1e-5
        print(f"| {kind} | " + " | ".join(f"{args.pairs / np.median(times[size]):.1f} pairs/s"
                                          for size in args.batch_sizes) + " |")


if __name__ == "__main__":
    main()
