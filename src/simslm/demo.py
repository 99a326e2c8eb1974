"""`simslm demo`: the whole offline scaling study from nothing, in one resumable command.

Synthesise speech for training stories, fit and extract `logmel` units, pretrain the
text-LM size family (the TWIST sources), build interleaved, textless and validation
sequences and held-out benchmarks, run a small isoFLOP sweep in three variants
(interleaved + TWIST, interleaved + random init, textless + TWIST), evaluate, fit and
report. Every stage is skipped when its output exists, so a killed demo continues where
it stopped. Stories are split by line of the TinyStories sample: training text and
speech come from lines [0, 2000), the benchmark from [2000, 2100), validation from
[2100, 2160); no benchmark item is a training story.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from simslm import jobs
from simslm.config import Config, ConfigError, check_positive
from simslm.eval.benchbuild import BenchBuildConfig, build_benchmark
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.units.extract import ExtractConfig, FitConfig, extract_units, fit_codebook

TRAIN_STORIES, BENCH_STORIES, VALIDATION_STORIES = "[:2000]", "[2000:2100]", "[2100:2160]"


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    """What `simslm demo` does (defaults take ~12 minutes on 2 CPU cores; docs/BENCHMARKS.md)."""

    out: str = "out/demo"
    """Folder for everything the demo makes (resumes when it exists)."""
    corpus: str = "tinystories-sample"
    """Text corpus (asset or file): training speech, benchmark and validation stories come from disjoint lines."""
    num_stories: int = 800
    """Training stories to synthesise (of the first 2000 lines)."""
    num_units: int = 200
    """k of the logmel k-means (the paper's mHuBERT tokenizer has 500)."""
    depths: tuple[int, ...] = (1, 2, 3)
    """Size-family depths of the sweep (width = 32 x depth)."""
    budgets_flops: tuple[float, ...] = (1.5e11, 4e11, 1e12)
    """isoFLOP budgets (C = 6ND) of the sweep."""
    text_tokens_per_parameter: float = 10.0
    """Pretraining tokens per parameter for the text-LM family (half Chinchilla's 20, to fit the time)."""
    context_length: int = 256
    """Tokens per packed sequence."""
    batch_size: int = 8
    """Sequences per training step."""
    num_tsc_items: int = 100
    """Items of the offline spoken tSC."""
    sblimp_per_phenomenon: int = 2
    """Pairs per BLiMP phenomenon of the offline sBLIMP."""
    num_resamples: int = 1000
    """Bootstrap resamples for the fits."""
    seed: int = 0
    """Seed of every stage."""

    renamed: ClassVar[dict[str, str]] = {"tsc_items": "num_tsc_items"}

    def check(self) -> None:
        check_positive(self, "num_stories", "num_units", "text_tokens_per_parameter", "context_length",
                       "batch_size", "num_tsc_items", "sblimp_per_phenomenon", "num_resamples")
        if not self.depths or not self.budgets_flops:
            raise ConfigError("--depths and --budgets-flops need at least one value each")
        for depth in self.depths:
            if depth < 1:
                raise ConfigError(f"--depths must be positive, not {depth}")
        for budget in self.budgets_flops:
            if not 0 < budget < float("inf"):
                raise ConfigError(f"--budgets-flops must be finite and positive, not {budget}")


def _stage(out: Path, name: str, timings: dict[str, float], work: Callable[[], Any]) -> None:
    """Run one stage unless its marker exists; record its wall time."""
    marker = out / "stages" / f"{name}.json"
    if marker.exists():
        timings[name] = jobs.read_json(marker)["wall_sec"]
        print(f"[demo] {name}: done earlier ({timings[name]:.0f} s)", flush=True)
        return
    print(f"[demo] {name} ...", flush=True)
    started = time.perf_counter()
    work()
    timings[name] = round(time.perf_counter() - started, 2)
    jobs.write_json(marker, {"wall_sec": timings[name]})
    print(f"[demo] {name}: {timings[name]:.0f} s", flush=True)


def run_demo(config: DemoConfig) -> str:
    """Run every stage (skipping finished ones) and return the closing summary."""
    from simslm.scaling import report, sweep
    from simslm.speech import synth
    from simslm.textlm import TextLMConfig, family_tokenizer, pretrain_family

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs.write_json(out / "demo_config.json", asdict(config))
    timings: dict[str, float] = {}
    train_text = f"{config.corpus}{TRAIN_STORIES}"
    codebook = out / "units" / f"logmel{config.num_units}.npy"

    def synthesise():
        synth.synthesize_corpus(synth.SynthConfig(out=str(out / "speech"), corpus=train_text,
                                                  limit=config.num_stories, seed=config.seed))
        synth.synthesize_corpus(synth.SynthConfig(out=str(out / "validation_speech"),
                                                  corpus=f"{config.corpus}{VALIDATION_STORIES}", seed=config.seed))

    def extract():
        fit_codebook(FitConfig(manifest=str(out / "speech" / "manifest.jsonl"), out=str(codebook.with_suffix("")),
                                           num_units=config.num_units, seed=config.seed))
        for name in ("speech", "validation_speech"):
            extract_units(ExtractConfig(manifest=str(out / name / "manifest.jsonl"), codebook=str(codebook),
                                                    out=str(out / "units" / name)))

    def pretrain():
        pretrain_family(TextLMConfig(out=str(out / "textlm"), text_corpus=train_text, depths=config.depths,
                                     tokens_per_parameter=config.text_tokens_per_parameter,
                                     context_length=config.context_length, seed=config.seed))

    def build():
        # The family's tokenizer (tok512 plus the markers its members trained), not the bare base one:
        # units then come after the family's rows, and TWIST keeps every pretrained row as what it was.
        common = {"context_length": config.context_length, "seed": config.seed, "overwrite": True,
                  "tokenizer": str(family_tokenizer(out / "textlm"))}
        speech = {"manifest": str(out / "speech" / "manifest.jsonl"), "units": str(out / "units" / "speech")}
        # The paper mixes text-only, interleaved and speech-only data by sample ratios chosen so
        # that each stream gives the same number of tokens (slamkit's train_inter_scale.yaml):
        # mix_by="tokens" computes those ratios from the data.
        build_sequences(BuildConfig(out=str(out / "sequences" / "interleaved"), **speech, mix_by="tokens",
                                    text_corpus=train_text, num_epochs=2, **common))
        build_sequences(BuildConfig(out=str(out / "sequences" / "textless"), **speech,
                                                        streams=("speech",), **common))
        build_sequences(BuildConfig(
            out=str(out / "sequences" / "validation"), manifest=str(out / "validation_speech" / "manifest.jsonl"),
            units=str(out / "units" / "validation_speech"), streams=("speech",), **common))

    def benchmarks():
        excluded = f"{out / 'speech' / 'manifest.jsonl'},{train_text}"
        build_benchmark(BenchBuildConfig(
            kind="tsc", out=str(out / "bench" / "tsc"), source=f"{config.corpus}{BENCH_STORIES}", exclude=excluded,
            num_items=config.num_tsc_items, voices="single", seed=config.seed))
        build_benchmark(BenchBuildConfig(
            kind="sblimp", out=str(out / "bench" / "sblimp"), per_phenomenon=config.sblimp_per_phenomenon,
            voices="single", seed=config.seed))

    def plan_and_run():
        spec = sweep.SweepSpec(
            variants=(sweep.Variant(name="interleaved-twist", data=str(out / "sequences" / "interleaved")),
                      sweep.Variant(name="interleaved-random", data=str(out / "sequences" / "interleaved"),
                                    init="random"),
                      sweep.Variant(name="textless-twist", data=str(out / "sequences" / "textless"))),
            depths=config.depths, budgets_flops=config.budgets_flops,
            family=str(out / "textlm"), validation_data=str(out / "sequences" / "validation"),
            bench=(f"tsc={out / 'bench' / 'tsc'}", f"sblimp={out / 'bench' / 'sblimp'}"), eval_modes=("S", "T"),
            train={"batch_size": config.batch_size, "checkpoint_every": 100, "num_validation_batches": 8,
                   "seed": config.seed})
        sweep.plan_sweep(spec, out / "sweep")
        # Two single-thread runs at once beat one two-thread run on this machine (docs/BENCHMARKS.md).
        sweep.run_sweep(out / "sweep", executor="local", num_parallel=2, threads_per_run=1)

    def fit():
        sweep.fit_sweep(out / "sweep", num_resamples=config.num_resamples, num_workers=2, seed=config.seed)

    for name, work in (("synthesise", synthesise), ("units", extract), ("textlm", pretrain), ("sequences", build),
                       ("benchmarks", benchmarks), ("sweep", plan_and_run), ("fit", fit)):
        _stage(out, name, timings, work)
    summary = summarise(out / "sweep", timings)
    report_started = time.perf_counter()
    page = report.write_report(out / "sweep", summary=summary)
    timings["report"] = round(time.perf_counter() - report_started, 2)
    jobs.write_json(out / "demo.json", {"timings_sec": timings, "total_sec": round(sum(timings.values()), 2),
                                        "report": os.path.relpath(page, out)})
    return summary + f"\nreport: {page}"


def summarise(sweep_dir: Path, timings: dict[str, float]) -> str:
    """Plain statements of whether the paper's two findings hold at this scale, with the numbers."""
    from simslm.scaling import sweep

    rows = sweep.collect(sweep_dir)
    fits = jobs.read_json(sweep_dir / "fit.json")["variants"]
    lines = [f"simslm demo: {len(rows)} runs, {sum(timings.values()) / 60:.1f} min of stages "
             f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})"]
    best = sweep.best_runs(rows)
    budgets = sorted({b for _, b in best})
    wins = [b for b in budgets if ("interleaved-twist", b) in best and ("textless-twist", b) in best
            and best[("interleaved-twist", b)]["loss_speech"] < best[("textless-twist", b)]["loss_speech"]]
    lines.append("Best speech CE per budget (validation): " + "; ".join(
        f"C={b:.1e}: " + ", ".join(f"{v} {best[(v, b)]['loss_speech']:.3f}" for v in
                                   ("interleaved-twist", "textless-twist", "interleaved-random") if (v, b) in best)
        for b in budgets))
    verdict = "holds" if len(wins) == len(budgets) else ("does not hold" if not wins else "holds only in part")
    lines.append(f"Finding 1, interleaved + TWIST beats textless per FLOP: {verdict} here "
                 f"(lower speech CE at {len(wins)} of {len(budgets)} budgets).")
    main = fits.get("interleaved-twist")
    if main:
        approach3 = main["approach3"]
        low, high = approach3["ci_a"]
        smallest = min(row["parameters"] for row in rows)
        at_edge = [b for b in budgets if best.get(("interleaved-twist", b), {}).get("parameters") == smallest]
        if approach3.get("degenerate"):
            allocation = f"cannot be judged (the parametric fit is degenerate: {'; '.join(approach3['degenerate'])})"
        elif at_edge:
            allocation = (f"cannot be judged (the smallest model is the best at {len(at_edge)} of {len(budgets)} "
                          f"budgets, so the grid does not bracket the optimum and the exponents extrapolate)")
        else:
            allocation = ("holds" if low > 0.5 else "does not hold" if high < 0.5 else
                          "is not resolved (the interval includes 0.5)")
        approach3_a = "" if approach3.get("degenerate") else f"a = {approach3['a']:.3f} [{low:.3f}, {high:.3f}], "
        second = main["approach2"]
        second_ci = f" [{second['ci_a'][0]:.3f}, {second['ci_a'][1]:.3f}]" if second.get("ci_a") else ""
        lines.append(f"Finding 2, compute-optimal allocation leans to model size (a > b, i.e. a > 0.5): {allocation} "
                     f"here: {approach3_a}approach 2 a = {second['a']:.3f}{second_ci}, approach 1 a = "
                     f"{main['approach1']['a']:.3f}.")
    accuracies = [(row, name, result) for row in rows for name, result in row["accuracies"].items()
                  if name.startswith("tsc/S")]
    if accuracies:
        row, name, result = max(accuracies, key=lambda item: item[2].accuracy)
        lines.append(f"Best spoken tSC ({name}): {100 * result.accuracy:.1f}% [{100 * result.ci_low:.1f}, "
                     f"{100 * result.ci_high:.1f}] by {row['id']} (chance 50%; an offline re-creation, "
                     f"not the published set).")
    lines.append("At this scale (models of 0.03-0.4M parameters, minutes of CPU) these are smoke-test answers, "
                 "not evidence about the paper's regime.")
    return "\n".join(lines)
