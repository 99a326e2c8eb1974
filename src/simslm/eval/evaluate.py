"""`simslm eval`: score a trained run on benchmark folders, validation data and generation.

Each benchmark folder's layout is recognised (`layouts`), its audio turned into the run's
units (`bench_units`), its pairs scored (`scoring`); results merge into `<run>/eval.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import jobs
from simslm.eval.bench_units import units_lookup
from simslm.eval.generation import GenerationOptions, generation_metrics
from simslm.eval.layouts import BENCH_FILE, Pair, detect_layout, load
from simslm.eval.scoring import ScoringOptions, accuracy_with_ci, pair_outcomes, score_pairs
from simslm.sequences.vocabulary import Vocabulary

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

            options = GenerationOptions(num_prompts=config.generation_prompts, asr=config.asr,
                                                 asr_model=config.asr_model, judge=config.judge)
            results["generation"] = generation_metrics(model, vocabulary, Path(path), run_dir, device,
                                                                seed=config.seed, options=options)
            continue
        folder = Path(path)
        label = label or folder.name
        layout = detect_layout(folder)
        modes = [m.strip() for m in config.modes.split(",")] if layout == "cross-modal" else [None]
        pairs_by_mode = {mode: _sample(load(folder, mode)[1], config.max_pairs, config.seed)
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


def _sample(pairs: list[Pair], max_pairs: int | None, seed: int) -> list[Pair]:
    """At most `max_pairs` of the pairs, a seeded sample in their original order."""
    if not max_pairs or len(pairs) <= max_pairs:
        return pairs
    chosen = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
    return [pairs[i] for i in sorted(chosen)]


def _bench_note(folder: Path) -> str | None:
    meta = folder / BENCH_FILE
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
