"""Pairwise scoring throughput: today's scorer against the one of an earlier commit, side by side.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_eval.py [--before 0ed204d]

Model: the stories260K TWIST model extended with 500 units (the default SLM shape), fp32 on
the CPU. Three sets of 200 pairs of token sequences, every token scored (the reference preset):

- random: sides of 120-256 tokens with nothing in common (the set of 2026-11-25);
- tSC-shaped: both sides share a context of 80% of their length and differ in the ending,
  as tSC's spoken items at context 256 do (four sentences of context, one of ending);
- sBLIMP-shaped: sides of 20-100 tokens, 40% of pairs sharing their first 8-32 (the demo's sBLIMP units:
  57 tokens on average, 38% of pairs sharing 8 or more, 14 at the median).

With `--run RUN --bench FOLDER [--bench FOLDER ...]`, the sets are instead the pairs of those benchmark folders
as `simslm eval RUN --bench FOLDER` encodes them (its default preset and modes, every pair unless `--max-pairs`),
one set per folder and mode, scored with the run's own model:

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_eval.py \
        --run DEMO/sweep/runs/RUN --bench DEMO/bench/sblimp --bench DEMO/bench/tsc

The "before" scorer is `simslm/eval/scoring.py` as it was at `--before`, read from git
history, at its default batch of 16: the baseline, on glibc's malloc defaults as it then ran,
and again with freed memory kept for reuse (`machine.keep_freed_memory`, which simslm now sets
in every process), which tells the allocator's share from the scorer's. Today's scorer runs at
its defaults (`ScoringOptions`: batch 32, two batches at once, each on one of the 2 threads) and
one batch at a time. Each contender is a process of its own (spawned), so that none inherits
another's malloc settings. Scores (mean log-likelihood per token) are compared to 1e-5, then each
scorer is timed `--repeats` times, alternating; medians are reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures as concurrent_futures
import functools
import importlib.util
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from simslm.eval.scoring import ScoringOptions, sequence_log_likelihoods
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.build import build_model
from simslm.train.plan import TrainConfig


def scorer_at(commit: str):
    """`sequence_log_likelihoods` as it was at `commit`."""
    source = subprocess.run(["git", "show", f"{commit}:src/simslm/eval/scoring.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "scoring_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("scoring_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scoring_before"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module.sequence_log_likelihoods


def pairs(kind: str, count: int, vocabulary_size: int, rng) -> list[np.ndarray]:
    sides = []
    for _ in range(count):
        length = int(rng.integers(120, 257))
        if kind == "random":
            sides += [rng.integers(0, vocabulary_size, int(rng.integers(120, 257))) for _ in range(2)]
            continue
        if kind == "sBLIMP-shaped":
            shared = int(rng.integers(8, 33)) if rng.random() < 0.4 else 0
            context = rng.integers(0, vocabulary_size, shared)
            ends = [rng.integers(0, vocabulary_size, int(rng.integers(max(20 - shared, 4), 101 - shared)))
                    for _ in range(2)]
            ends[1][0] = (ends[0][0] + 1) % vocabulary_size  # the sides differ right after what they share
            sides += [np.concatenate([context, end]) for end in ends]
            continue
        context = rng.integers(0, vocabulary_size, int(0.8 * length))
        for _ in range(2):
            ending = rng.integers(0, vocabulary_size, int(rng.integers(0.15 * length, 0.25 * length)))
            sides.append(np.concatenate([context, ending]))
    return sides


KINDS = ("random", "tSC-shaped", "sBLIMP-shaped")
_STATE: dict[str, Any] = {}  # a contender's process: its scorer on each set of pairs

# A set of pairs to score: its sequences, what to score in each, and per pair its two sides' sequences.
Sequences = tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int]]]


def synthetic_sets(vocabulary_size: int, num_pairs: int) -> dict[str, Sequences]:
    """The three sets of the module's docstring (the same in every process: seeded), every token scored."""
    rng = np.random.default_rng(0)
    sets = {}
    for kind in KINDS:
        sides = pairs(kind, num_pairs, vocabulary_size, rng)
        sets[kind] = (sides, [np.ones(len(side) - 1, dtype=bool) for side in sides],
                      [(2 * i, 2 * i + 1) for i in range(num_pairs)])
    return sets


def benchmark_sets(run: str, benches: list[str], max_pairs: int | None) -> dict[str, Sequences]:
    """The pairs of each benchmark folder and mode, encoded as `simslm eval` encodes them for `run`."""
    from simslm.eval.evaluate import EvalConfig, benchmark_kind, load_run_model, pairs_to_score
    from simslm.eval.layouts import bench_label
    from simslm.eval.scoring import encode_pairs

    config = EvalConfig(run=run, bench=tuple(benches), max_pairs=max_pairs)
    model, vocabulary, _ = load_run_model(Path(run), "cpu")
    sets = {}
    for argument in benches:  # [LABEL=]FOLDER, named as `simslm eval` files its results
        _, label, target = benchmark_kind(argument)
        label = label or bench_label(target)
        _, _, pairs_by_mode, units_of = pairs_to_score(config, Path(run), target)
        for mode, chosen in pairs_by_mode.items():
            encoded = encode_pairs(chosen, vocabulary, units_of, config, int(model.config.max_position_embeddings))
            sets[f"{label}/{mode}" if mode else label] = (encoded.sequences, encoded.scored, encoded.sides)
    return sets


