"""Pairwise scoring throughput: batched (sorted, padded) vs one sequence at a time, side by side.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_eval.py

Model: the stories260K TWIST model extended with 500 units (the default SLM shape), fp32 on
the CPU. Pairs: 200 pairs of token sequences with lengths drawn like the offline tSC's
S items at 256-token context (120-256 tokens). Scores are compared for equality, then
each scorer is timed three times, alternating; medians are reported.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from simslm.eval.scoring import sequence_log_likelihoods
from simslm.sequences.vocabulary import Vocabulary
from simslm.train import TrainConfig, build_model


def main() -> None:
    import torch

    torch.manual_seed(0)
    vocabulary = Vocabulary.build("stories260K", num_units=500)
    model = build_model(TrainConfig(run_dir="", data="", base_model="stories260K", budget_tokens=1), len(vocabulary), 256).eval()
    rng = np.random.default_rng(0)
    num_pairs = 200
    sides = [rng.integers(0, len(vocabulary), int(rng.integers(120, 257))) for _ in range(2 * num_pairs)]
    scored = [np.ones(len(s) - 1, dtype=bool) for s in sides]
    batched = lambda: sequence_log_likelihoods(model, sides, scored, vocabulary=vocabulary,  # noqa: E731
                                                        batch_size=16)
    single = lambda: sequence_log_likelihoods(model, sides, scored, vocabulary=vocabulary,  # noqa: E731
                                                       batch_size=1)
    assert np.allclose(batched()[0], single()[0], rtol=1e-5, atol=1e-4)
    times = {"batched (16)": [], "one at a time": []}
    for _ in range(3):
        for name, scorer in (("batched (16)", batched), ("one at a time", single)):
            started = time.perf_counter()
            scorer()
            times[name].append(time.perf_counter() - started)
    print("| scorer | pairs/s (median of 3) | runs (s) |\n| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {num_pairs / statistics.median(values):,.1f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nratio batched / one at a time: "
          f"{statistics.median(times['one at a time']) / statistics.median(times['batched (16)']):.2f}x; "
          f"threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
