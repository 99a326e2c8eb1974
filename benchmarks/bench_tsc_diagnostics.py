"""Why spoken tSC is (or is not) above chance: unit overlap, and whether a model copies units.

    .venv/bin/python benchmarks/bench_tsc_diagnostics.py --units UNITS RUN ...

- Overlap: a model-free score, the share of an ending's unit n-grams that also occur in its
  context; the right ending should share more (names, objects) than another story's.
- Repeat test, per run: 120 units of each context, then the same 120 again. A model with
  induction heads predicts the second copy far better than the first. Also with 60 random
  unit ids (units never seen in that order), which tests copying alone.

`--units` is a `simslm units extract` folder of a cross-modal tSC benchmark's audio keyed by
file stem (`<id>_mutual`, `_correct`, `_incorrect`), as `simslm eval --units` takes it. Numbers: docs/BENCHMARKS.md and docs/LOG.md, 2026-11-29.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from simslm.eval.evaluate import load_run_model
from simslm.eval.scoring import pair_outcomes, sequence_log_likelihoods
from simslm.units.folder import read_units


def overlap_accuracy(units_by_stem: dict[str, np.ndarray], n: int) -> float:
    """Share of items whose right ending has more of its unit n-grams in the context (ties 0.5)."""
    def share(context: np.ndarray, ending: np.ndarray) -> float:
        seen = {tuple(context[i:i + n]) for i in range(len(context) - n + 1)}
        grams = [tuple(ending[i:i + n]) for i in range(len(ending) - n + 1)]
        return sum(gram in seen for gram in grams) / max(1, len(grams))

    items = sorted({stem.rsplit("_", 1)[0] for stem in units_by_stem if stem.endswith("_mutual")})
    right = np.array([share(units_by_stem[f"{i}_mutual"], units_by_stem[f"{i}_correct"]) for i in items])
    wrong = np.array([share(units_by_stem[f"{i}_mutual"], units_by_stem[f"{i}_incorrect"]) for i in items])
    return float(pair_outcomes(right, wrong).mean())


def repeat_test(run: Path, segments: list[np.ndarray]) -> tuple[float, float]:
    """Mean CE (nats per unit) on the first and on the second copy of each repeated segment."""
    model, vocabulary, _ = load_run_model(run, "cpu")
    head = ([] if vocabulary.bos_id is None else [vocabulary.bos_id]) + [vocabulary.speech_id]
    sequences, first, second = [], [], []
    for segment in segments:
        ids = np.concatenate([head, segment + vocabulary.unit_offset, segment + vocabulary.unit_offset])
        half = np.zeros(len(ids) - 1, dtype=bool)
        half[len(head) - 1 + 1:len(head) - 1 + len(segment)] = True  # the first copy, bar its first unit
        sequences += [ids, ids]
        first.append(half)
        second.append(np.roll(half, len(segment)))
    sums, counts = sequence_log_likelihoods(
        model, sequences, [mask for pair in zip(first, second) for mask in pair], vocabulary=vocabulary)
    ce = -sums / counts
    return float(ce[0::2].mean()), float(ce[1::2].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders (from simslm train, or untrained ones)")
    parser.add_argument("--units", required=True, help="units of a tSC benchmark's audio, with the runs' codebook")
    parser.add_argument("--segments", type=int, default=40)
    args = parser.parse_args()
    units_by_stem = {u.id: u.units for u in read_units(args.units)}
    for n in (1, 2, 3, 4):
        print(f"unit {n}-gram overlap picks the right ending: {100 * overlap_accuracy(units_by_stem, n):.1f}%")
    contexts = [units_by_stem[s][:120] for s in sorted(units_by_stem) if s.endswith("_mutual")][:args.segments]
    rng = np.random.default_rng(0)
    num_units = int(max(u.max() for u in units_by_stem.values())) + 1
    random_segments = [rng.integers(0, num_units, 60) for _ in range(args.segments)]
    for run in args.runs:
        real, shuffled = repeat_test(Path(run), contexts), repeat_test(Path(run), random_segments)
        print(f"{run}: CE first -> second copy, real units {real[0]:.2f} -> {real[1]:.2f}; "
              f"random units {shuffled[0]:.2f} -> {shuffled[1]:.2f}")


if __name__ == "__main__":
    main()