def _set_up(scorer: str, before_commit: str, num_pairs: int, keep_memory: bool, run: str | None = None,
            sets: dict[str, Sequences] | None = None) -> None:
    """A contender's process: the model, the sets of pairs (the same in every process) and its scorer. `scorer` is
    "before", or today's scorer as "BATCHES_AT_ONCE" or "BATCHES_AT_ONCE:MIN_SHARED_TOKENS". With `run`, the
    model is that run's and `sets` are given."""
    import torch

    from simslm import machine
    from simslm.eval import scoring

    if keep_memory:
        machine.keep_freed_memory()
    torch.manual_seed(0)
    if run is not None:
        from simslm.eval.evaluate import load_run_model

        model, vocabulary, _ = load_run_model(Path(run), "cpu")
    else:
        vocabulary = Vocabulary.build("stories260K", num_units=500)
        model = build_model(TrainConfig(run_dir="", data="", base_model="stories260K", budget_tokens=1),
                            len(vocabulary), 256)
        sets = synthetic_sets(len(vocabulary), num_pairs)
    model.eval()
    options = ScoringOptions()  # today's defaults
    for kind, (sequences, scored, sides) in sets.items():
        if scorer == "before":
            function = functools.partial(scorer_at(before_commit), model, sequences, scored, vocabulary=vocabulary,
                                         batch_size=16)
        else:
            function = functools.partial(sequence_log_likelihoods, model, sequences, scored, vocabulary=vocabulary,
                                         batch_size=options.batch_size, pairs=sides,
                                         concurrent_batches=int(scorer.partition(":")[0]))
            if scorer.partition(":")[2]:
                scoring.MIN_SHARED_TOKENS = int(scorer.partition(":")[2])
        _STATE[kind] = function


def _score(kind: str) -> tuple[float, np.ndarray]:
    """Seconds to score one set, and its scores (mean log-likelihood per scored token, the reference preset)."""
    started = time.perf_counter()
    sums, counts = _STATE[kind]()
    return time.perf_counter() - started, np.divide(sums, counts)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="0ed204d", help="the commit whose scorer is the baseline")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-shared-tokens", type=int, default=0,
                        help="also race today's defaults with sides sharing from this many tokens (8 before 2026-12-04)")
    parser.add_argument("--run", help="score the pairs of --bench folders with this run's model instead")
    parser.add_argument("--bench", action="append", default=[], help="[LABEL=]FOLDER of pairs (with --run; repeatable)")
    parser.add_argument("--max-pairs", type=int, help="with --run: at most this many pairs per folder and mode")
    args = parser.parse_args()
    if bool(args.run) != bool(args.bench):
        parser.error("--run and --bench go together")
    sets = benchmark_sets(args.run, args.bench, args.max_pairs) if args.run else None
    kinds = list(sets) if sets else list(KINDS)
    num_pairs = {kind: len(sets[kind][2]) if sets else args.pairs for kind in kinds}
    options = ScoringOptions()
    baseline = f"before ({args.before}), batch 16, glibc's malloc defaults"
    contenders = {baseline: ("before", False), "before, batch 16, freed memory kept": ("before", True)}
    for concurrent in sorted({1, options.concurrent_batches}):
        contenders[f"now, batch {options.batch_size}, {concurrent} at once"] = (str(concurrent), True)
    if args.min_shared_tokens:
        contenders[f"now, defaults, sharing from {args.min_shared_tokens} tokens"] = (
            f"{options.concurrent_batches}:{args.min_shared_tokens}", True)
    spawn = multiprocessing.get_context("spawn")
    pools = {name: concurrent_futures.ProcessPoolExecutor(1, mp_context=spawn, initializer=_set_up,
                                                          initargs=(scorer, args.before, args.pairs, keep, args.run,
                                                                    sets))
             for name, (scorer, keep) in contenders.items()}
    try:
        print("| pairs | scorer | pairs/s (median), ratio | runs (s) |\n| --- | --- | --- | --- |")
        for kind in kinds:
            results = {name: pool.submit(_score, kind).result()[1] for name, pool in pools.items()}  # and warm up
            largest = max(float(np.abs(results[baseline] - values).max()) for values in results.values())
            assert largest <= 1e-5, largest
            times = {name: [] for name in pools}
            for _ in range(args.repeats):
                for name, pool in pools.items():  # one at a time: the others wait idle
                    times[name].append(pool.submit(_score, kind).result()[0])
            rates = {name: num_pairs[kind] / statistics.median(values) for name, values in times.items()}
            for name, values in times.items():
                print(f"| {kind} | {name} | {rates[name]:,.1f} ({rates[name] / rates[baseline]:.2f}x before) | "
                      f"{', '.join(f'{v:.2f}' for v in values)} |")
            print(f"| {kind} | largest score difference from before | {largest:.1e} nats per token | |")
    finally:
        for pool in pools.values():
            pool.shutdown()
    print(f"\nthreads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
