"""`simslm eval`: score a trained run on benchmark folders, validation data and generation.

Each benchmark folder's layout is recognised (`layouts`), its audio turned into the run's
units (`bench_units`), its pairs scored (`scoring`); results merge into `<run>/eval.json`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Literal

import numpy as np

from simslm import machine, storage
from simslm.config import ConfigError, check_device, check_positive, registry_choices
from simslm.eval.bench_units import run_unit_source, units_lookup
from simslm.eval.generation import ASRS, GenerationOptions, generation_metrics
from simslm.eval.layouts import (
    BENCH_FILE,
    CROSS_MODES,
    FREQUENCY_BANDS,
    NO_BAND,
    CrossMode,
    Pair,
    Part,
    bench_digest,
    bench_folder,
    bench_label,
    detect_layout,
    load,
)
from simslm.eval.scoring import (
    Accuracy,
    LongSidesError,
    PairScores,
    ScoringOptions,
    accuracy_with_ci,
    pair_outcomes,
    score_pairs,
)
from simslm.model import load_model_folder
from simslm.sequences.vocabulary import VOCAB_FILE, Vocabulary
from simslm.units.folder import unit_source

EVAL_FILE = "eval.json"


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ScoringOptions):
    """What `simslm eval` does (with the scoring options it inherits)."""

    renamed: ClassVar[dict[str, str]] = {"generation_prompts": "num_generation_prompts"}

    run: str
    """Run directory from `simslm train` (its model/ is evaluated), or a model folder (the model/ of a run, or one
    `simslm model from-slamkit` wrote); eval.json is written into it."""
    bench: tuple[str, ...]
    """Benchmark folders ([label=]path), published sets by Hugging Face hub id ([label=]org/name[:folder], e.g.
    slprl/multispeaker-storycloze:tSC; downloaded once into the hub's cache), `validation`, or `generation=PATH` (a
    cross-modal folder)."""
    aggregation: Literal["auto", "pairs", "items", "macro"] = "auto"
    """Mean over pairs (slamkit's, the paper's), mean over items (ZeroSpeech 2021's for sBLIMP and sWUGGY: an
    item's voices averaged first), macro mean over groups (phenomena, frequency bands), or auto: pairs for the
    reference preset, the layout's own otherwise (items for ZeroSpeech folders)."""
    modes: tuple[CrossMode, ...] = tuple(CROSS_MODES)
    """Cross-modal pairings to score for cross-modal folders."""
    units: str | None = None
    """Pre-extracted units (`simslm units extract` folder keyed by audio file stem) instead of audio."""
    speech_units: str | None = None
    """The `simslm units extract` folder whose codebook and encoder the model's units come from (default: the
    run's training data, or what the model folder records)."""
    max_pairs: int | None = None
    """Score at most this many pairs per benchmark (a seeded sample), for quick looks."""
    num_resamples: int = 1000
    """Bootstrap resamples for each accuracy's interval."""
    seed: int = 0
    """Seed of the bootstrap, the pair sample and generation."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    num_workers: int = 0
    """Worker processes for extracting benchmark units; 0 = one per core."""
    out: str | None = None
    """Folder for eval.json (and scores/) when not the run or model folder itself (one you may only read: a
    colleague's run, a shared model); sweeps, `fit` and `report` read results in the run's own folder."""
    write_scores: bool = False
    """Also write each pair's two scores to RUN/scores/LABEL.tsv and, for ZeroSpeech folders, each audio file's
    score to RUN/scores/LABEL.zerospeech.txt (`<file> <score>` lines: the submission ZeroSpeech's evaluator reads)."""
    num_generation_prompts: int = 16
    """generation: prompts to continue (from the benchmark's contexts)."""
    asr: str = field(default="pocketsphinx", metadata=registry_choices(ASRS))
    """generation: ASR for GenPPL (pocketsphinx offline; whisper with --asr-model PATH)."""
    asr_model: str | None = None
    """generation: local weights of the ASR model (whisper)."""
    judge: str = "stories260K"
    """generation: judge LM for GenPPL (an asset, HF folder or id, .bin or .gguf; e.g. Llama-3.2-1B)."""

    def check(self) -> None:
        super().check()
        check_device(self)
        if not self.bench:
            raise ConfigError("--bench needs at least one benchmark folder, validation, or generation=FOLDER")
        if repeated := repeated_label(self.bench):
            raise ConfigError(f"--bench: {repeated}")
        check_positive(self, "max_pairs", "num_resamples", "num_generation_prompts")
        check_positive(self, "num_workers", allow_zero=True)
        if self.out and Path(self.out).is_file():
            raise ConfigError(f"--out {self.out}: a file, where the folder for eval.json is needed")


@dataclass(frozen=True, kw_only=True)
class BenchmarkResult(Accuracy):
    """One pairwise benchmark (in one cross-modal mode) as `eval.json` records it."""

    layout: str
    mode: str | None
    folder: str | dict[str, str]
    """The benchmark folder scored, relative to eval.json's folder and absolute (`storage.portable_path`): a run moved
    with its benchmarks still names them (an absolute path alone before 2026-12-06's thirty-second session)."""
    num_skipped: int
    """Pairs that could not be scored (audio whose units could not be extracted)."""
    scoring: dict[str, Any]
    """The scoring options as applied (baseline `none` where no item had a context to remove)."""
    wall_sec: float
    note: str | None
    """What the benchmark is (a re-creation says so)."""
    without_baseline: dict[str, float] | None = None
    """The plain score's accuracy and interval, when a baseline was subtracted."""
    num_cut: int = 0
    """Sides (two per pair) longer than the model's context: scored whole past it, as slamkit scores them, or on
    their most recent tokens, as `scoring["long_sides"]` says (cut where it is missing: simslm's only way before
    2026-12-05)."""
    context: int | None = None
    """The model's context (max_position_embeddings)."""
    sampled_from: int | None = None
    """The pairs the set has, when --max-pairs scored a sample of them (None: every pair)."""
    bench_digest: str | None = None
    """The benchmark folder's `layouts.bench_digest` when scored: a sweep scores a run again on a folder built again
    since (None: scored before 2026-12-06's thirty-first session, which did not record it)."""

    @property
    def long_sides(self) -> str:
        """How the sides longer than the model's context were scored: whole or cut."""
        return self.scoring.get("long_sides", "cut")


def long_sides_note(long_sides: str) -> str:
    """How sides longer than a model's positions were scored (`BenchmarkResult.long_sides`), in words."""
    return ("scored whole past them, as slamkit scores them" if long_sides == "whole" else
            "their oldest tokens dropped (--long-sides cut; slamkit scores them whole)")


def read_results(run_dir: str | os.PathLike) -> dict[str, BenchmarkResult]:
    """The pairwise benchmark results in a run's eval.json (none when it was not evaluated)."""
    path = Path(run_dir) / EVAL_FILE
    if not path.exists():
        return {}
    try:
        entries = storage.read_json(path)["benchmarks"]
        return {name: BenchmarkResult(**entry) for name, entry in entries.items() if "accuracy" in entry}
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: not an evaluation record ({error.__class__.__name__}: {error})") from None


def load_run_model(run_dir: Path, device: str):
    """The model (fp32), its vocabulary and the run's config (None for a bare model folder)."""
    model_dir, vocabulary, config = run_vocabulary(run_dir)
    return load_model_folder(model_dir, device), vocabulary, config


def run_vocabulary(run_dir: Path) -> tuple[Path, Vocabulary, dict[str, Any] | None]:
    """The model folder of a run (or a bare model folder), its vocabulary and the run's config."""
    run_dir = Path(run_dir)
    if (run_dir / "plan.json").exists() and (run_dir / "model").is_dir():
        from simslm.train.plan import RunResult

        if not RunResult.exists(run_dir):  # written after model/: a run stopped while it saved its model
            raise ValueError(f"{run_dir}: its training has not finished (no result.json; model/ may be half "
                             f"written); run the same `simslm train` again to finish it")
        config, model_dir = storage.read_json(run_dir / "config.json"), run_dir / "model"
        from simslm.train.plan import placed_input

        vocabulary = Vocabulary.load(model_dir if (model_dir / VOCAB_FILE).exists() else
                                     Path(placed_input(run_dir, config, "data")) / "tokenizer")
    elif (run_dir / VOCAB_FILE).exists():
        config, model_dir, vocabulary = None, run_dir, Vocabulary.load(run_dir)
    elif (run_dir / "plan.json").exists():
        # A checkpoint's model can be scored mid-run: named, the latest (steps are zero-padded, so they sort). Not
        # `train.checkpoint.latest_checkpoint`, which reads every weight to check it: `model from-checkpoint` checks
        # the one named.
        latest = max((run_dir / "checkpoints").glob("step-*"), default=None)
        mid_run = (f"; or score it at its latest checkpoint: `simslm model from-checkpoint {latest} FOLDER`, then "
                   f"`simslm eval FOLDER`") if latest else ""
        raise ValueError(f"{run_dir}: its training has not finished (no model/ yet); run the same `simslm train` "
                         f"again to finish it, or wait for it{mid_run}")
    elif (run_dir / "state.json").exists() and (run_dir.parent.parent / "plan.json").exists():
        raise ValueError(f"{run_dir}: a checkpoint of run {run_dir.parent.parent} (the training's state, which its "
                         f"later steps replace); make the model at its step a folder of its own first: `simslm model "
                         f"from-checkpoint {run_dir} FOLDER`")
    else:
        raise ValueError(f"{run_dir}: neither a run folder (plan.json and model/) nor a model folder with "
                         f"{VOCAB_FILE} (a slamkit model: `simslm model from-slamkit --tokenizer ... --num-units ...`)")
    return model_dir, vocabulary, config


@dataclass(frozen=True)
class _Context:
    """What every kind of benchmark is evaluated with."""

    config: EvalConfig
    run_dir: Path
    out_dir: Path  # where eval.json and scores/ go
    model: Any
    vocabulary: Vocabulary
    run_config: dict[str, Any] | None
    device: str


def _evaluate_validation(context: _Context, label: str, target: str) -> dict[str, Any]:
    run_dir, run_config = context.run_dir, context.run_config
    if run_config is None and (run := checkpoint_run(run_dir)) is not None:  # a run's model at a checkpoint
        run_dir, run_config = run, storage.read_json(run / "config.json")
    losses = validation_ce(context.model, context.vocabulary, run_config, context.device, run_dir=run_dir)
    # As a benchmark's folder is: relative to eval.json's folder, and absolute.
    return {"validation": {**losses, "data": storage.portable_path(losses["data"], context.out_dir)}}


def checkpoint_run(model_dir: Path) -> Path | None:
    """The run a model folder was made from at one of its checkpoints (`simslm model from-checkpoint`), when it is
    still where the folder says (None for any other model folder)."""
    from simslm.train.checkpoint import CHECKPOINT_FILE

    record = Path(model_dir) / CHECKPOINT_FILE
    if not record.is_file():
        return None
    try:
        run = storage.placed_path(storage.read_json(record)["run"], model_dir)
    except (KeyError, TypeError):
        raise ValueError(f"{record}: not the record `simslm model from-checkpoint` writes (no run in it)") from None
    return run if (run / "config.json").is_file() else None


def _evaluate_generation(context: _Context, label: str, target: str) -> dict[str, Any]:
    config = context.config
    options = GenerationOptions(num_prompts=config.num_generation_prompts, asr=config.asr,
                                asr_model=config.asr_model, judge=config.judge)
    return {"generation": generation_metrics(context.model, context.vocabulary, Path(target), context.run_dir,
                                             context.device, seed=config.seed, options=options,
                                             speech_units=config.speech_units)}


def pairs_to_score(config: EvalConfig, run_dir: Path, target: str, device: str = "cpu"):
    """A pairwise benchmark folder, its layout, its pairs by mode as `simslm eval` scores them (the modes asked
    for, sampled to --max-pairs) and the lookup of their audio's units (encoded on `device`)."""
    folder = bench_folder(target)
    layout = detect_layout(folder)
    modes = [mode for mode in layout.modes if mode is None or mode in config.modes]
    pairs_by_mode = {mode: _sample(load(folder, mode)[1], config.max_pairs, config.seed) for mode in modes}
    # One lookup for every mode: the modes share the folder's audio.
    units_of = units_lookup([pair for pairs in pairs_by_mode.values() for pair in pairs], run_dir,
                            config.units, config.num_workers, join=config.preset == "reference",
                            speech_units=config.speech_units, device=device)
    return folder, layout, pairs_by_mode, units_of


def _evaluate_pairs(context: _Context, label: str, target: str) -> dict[str, Any]:
    """Every mode of a pairwise benchmark folder, each with its accuracy and interval."""
    config = context.config
    label = label or bench_label(target)  # as `result_label` names it
    folder, layout, pairs_by_mode, units_of = pairs_to_score(config, context.run_dir, target, context.device)
    aggregation = config.aggregation if config.aggregation != "auto" else \
        ("pairs" if config.preset == "reference" else layout.aggregation)
    interval = {"aggregation": aggregation, "num_resamples": config.num_resamples, "seed": config.seed}
    results = {}
    digest = bench_digest(folder)
    for mode, pairs in pairs_by_mode.items():
        total = len(load(folder, mode)[1]) if config.max_pairs else len(pairs)  # --max-pairs: a sample of them
        started = time.perf_counter()
        try:
            scores = score_pairs(context.model, pairs, context.vocabulary, units_of, config, context.device)
        except LongSidesError as error:
            raise ValueError(f"{folder}{f' ({mode})' if mode else ''}: {error}") from None
        if not len(scores.positive):
            # An accuracy of no pairs is NaN: refused, so it never replaces an earlier result in eval.json.
            raise ValueError(f"{folder}: no pair could be scored ({scores.num_skipped} of {len(pairs)} skipped: "
                             f"the units of their audio are missing)")
        if problem := _not_finite(scores, pairs):
            raise ValueError(f"{folder}{f' ({mode})' if mode else ''}: {problem}")
        if scores.num_skipped:  # a long job skips and counts a bad item, and says so where the user looks
            print(f"simslm eval: warning: {folder}{f' ({mode})' if mode else ''}: {scores.num_skipped} of {len(pairs)} "
                  f"pair(s) skipped, the units of their audio missing (unreadable or silent audio): "
                  f"{', '.join(scores.skipped_files)}{', ...' if scores.num_skipped > len(scores.skipped_files) else ''}",
                  file=sys.stderr)
        if config.write_scores:
            write_pair_scores(context.out_dir / SCORES_FOLDER, f"{label}/{mode}" if mode else label, pairs, scores,
                              zerospeech=folder if layout.zerospeech else None)
        # As applied: pmi scores items without a context part as ending does.
        applied = {"preset": "ending" if config.preset == "pmi" and scores.without_baseline is None else config.preset,
                   "reduction": config.reduction, "speech_vocab": config.speech_vocab, "long_sides": config.long_sides}
        name = f"{label}/{mode}" if mode else label
        # The whole set, then each of the layout's subsets (sWUGGY's in-vocab words) from the same scores.
        for result_name, keep in [(name, None)] + [(f"{name}/{subset}", keep) for subset, keep in layout.subsets]:
            at = [index for index, group in enumerate(scores.groups) if keep is None or keep(group)]
            if not at:
                continue
            groups, items = [scores.groups[index] for index in at], [scores.items[index] for index in at]
            accuracy = accuracy_with_ci(pair_outcomes(scores.positive[at], scores.negative[at]), groups,
                                        items=items, **interval)
            plain = None
            if scores.without_baseline is not None:
                plain = asdict(accuracy_with_ci(pair_outcomes(*(side[at] for side in scores.without_baseline)),
                                                groups, items=items, **interval))
                plain = {key: plain[key] for key in ("accuracy", "ci_low", "ci_high")}
            results[result_name] = BenchmarkResult(
                **asdict(accuracy), layout=layout.name, mode=mode,
                folder=storage.portable_path(folder, context.out_dir), num_skipped=scores.num_skipped,
                scoring=applied, wall_sec=round(time.perf_counter() - started, 3),
                note=_bench_note(folder), without_baseline=plain, num_cut=scores.num_cut,
                context=int(context.model.config.max_position_embeddings),
                sampled_from=total if total > len(pairs) else None, bench_digest=digest)
    return results


def _not_finite(scores: PairScores, pairs: list[Pair]) -> str | None:
    """What is wrong when a score is not a number: a NaN compares as neither higher nor equal, so a model whose
    weights overflowed was reported at 0% (and one of infinite logits at chance, 50%) as if it had been scored."""
    sides = [scores.positive, scores.negative, *(scores.without_baseline or ())]
    broken = np.flatnonzero(~np.logical_and.reduce([np.isfinite(side) for side in sides]))
    if not len(broken):
        return None
    first = pairs[scores.kept[broken[0]] if scores.kept is not None else broken[0]].id
    return (f"the model gives a log-likelihood that is not a finite number for {len(broken)} of "
            f"{len(scores.positive)} pairs (first: {first}); are its weights finite? (a run whose last update "
            f"diverged, a model converted from another precision)")


SCORES_FOLDER = "scores"


def _side_text(side: tuple[Part, ...]) -> str:
    """A side as the TSV shows it: each part's audio file, or its text, joined by ' + '."""
    shown = (part.audio if part.audio is not None else f"text: {part.text}" for part in side)
    return " + ".join(" ".join(str(text).split()) for text in shown)


def _gold_name(audio: str, folder: Path) -> str:
    """A file as `gold.csv` names it: its path in the set's folder (else as given there), without its extension."""
    path = Path(audio).with_suffix("")
    return (path.relative_to(folder) if path.is_relative_to(folder) else path).as_posix()


def write_pair_scores(folder: Path, name: str, pairs: list[Pair], scores: PairScores, *,
                      zerospeech: Path | None) -> None:
    """`--write-scores`: each scored pair's sides and scores as a TSV, and for a ZeroSpeech folder (`zerospeech`,
    the benchmark's folder) each audio file's score in its submission format: `<file> <score>`, the file as
    gold.csv names it (its path in the folder, no extension), higher is likelier, as its evaluator reads it;
    complete only when every pair was scored."""
    stem = name.replace("/", "-")
    lines = ["id\tgroup\titem\tpositive\tnegative\tpositive_score\tnegative_score\toutcome"]
    outcomes = pair_outcomes(scores.positive, scores.negative)
    files: dict[str, float] = {}
    for row, index in enumerate(scores.kept):
        pair = pairs[index]
        lines.append("\t".join([pair.id, pair.group, pair.item or pair.id, _side_text(pair.positive),
                                 _side_text(pair.negative), repr(float(scores.positive[row])),
                                 repr(float(scores.negative[row])), repr(float(outcomes[row]))]))
        if zerospeech is not None:  # one audio file a side
            for side, score in ((pair.positive, scores.positive[row]), (pair.negative, scores.negative[row])):
                files[_gold_name(side[0].audio, zerospeech)] = float(score)
    storage.write_text(folder / f"{stem}.tsv", "\n".join(lines) + "\n")
    if zerospeech is not None:
        storage.write_text(folder / f"{stem}.zerospeech.txt",
                           "".join(f"{file} {score!r}\n" for file, score in files.items()))


# A benchmark argument is `validation`, `generation=FOLDER`, or `[label=]FOLDER` of pairs.
BENCHMARK_KINDS: dict[str, Callable[[_Context, str, str], dict[str, Any]]] = {
    "validation": _evaluate_validation, "generation": _evaluate_generation, "pairs": _evaluate_pairs}


def benchmark_kind(argument: str) -> tuple[str, str, str]:
    """(kind, label, target) of one --bench argument."""
    label, _, target = argument.rpartition("=") if "=" in argument else ("", "", argument)
    if target == "validation":
        return "validation", label, target
    if label == "generation":
        return "generation", label, target
    return "pairs", label, target


def repeated_label(arguments: Iterable[str]) -> str | None:
    """The first --bench arguments that eval.json would file under one name, each one's results replacing the
    last's (two folders both called sblimp, say), in words; None when each has its own."""
    by_label: dict[str, list[str]] = {}
    for argument in arguments:
        by_label.setdefault(result_label(argument), []).append(argument)
    label, given = next(((label, given) for label, given in by_label.items() if len(given) > 1), (None, []))
    if label is None:
        return None
    return (f"{len(given)} benchmarks named {label} ({', '.join(given)}), whose results would take one name in "
            f"eval.json, the last replacing the others; give each its own: LABEL=FOLDER")


def result_label(argument: str) -> str:
    """The name eval.json files one --bench argument's results under: `validation`, `generation`, or a pairs
    benchmark's label (its results are `LABEL` or `LABEL/MODE`)."""
    kind, label, target = benchmark_kind(argument)
    if kind != "pairs":
        return kind
    return label or bench_label(target)


def evaluate_run(config: EvalConfig) -> dict[str, Any]:
    """Score every benchmark asked for and merge the results into `<run>/eval.json`."""
    run_dir = Path(config.run)
    model_dir, vocabulary, run_config = run_vocabulary(run_dir)
    check_inputs(config, vocabulary, model_dir)  # before the model loads: a typo costs no minutes
    device = machine.torch_device(config.device)
    model = load_model_folder(model_dir, device)
    out_dir = eval_folder(config)
    context = _Context(config, run_dir, out_dir, model, vocabulary, run_config, device)
    results: dict[str, Any] = {}
    eval_path = out_dir / EVAL_FILE
    for argument in config.bench:
        kind, label, target = benchmark_kind(argument)
        found = BENCHMARK_KINDS[kind](context, label, target)
        results.update(found)
        # Merged after each benchmark: an evaluation stopped part way (a kill, a job's time limit) keeps what it
        # has scored, and a sweep's requeued job scores only the rest. Under a lock: two evaluations of one run
        # (each on its own benchmarks) keep each other's results.
        entries = {name: asdict(entry) if isinstance(entry, BenchmarkResult) else entry for name, entry in found.items()}
        model_at = os.path.relpath(model_dir, out_dir)  # "model" in a run, "." in a model folder
        out_dir.mkdir(parents=True, exist_ok=True)  # a new --out
        storage.update_json(eval_path, lambda merged: {**merged, "benchmarks": {**merged["benchmarks"], **entries},
                                                       "model_dir": model_at}, default=lambda: {"benchmarks": {}})
    return results


def eval_folder(config: EvalConfig) -> Path:
    """Where `config`'s eval.json (and scores/) go: --out, else the run or model folder evaluated."""
    return Path(config.out) if config.out else Path(config.run)


def check_inputs(config: EvalConfig, vocabulary: Vocabulary, model_dir: Path) -> None:
    """Refuse benchmark folders that are not benchmarks, pre-extracted units that are not the model's, and an
    eval.json the results could not be merged into or written, or that holds another model's results (said before
    the scoring, not after it)."""
    eval_path = eval_folder(config) / EVAL_FILE
    storage.refuse_unwritable(eval_path, "pass --out FOLDER to write the results elsewhere")
    stored = storage.read_json(eval_path) if eval_path.exists() else {"benchmarks": {}}
    if not isinstance(stored, dict) or not isinstance(stored.get("benchmarks"), dict):
        raise ValueError(f"{eval_path}: not an eval.json (no benchmarks); move it aside, and simslm eval writes a "
                         f"new one")
    owner = _results_owner(eval_folder(config), stored)
    if owner is not None and os.path.realpath(owner) != os.path.realpath(model_dir):
        # Read back as that model's own (a sweep reads each run's eval.json so), one file mixing two models' scores.
        held = f"{eval_path}: holds the results of" if eval_path.exists() else f"{eval_folder(config)}: the folder of"
        raise ValueError(f"{held} another model ({owner}), where this evaluation of {model_dir} would be read as "
                         f"its own; write to another --out")
    for argument in config.bench:
        kind, _, target = benchmark_kind(argument)
        if kind == "pairs":
            detect_layout(bench_folder(target))
        label = result_label(argument)
        if config.max_pairs and kind == "pairs" and any(
                (name == label or name.startswith(label + "/")) and isinstance(entry, dict) and
                entry.get("sampled_from") is None for name, entry in stored["benchmarks"].items()):
            # A quick look filed over a sweep's whole scores: the fit and the report would read the sample.
            raise ValueError(f"{eval_path}: holds results of {label} on every pair, which --max-pairs "
                             f"{config.max_pairs} would replace with a sample; write the quick look elsewhere with "
                             f"--out FOLDER")
    if config.units:
        given = unit_source(config.units)
        if given.k != vocabulary.num_units:
            raise ValueError(f"{config.units}: units of a {given.k}-unit codebook, but the model reads "
                             f"{vocabulary.num_units} units")
        try:
            expected = run_unit_source(Path(config.run), config.speech_units)
        except ValueError:
            return  # the model does not record its codebook: the size check is all there is
        if given.other_codebook(expected):
            raise ValueError(f"{config.units}: units of another codebook than the model's ({expected.codebook})")
        if settings := given.other_encoding(expected):
            raise ValueError(f"{config.units}: units encoded with {settings[0]}, but the model's with {settings[1]}")


def _results_owner(folder: Path, stored: dict[str, Any]) -> Path | None:
    """The model whose results an eval folder holds: the one its eval.json names, else the folder's own (a run's
    model/, or the model folder itself), else none (a folder of no model, with no results yet)."""
    if stored.get("model_dir"):
        return Path(os.path.normpath(folder / stored["model_dir"]))
    if (folder / "plan.json").exists():
        return folder / "model"
    if (folder / VOCAB_FILE).exists():
        return folder
    return None


def _sample(pairs: list[Pair], max_pairs: int | None, seed: int) -> list[Pair]:
    """At most `max_pairs` of the pairs, a seeded sample in their original order."""
    if not max_pairs or len(pairs) <= max_pairs:
        return pairs
    chosen = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
    return [pairs[i] for i in sorted(chosen)]


def _bench_note(folder: Path) -> str | None:
    meta = folder / BENCH_FILE
    return storage.read_json(meta).get("note") if meta.exists() else None


def validation_ce(model, vocabulary: Vocabulary, run_config: dict[str, Any] | None, device: str, *,
                  run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Cross-entropy per modality on the run's held-out sequences (the paper's speech loss is `loss_speech`);
    `run_dir`, the run folder as named now, finds them when config.json names them relative to elsewhere."""
    from simslm.train.build import check_documents_apart
    from simslm.train.loss import evaluate_modalities
    from simslm.train.plan import placed_input

    if run_config is None:
        raise ValueError("validation needs a run folder (its validation_data), or a model folder made from one of its "
                         "checkpoints (`simslm model from-checkpoint`) beside it; this is a bare model folder")
    run_dir = run_dir if run_dir is not None else run_config["run_dir"]
    if not run_config.get("validation_data"):
        raise ValueError(f"run {run_dir} has no validation_data; train with validation_data=FOLDER")
    check_documents_apart(model.config, model.config._attn_implementation, device, bf16=False, one_row=False,
                          command="eval")
    validation = placed_input(run_dir, run_config, "validation_data")
    losses = evaluate_modalities(model, validation, vocabulary, run_config["batch_size"],
                                 run_config.get("num_validation_batches", run_config.get("validation_batches", 16)), device)
    return {**asdict(losses), "data": str(storage.located_path(validation))}


MAX_GROUPS_SHOWN = 8


# sWUGGY's frequency bands in their own order (oov, 1-5, 6-20, 21-100, >100), which sorting their labels mixed up
# ("21-100" before "6-20"); other groups (speakers) by name, before them.
_BAND_ORDER = {label: rank for rank, label in enumerate([label for _, label in FREQUENCY_BANDS] + [NO_BAND])}


def _group_order(entry: tuple[str, Any]) -> tuple[int, str]:
    return _BAND_ORDER.get(entry[0], -1), entry[0]


def format_results(results: dict[str, Any]) -> str:
    """A table of accuracies with their intervals (and other metrics as they are)."""
    lines = [f"{'benchmark':<28} {'accuracy':>9} {'95% CI':>17} {'pairs':>6}  aggregation"]
    for name, entry in results.items():
        if isinstance(entry, BenchmarkResult):
            lines.append(f"{name:<28} {100 * entry.accuracy:>8.1f}% "
                         f"[{100 * entry.ci_low:5.1f}, {100 * entry.ci_high:5.1f}]% {entry.num_pairs:>6}  "
                         f"{entry.aggregation}" + (f" ({entry.num_items})" if entry.num_items is not None else ""))
            if 1 < len(entry.per_group) <= MAX_GROUPS_SHOWN:  # speakers, sWUGGY's frequency bands; not 67 phenomena
                for group, part in sorted(entry.per_group.items(), key=_group_order):
                    items = f"  ({part['num_items']})" if "num_items" in part else ""
                    lines.append(f"{'  ' + group:<28} {100 * part['accuracy']:>8.1f}% {'':>17} "
                                 f"{part['num_pairs']:>6}{items}")
            if entry.num_skipped:  # of the whole set (a subset, sWUGGY's in-vocab words, carries the set's count)
                lines.append(f"  {entry.num_skipped} pair(s) of the set skipped: the units of their audio are missing "
                             f"(unreadable or silent audio)")
            if entry.num_cut:
                lines.append(f"  {entry.num_cut} of {2 * entry.num_pairs} sides longer than the model's {entry.context} "
                             f"positions, {long_sides_note(entry.long_sides)}")
            if entry.without_baseline is not None:
                plain = entry.without_baseline
                lines.append(f"{'  (no baseline)':<28} {100 * plain['accuracy']:>8.1f}% "
                             f"[{100 * plain['ci_low']:5.1f}, {100 * plain['ci_high']:5.1f}]%")
        elif isinstance(entry, dict) and "speech_to_speech" in entry:  # generation (`generation_metrics`)
            for direction, key in (("S→S", "speech_to_speech"), ("S→T", "speech_to_text")):
                part = entry[key]
                lines.append(f"{name + ' ' + direction:<28} GenPPL {part['gen_ppl']:.2f}, Auto-BLEU2 "
                             f"{part['auto_bleu2']:.3f}, Self-BLEU2 {part['self_bleu2']:.3f}, "
                             f"{part['mean_words']:.1f} words")
            reference = entry["reference"]
            lines.append(f"{'  reference':<28} GenPPL {reference['resynthesised_real_speech']['gen_ppl']:.2f} real "
                         f"speech through the chain, {reference['real_text']['gen_ppl']:.2f} real text")
            lines.append(f"  {entry['num_prompts']} prompts; {entry['note']}")
        else:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()
                     if isinstance(v, (int, float, str)) or v is None}
            lines.append(f"{name:<28} {shown}")
    return "\n".join(lines)
