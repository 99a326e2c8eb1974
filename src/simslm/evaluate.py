"""Evaluation: pairwise likelihood benchmarks with bootstrap CIs, validation CE, generation.

A pair is right when the positive side's score beats the negative's, 0.5 on a tie
(design brief). The score is the mean token log-likelihood of the scored tokens (slamkit's
default) or their sum, optionally with speech tokens normalised over the unit vocabulary
alone. Accuracy comes with a bootstrap 95% CI, the number of pairs and the aggregation:
the mean over pairs, or the macro mean over phenomena as ZeroSpeech and Cuervo & Marxer
(2024) report sBLIMP. `simslm eval RUN --bench ...` writes `eval.json` into the run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from simslm import benchsets, jobs
from simslm.sequences import Vocabulary

SPECIAL_PART = -1  # BOS and modality markers: never scored


# --- scoring ----------------------------------------------------------------------------------


def encode_parts(parts: tuple[benchsets.Part, ...], vocabulary: Vocabulary,
                 units_of: Callable[[str], np.ndarray], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of one side of a pair and, per token, the index of its part (SPECIAL_PART for markers).

    A marker opens each change of modality, as in training. Consecutive speech parts are
    one recording cut in two, so a unit repeated across the cut is merged (deduplication).
    When the side is longer than the model's context, the oldest context tokens are dropped.
    """
    tokens: list[int] = [] if vocabulary.bos_id is None else [vocabulary.bos_id]
    owners: list[int] = [SPECIAL_PART] * len(tokens)
    previous = None
    for index, part in enumerate(parts):
        if part.modality == "speech":
            ids = (np.asarray(units_of(part.audio)) + vocabulary.unit_offset).tolist()
            if previous == "speech" and ids and tokens and ids[0] == tokens[-1]:
                ids = ids[1:]
        else:
            ids = vocabulary.tokenizer(part.text, add_special_tokens=False)["input_ids"]
        if part.modality != previous:
            tokens.append(vocabulary.speech_id if part.modality == "speech" else vocabulary.text_id)
            owners.append(SPECIAL_PART)
        tokens.extend(ids)
        owners.extend([index] * len(ids))
        previous = part.modality
    excess = len(tokens) - max_length
    if excess > 0:
        head = 2 if vocabulary.bos_id is not None else 1  # BOS and the first marker stay
        keep = np.r_[0:head, head + excess:len(tokens)]
        return np.asarray(tokens)[keep], np.asarray(owners)[keep]
    return np.asarray(tokens), np.asarray(owners)


def sequence_log_likelihoods(model, sequences: list[np.ndarray], scored: list[np.ndarray], *,
                             vocabulary: Vocabulary, speech_vocab: bool = False, batch_size: int = 16,
                             device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: the summed log-likelihood of its scored targets, and how many there are.

    `scored[i][t]` says whether token t + 1 of sequence i (predicted from tokens 0..t) counts.
    Sequences are sorted by length and padded on the right, so a batch wastes little and
    padding never precedes a real token (causal attention makes the results independent of
    the batch). With `speech_vocab`, a unit target is normalised over the unit tokens only.
    """
    import torch

    num = len(sequences)
    sums, counts = np.zeros(num), np.zeros(num)
    order = sorted(range(num), key=lambda i: -len(sequences[i]))
    low, high = vocabulary.unit_offset, vocabulary.unit_offset + vocabulary.num_units
    model.eval()
    with torch.no_grad():
        for start in range(0, num, batch_size):
            chosen = order[start:start + batch_size]
            length = len(sequences[chosen[0]])
            ids = torch.full((len(chosen), length), vocabulary.pad_id, dtype=torch.long)
            attention = torch.zeros((len(chosen), length), dtype=torch.long)
            mask = torch.zeros((len(chosen), length - 1), dtype=torch.bool)
            for row, i in enumerate(chosen):
                ids[row, :len(sequences[i])] = torch.from_numpy(sequences[i].astype(np.int64))
                attention[row, :len(sequences[i])] = 1
                mask[row, :len(sequences[i]) - 1] = torch.from_numpy(np.asarray(scored[i], dtype=bool))
            ids, attention, mask = ids.to(device), attention.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
            targets = ids[:, 1:]
            target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            normaliser = torch.logsumexp(logits, dim=-1)
            if speech_vocab:
                is_unit = (targets >= low) & (targets < high)
                normaliser = torch.where(is_unit, torch.logsumexp(logits[..., low:high], dim=-1), normaliser)
            log_likelihood = (target_logits - normaliser) * mask
            sums[chosen] = log_likelihood.sum(dim=1).double().cpu().numpy()
            counts[chosen] = mask.sum(dim=1).cpu().numpy()
    return sums, counts


def side_scores(sums: np.ndarray, counts: np.ndarray, reduction: str) -> np.ndarray:
    """Mean (slamkit's default) or sum of the scored token log-likelihoods."""
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / np.maximum(counts, 1)
    raise ValueError(f"reduction must be mean or sum, not '{reduction}'")


# --- accuracy and its interval ----------------------------------------------------------------


def pair_outcomes(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """1 when the positive scores higher, 0.5 on a tie, 0 otherwise."""
    return np.where(positive > negative, 1.0, np.where(positive == negative, 0.5, 0.0))


def accuracy_with_ci(outcomes: np.ndarray, groups: list[str] | None = None, *, aggregation: str = "pairs",
                     num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Accuracy, percentile-bootstrap CI and counts; `macro` averages the per-group accuracies.

    The macro bootstrap resamples pairs within each group (stratified), so every group
    keeps its size, as the per-phenomenon design of sBLIMP has it.
    """
    outcomes = np.asarray(outcomes, dtype=float)
    groups = list(groups) if groups is not None else ["all"] * len(outcomes)
    names = sorted(set(groups))
    members = {name: np.flatnonzero(np.asarray(groups) == name) for name in names}
    rng = np.random.default_rng(seed)
    if aggregation == "pairs":
        accuracy = float(outcomes.mean())
        draws = outcomes[rng.integers(0, len(outcomes), (num_resamples, len(outcomes)))].mean(axis=1)
    elif aggregation == "macro":
        accuracy = float(np.mean([outcomes[members[name]].mean() for name in names]))
        draws = np.mean([outcomes[members[name]][rng.integers(0, len(members[name]),
                                                              (num_resamples, len(members[name])))].mean(axis=1)
                         for name in names], axis=0)
    else:
        raise ValueError(f"aggregation must be pairs or macro, not '{aggregation}'")
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return {"accuracy": accuracy, "ci_low": float(low), "ci_high": float(high), "confidence": confidence,
            "num_pairs": int(len(outcomes)), "num_groups": len(names), "aggregation": aggregation,
            "num_resamples": num_resamples,
            "per_group": {name: {"accuracy": float(outcomes[members[name]].mean()),
                                 "num_pairs": int(len(members[name]))} for name in names}}


# --- units for benchmark audio ----------------------------------------------------------------


def run_units_folder(run_dir: Path) -> Path:
    """The `simslm units extract` folder whose codebook a run's speech tokens come from."""
    config = jobs.read_json(run_dir / "config.json")
    index = jobs.read_json(Path(config["data"]) / "index.json")
    units = index["config"].get("units")
    if not units:
        raise ValueError(f"{run_dir}: its training data has no speech units, so it cannot score speech")
    return Path(units)


def units_for_audio(paths: list[str], units_folder: Path, cache: Path, num_workers: int = 0
                    ) -> dict[str, np.ndarray]:
    """Deduplicated units of each audio file with the codebook (and encoder) of `units_folder`.

    Extraction goes through `units.extract_units` (parallel, resumable shard by shard) into
    a cache folder named by the codebook and the file list, so evaluating another run with
    the same codebook (every run of a sweep) does no work. Files that cannot be read are
    missing from the result.
    """
    from simslm import audio, units

    header = jobs.read_json(units_folder / "units.json")
    unique = sorted(set(paths))
    key = hashlib.sha256((header["codebook_sha256"] + "\n" + "\n".join(unique)).encode()).hexdigest()[:16]
    records = []
    for number, path in enumerate(unique):
        try:
            duration = audio.audio_info(path)[1]
        except audio.AudioError:
            duration = 0.0  # extraction reports the problem and skips the file
        records.append({"id": f"{number:07d}", "path": str(Path(path).resolve()), "duration_sec": duration})
    config = units.ExtractConfig(manifest=f"benchmark audio ({len(unique)} files)", codebook=header["codebook"],
                                 out=str(cache / key), model_path=header["encoder"].get("model_path"),
                                 num_workers=num_workers)
    units.extract_units(config, records=records)
    return {unique[int(u.id)]: u.units for u in units.read_units(cache / key)}


def units_lookup(pairs: list[benchsets.Pair], run_dir: Path, pre_extracted: str | None,
                 num_workers: int = 0) -> Callable[[str], np.ndarray]:
    """Audio path -> units: from a pre-extracted folder (keyed by file stem), else extracted now."""
    from simslm import units

    if pre_extracted:
        by_stem = {u.id: u.units for u in units.read_units(pre_extracted)}
        return lambda path: by_stem[Path(path).stem]
    paths = [part.audio for pair in pairs for part in pair.positive + pair.negative if part.audio]
    if not paths:
        return lambda path: np.empty(0, dtype=np.int32)
    return units_for_audio(paths, run_units_folder(run_dir), bench_units_cache(), num_workers).__getitem__


def bench_units_cache() -> Path:
    """Where benchmark units are cached: shared by every run that uses the same codebook."""
    from simslm import assets

    return assets.cache_dir() / "bench-units"


# --- scoring a benchmark ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScoringOptions:
    """How pairs are scored (recorded beside every accuracy)."""

    reduction: str = "mean"
    """mean (slamkit's default) or sum of the scored token log-likelihoods."""
    speech_vocab: bool = False
    """Normalise speech targets over the unit tokens only."""
    span: str = "auto"
    """Scored tokens: all, continuation (the last part: the ending), or auto (continuation when a
    side has a context part, else all)."""
    baseline: str = "none"
    """none, or no-context: subtract each ending's score without its context (context-conditional
    PMI), so that endings compete on what the context adds, not on how likely they are alone.
    Applies to items with a context part when the ending alone is scored."""
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, not '{self.baseline}'")


# A tSC ending's own likelihood varies far more between two sentences than a small model's
# context moves it (docs/LOG.md, 2026-11-29: 0.75 vs 0.05 nats per token), so the standard
# score compares the endings' priors. Scoring the ending with and without its context and
# keeping the difference is the domain-conditional PMI of Holtzman et al. (2021), "Surface
# Form Competition", which removes that prior; `none` is slamkit's score and the default.
BASELINES = ("none", "no-context")


def continuation_alone(tokens: np.ndarray, owners: np.ndarray, vocabulary: Vocabulary,
                       modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The last part of an encoded side on its own: BOS, its modality marker, its tokens."""
    last = owners.max()
    head = ([] if vocabulary.bos_id is None else [vocabulary.bos_id]) + \
        [vocabulary.speech_id if modality == "speech" else vocabulary.text_id]
    ending = tokens[owners == last]
    return (np.concatenate([np.asarray(head, dtype=tokens.dtype), ending]),
            np.concatenate([np.full(len(head), SPECIAL_PART), np.full(len(ending), last)]))


class PairScores(NamedTuple):
    """Scores of the pairs that could be encoded (with the baseline applied, when asked)."""

    positive: np.ndarray
    negative: np.ndarray
    groups: list[str]
    num_skipped: int
    without_baseline: tuple[np.ndarray, np.ndarray] | None
    """The same pairs' plain scores, when a baseline was subtracted from any (free: computed anyway)."""


def score_pairs(model, pairs: list[benchsets.Pair], vocabulary: Vocabulary, units_of: Callable[[str], np.ndarray],
                options: ScoringOptions, device: str = "cpu") -> PairScores:
    """Positive and negative scores of the pairs that can be encoded, their groups, and how many were skipped."""
    max_length = int(model.config.max_position_embeddings)
    sequences, scored, kept_groups, skipped = [], [], [], 0
    with_baseline = []  # per pair: whether its sides are also scored without their context
    for pair in pairs:
        try:
            sides = [encode_parts(side, vocabulary, units_of, max_length) for side in (pair.positive, pair.negative)]
        except KeyError:  # a file whose units could not be extracted: counted, not fatal
            skipped += 1
            continue
        continuation_only = options.span == "continuation" or (options.span == "auto" and len(pair.positive) > 1)
        baseline = options.baseline == "no-context" and continuation_only and len(pair.positive) > 1
        for tokens, owners in sides:
            wanted = owners == (len(pair.positive) - 1) if continuation_only else owners != SPECIAL_PART
            sequences.append(tokens)
            scored.append(wanted[1:])
        if baseline:
            for (tokens, owners), side in zip(sides, (pair.positive, pair.negative)):
                alone, alone_owners = continuation_alone(tokens, owners, vocabulary, side[-1].modality)
                sequences.append(alone)
                scored.append((alone_owners != SPECIAL_PART)[1:])
        with_baseline.append(baseline)
        kept_groups.append(pair.group)
    sums, counts = sequence_log_likelihoods(model, sequences, scored, vocabulary=vocabulary,
                                            speech_vocab=options.speech_vocab, batch_size=options.batch_size,
                                            device=device)
    scores = side_scores(sums, counts, options.reduction)
    plain, alone, cursor = np.zeros((len(kept_groups), 2)), np.zeros((len(kept_groups), 2)), 0
    for index, baseline in enumerate(with_baseline):
        plain[index] = scores[cursor:cursor + 2]
        if baseline:  # the same tokens scored alone: what the context adds
            alone[index] = scores[cursor + 2:cursor + 4]
        cursor += 4 if baseline else 2
    final = plain - alone
    return PairScores(final[:, 0], final[:, 1], kept_groups, skipped,
                      (plain[:, 0], plain[:, 1]) if any(with_baseline) else None)


# --- the eval command -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ScoringOptions):
    """What `simslm eval` does (with the scoring options it inherits)."""

    run: str
    """Run directory from `simslm train` (its model/ is evaluated; eval.json is written there)."""
    bench: tuple[str, ...]
    """Benchmark folders ([label=]path), `validation`, or `generation=PATH` (a cross-modal folder)."""
    aggregation: str = "auto"
    """pairs, macro, or auto (macro over phenomena for sBLIMP layouts, pairs otherwise)."""
    modes: str = "S,S2T,T2S,T"
    """Cross-modal pairings to score for cross-modal folders."""
    units: str | None = None
    """Pre-extracted units (`simslm units extract` folder keyed by audio file stem) instead of audio."""
    max_pairs: int | None = None
    """Score at most this many pairs per benchmark (a seeded sample), for quick looks."""
    num_resamples: int = 1000
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    generation_prompts: int = 16
    """generation: prompts to continue (from the benchmark's contexts)."""
    asr: str = "pocketsphinx"
    """generation: ASR for GenPPL (pocketsphinx offline; whisper with --asr-model PATH)."""
    asr_model: str | None = None
    judge: str = "stories260K"
    """generation: judge LM for GenPPL (an asset, HF folder or id, .bin or .gguf; e.g. Llama-3.2-1B)."""


def load_run_model(run_dir: Path, device: str):
    """The trained model of a run (fp32) and its vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    config = jobs.read_json(run_dir / "config.json")
    vocabulary = Vocabulary.load(Path(config["data"]) / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=torch.float32).to(device).eval()
    return model, vocabulary, config


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def evaluate_run(config: EvalConfig) -> dict[str, Any]:
    """Score every benchmark asked for and merge the results into `<run>/eval.json`."""
    run_dir = Path(config.run)
    device = _device(config.device)
    model, vocabulary, run_config = load_run_model(run_dir, device)
    results: dict[str, Any] = {}
    for bench in config.bench:
        label, _, path = bench.rpartition("=") if "=" in bench else (None, "", bench)
        if path == "validation":
            results["validation"] = validation_ce(model, vocabulary, run_config, device)
            continue
        if label == "generation":
            from simslm import generate

            options = generate.GenerationOptions(num_prompts=config.generation_prompts, asr=config.asr,
                                                 asr_model=config.asr_model, judge=config.judge)
            results["generation"] = generate.generation_metrics(model, vocabulary, Path(path), run_dir, device,
                                                                seed=config.seed, options=options)
            continue
        folder = Path(path)
        label = label or folder.name
        layout = benchsets.detect_layout(folder)
        modes = [m.strip() for m in config.modes.split(",")] if layout == "cross-modal" else [None]
        pairs_by_mode = {mode: _sample(benchsets.load(folder, mode)[1], config.max_pairs, config.seed)
                         for mode in modes}
        # One lookup for every mode: the modes share the folder's audio.
        units_of = units_lookup([pair for pairs in pairs_by_mode.values() for pair in pairs], run_dir,
                                config.units, config.num_workers)
        for mode, pairs in pairs_by_mode.items():
            started = time.perf_counter()
            scores = score_pairs(model, pairs, vocabulary, units_of, config, device)
            aggregation = config.aggregation if config.aggregation != "auto" else \
                ("macro" if layout == "slm21" else "pairs")
            interval = {"aggregation": aggregation, "num_resamples": config.num_resamples, "seed": config.seed}
            entry = accuracy_with_ci(pair_outcomes(scores.positive, scores.negative), scores.groups, **interval)
            if scores.without_baseline is not None:
                plain = accuracy_with_ci(pair_outcomes(*scores.without_baseline), scores.groups, **interval)
                entry["without_baseline"] = {key: plain[key] for key in ("accuracy", "ci_low", "ci_high")}
            entry.update({"layout": layout, "mode": mode, "folder": str(folder.resolve()),
                          "num_skipped": scores.num_skipped,
                          "scoring": {**{f: getattr(config, f) for f in ("reduction", "speech_vocab", "span")},
                                      # as applied: none where no item has a context to remove
                                      "baseline": config.baseline if scores.without_baseline is not None
                                      else "none"},
                          "wall_sec": round(time.perf_counter() - started, 3),
                          "note": _bench_note(folder)})
            results[f"{label}/{mode}" if mode else label] = entry
    eval_path = run_dir / "eval.json"
    merged = jobs.read_json(eval_path) if eval_path.exists() else {"benchmarks": {}}
    merged["benchmarks"].update(results)
    merged["model_dir"] = str(run_dir / "model")
    jobs.write_json(eval_path, merged)
    return results


def _sample(pairs: list[benchsets.Pair], max_pairs: int | None, seed: int) -> list[benchsets.Pair]:
    """At most `max_pairs` of the pairs, a seeded sample in their original order."""
    if not max_pairs or len(pairs) <= max_pairs:
        return pairs
    chosen = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
    return [pairs[i] for i in sorted(chosen)]


def _bench_note(folder: Path) -> str | None:
    meta = folder / benchsets.BENCH_FILE
    return json.loads(meta.read_text()).get("note") if meta.exists() else None


def validation_ce(model, vocabulary: Vocabulary, run_config: dict[str, Any], device: str) -> dict[str, Any]:
    """Cross-entropy per modality on the run's held-out sequences (the paper's speech loss is `loss_speech`)."""
    from simslm.train import evaluate_modalities

    if not run_config.get("validation_data"):
        raise ValueError(f"run {run_config['run_dir']} has no validation_data; train with validation_data=FOLDER")
    losses = evaluate_modalities(model, run_config["validation_data"], vocabulary, run_config["batch_size"],
                                 run_config.get("validation_batches", 16), device)
    return {**losses, "data": run_config["validation_data"]}


def format_results(results: dict[str, Any]) -> str:
    """A table of accuracies with their intervals (and other metrics as they are)."""
    lines = [f"{'benchmark':<28} {'accuracy':>9} {'95% CI':>17} {'pairs':>6}  aggregation"]
    for name, entry in results.items():
        if "accuracy" in entry:
            lines.append(f"{name:<28} {100 * entry['accuracy']:>8.1f}% "
                         f"[{100 * entry['ci_low']:5.1f}, {100 * entry['ci_high']:5.1f}]% {entry['num_pairs']:>6}  "
                         f"{entry['aggregation']}")
            if "without_baseline" in entry:
                plain = entry["without_baseline"]
                lines.append(f"{'  (no baseline)':<28} {100 * plain['accuracy']:>8.1f}% "
                             f"[{100 * plain['ci_low']:5.1f}, {100 * plain['ci_high']:5.1f}]%")
        else:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()
                     if isinstance(v, (int, float, str)) or v is None}
            lines.append(f"{name:<28} {shown}")
    return "\n".join(lines)
