"""`simslm demo`: the whole offline scaling study from nothing, in one resumable command.

Synthesise speech for training stories, fit and extract `logmel` units, pretrain the
text-LM size family (the TWIST sources), build interleaved, textless and validation
sequences and held-out benchmarks, run a small isoFLOP sweep in three variants
(interleaved + TWIST, interleaved + random init, textless + TWIST), evaluate, fit and
report. Every stage is skipped when its output exists, so a killed demo continues where
it stopped; a finished stage whose options changed runs again where that adds to what is there
(more seeds, budgets or depths) and is refused where it would replace it (`stale_stages`).

Stories are split by line of the TinyStories sample: training speech comes from lines
[0, num_stories), the text-LM family's text from [num_stories, 2000) (disjoint from the
speech, as the paper's text LMs never saw its speech corpora), the interleaved data's text
stream from [0, 2000), the benchmark from [2000, 2100), validation from [2100, 2160); no
benchmark item is a training story.

The defaults make a bracketed study (docs/LOG.md, 2026-11-30): a family of width 16 x depth
(15k-250k parameters, 2.1-3.1x apart), SLM runs at a learning rate and batch size for such tiny
models (slamkit's lr 5e-4 with the old demo's 2,048 tokens a step left the larger ones step-starved, so the
smallest won at every budget), unit rows drawn around the text rows rather than all at their
mean, and budgets at which every variant's best size is interior. One run per cell leaves the random-init
variant's best size to chance between depths 1 and 2 at the lowest budgets; where depth 1 wins, bracketing adds
depth 1 at half its width (d1w8) to that cell alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from simslm import machine, storage
from simslm import model as model_lib
from simslm.config import Config, ConfigError, check_positive
from simslm.eval.benchbuild import BenchBuildConfig, build_benchmark
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.units.extract import ExtractConfig, extract_units
from simslm.units.fit import FitConfig, fit_codebook

TRAIN_STORIES, BENCH_STORIES, VALIDATION_STORIES = "[:2000]", "[2000:2100]", "[2100:2160]"


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    """What `simslm demo` does (the defaults take 10 to 28 minutes on 2 CPU cores, depending on the CPU;
    docs/BENCHMARKS.md)."""

    out: str = "out/demo"
    """Folder for everything the demo makes (resumes when it exists)."""
    corpus: str = "tinystories-sample"
    """Text corpus (asset or file): training speech, benchmark and validation stories come from disjoint lines."""
    num_stories: int = 800
    """Training stories to synthesise (of the first 2000 lines; the text-LM family reads the rest)."""
    num_units: int = 200
    """k of the logmel k-means (the paper's mHuBERT tokenizer has 500)."""
    depths: tuple[int, ...] = (1, 2, 3, 4)
    """Size-family depths of the sweep (width = aspect_ratio x depth)."""
    aspect_ratio: int = 16
    """Width per layer of the family: 16 gives sizes 2.1-3.1x apart at depths 1-4 (32: 2.2-4.2x)."""
    budgets_flops: tuple[float, ...] = (1.25e11, 2e11, 3.2e11, 5e11)
    """isoFLOP budgets (C = 6ND) of the sweep."""
    text_tokens_per_parameter: float = 10.0
    """Pretraining tokens per parameter for the text-LM family (half Chinchilla's 20, to fit the time)."""
    context_length: int = 256
    """Tokens per packed sequence."""
    batch_size: int = 2
    """Sequences per SLM training step: 512 tokens, so that the largest size still takes hundreds of steps."""
    batching: Literal["rows", "pieces"] = "rows"
    """A step's batch_size: rows of the context, or documents as slamkit batches them (`train --batching pieces`;
    on the demo's data 0.82x the tokens a step, so a budget takes more steps: docs/LOG.md, 2026-12-05)."""
    lr: float = 6e-3
    """Peak SLM learning rate (cosine to a tenth): tiny models want more than slamkit's 5e-4 (docs/LOG.md)."""
    new_rows: Literal["mean", "normal"] = "normal"
    """How TWIST initialises the unit rows. slamkit's `mean` makes them all the same vector, a symmetry that a
    few hundred steps do not break in the larger sizes (they sat on the unigram plateau, docs/LOG.md); `normal`
    draws each row from the text rows' mean and spread."""
    bracket: bool = True
    """Grow the grid past its edge where a budget's best size sits on it (`sweep run --bracket`)."""
    num_tsc_items: int = 100
    """Items of the offline spoken tSC."""
    sblimp_per_phenomenon: int = 2
    """Pairs per BLiMP phenomenon of the offline sBLIMP."""
    num_swuggy_items: int = 100
    """Words of the offline sWUGGY, each with a non-word: words of the corpus's stories, their frequencies counted
    in the training text (lines [0, 2000); the held-out stories' other words are out of vocabulary)."""
    num_resamples: int = 1000
    """Bootstrap resamples for the fits."""
    seed: int = 0
    """Seed of every stage."""
    seeds: int = 1
    """Training runs per cell of the sweep, at seeds seed, seed + 1, ... With 2 or more, the best size per budget
    is the one of lowest mean speech CE and finding 1's intervals hold the spread between training runs too;
    each multiplies the sweep's time. One run per cell shows the validation sample's noise only; 2 leave Welch's t
    1-2 degrees of freedom, so wide that they resolve little; 3 is the least that does (docs/BENCHMARKS.md). On a
    finished demo, more seeds train only the new seeds' runs."""

    renamed: ClassVar[dict[str, str]] = {"tsc_items": "num_tsc_items"}

    def check(self) -> None:
        check_positive(self, "num_stories", "num_units", "aspect_ratio", "text_tokens_per_parameter", "seeds",
                       "context_length", "batch_size", "lr", "num_tsc_items", "sblimp_per_phenomenon", "num_swuggy_items",
                       "num_resamples")
        if problem := model_lib.aspect_ratio_problem(self.aspect_ratio):
            raise ConfigError(f"--aspect-ratio {problem}")
        if self.num_stories >= 2000:
            raise ConfigError(f"--num-stories must be below 2000 (the family's text is lines [num_stories, 2000)), "
                              f"not {self.num_stories}")
        if not self.depths or not self.budgets_flops:
            raise ConfigError("--depths and --budgets-flops need at least one value each")
        for depth in self.depths:
            if depth < 1:
                raise ConfigError(f"--depths must be positive, not {depth}")
        for budget in self.budgets_flops:
            if not 0 < budget < float("inf"):
                raise ConfigError(f"--budgets-flops must be finite and positive, not {budget}")


# The options each stage's output depends on, its upstream stages' included. A finished stage whose options
# changed since it ran is stale. Only the sweep's own options, the family's depths and the fit's resamples may
# change in an existing folder: those stages add to what is there (new runs and members, whose folders are named
# by their content, so finished ones are kept) or recompute from it. Every other stage rewrites its outputs, so a
# change to its options is refused rather than silently ignored or half-applied.
_SOURCE = ("corpus", "num_stories", "seed")
_FAMILY = (*_SOURCE, "depths", "aspect_ratio", "text_tokens_per_parameter", "context_length")
_SEQUENCES = (*_SOURCE, "num_units", "context_length")
_BENCHMARKS = (*_SOURCE, "num_tsc_items", "sblimp_per_phenomenon")
# sWUGGY is a stage of its own (2026-12-06): a folder whose benchmarks stage finished before it builds it then.
_SWUGGY = (*_SOURCE, "num_swuggy_items")
_SWEEP = tuple(dict.fromkeys((*_FAMILY, *_SEQUENCES, *_BENCHMARKS, *_SWUGGY, "budgets_flops", "batch_size",
                              "batching", "lr", "new_rows", "bracket", "seeds")))
STAGE_OPTIONS: dict[str, tuple[str, ...]] = {
    "synthesise": _SOURCE, "units": (*_SOURCE, "num_units"), "textlm": _FAMILY, "sequences": _SEQUENCES,
    "benchmarks": _BENCHMARKS, "swuggy": _SWUGGY, "sweep": _SWEEP, "fit": (*_SWEEP, "num_resamples")}
CHANGEABLE = frozenset({"depths", "budgets_flops", "batch_size", "batching", "lr", "new_rows", "bracket", "seeds",
                        "num_resamples"})


def _options(config: DemoConfig, stage: str) -> dict[str, Any]:
    """The options `stage` depends on, as JSON stores them (tuples as lists)."""
    return json.loads(json.dumps({name: getattr(config, name) for name in STAGE_OPTIONS[stage]}))


def _option(name: str, value: Any) -> str:
    """An option as it is typed: --seeds 3, --depths 1 2 3, --no-bracket."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else flag.replace("--", "--no-", 1)
    values = value if isinstance(value, list) else [value]
    return " ".join([flag, *(format(v, "g") if isinstance(v, float) else str(v) for v in values)])


def stale_stages(out: Path, config: DemoConfig) -> dict[str, dict[str, tuple[Any, Any]]]:
    """The finished stages of `out` that `config` would change: stage -> option -> (made with, asked for).

    A stage's marker records the options it ran with; a marker from before it did falls back to
    demo_config.json, the options of the last call on the folder. An option the folder predates counts as
    its present default. Raises ValueError when a stage that rewrites its outputs would change."""
    made = storage.read_json(out / "demo_config.json") if (out / "demo_config.json").exists() else None
    defaults = json.loads(json.dumps(asdict(DemoConfig(out=config.out))))
    stale: dict[str, dict[str, tuple[Any, Any]]] = {}
    for stage in STAGE_OPTIONS:
        marker = out / "stages" / f"{stage}.json"
        if not marker.exists():
            continue
        record = storage.read_json(marker)
        if not isinstance(record, dict) or not isinstance(record.get("wall_sec"), (int, float)):
            raise ValueError(f"{marker}: not a record of a finished stage (a JSON object with wall_sec)")
        recorded = record.get("options", made)
        if recorded is None:
            continue  # a folder from before demo_config.json: nothing to compare with
        if not isinstance(recorded, dict):
            raise ValueError(f"{marker if 'options' in record else out / 'demo_config.json'}: not a record of "
                             f"the demo's options (a JSON object of option: value)")
        asked = _options(config, stage)
        changes = {name: (recorded.get(name, defaults[name]), value) for name, value in asked.items()
                   if recorded.get(name, defaults[name]) != value}
        if changes:
            stale[stage] = changes
    refused = {name: change for changes in stale.values() for name, change in changes.items()
               if name not in CHANGEABLE}
    if refused:
        name, (before, now) = next(iter(refused.items()))
        stages = [stage for stage, changes in stale.items() if name in changes]
        raise ValueError(f"{out}: made with {_option(name, before)}, not {_option(name, now)}; that changes its "
                         f"{', '.join(stages)} stage{'s' if len(stages) > 1 else ''}, whose outputs would be "
                         f"replaced: use a new --out, or the options it was made with")
    return stale


def _stage(out: Path, name: str, config: DemoConfig, timings: dict[str, float], work: Callable[[], Any]) -> None:
    """Run one stage unless its marker exists; record its wall time and the options it ran with."""
    marker = out / "stages" / f"{name}.json"
    if marker.exists():
        timings[name] = storage.read_json(marker)["wall_sec"]
        print(f"[demo] {name}: done earlier ({timings[name]:.0f} s)", flush=True)
        return
    print(f"[demo] {name} ...", flush=True)
    started = time.perf_counter()
    work()
    timings[name] = round(time.perf_counter() - started, 2)
    storage.write_json(marker, {"wall_sec": timings[name], "options": _options(config, name)})
    print(f"[demo] {name}: {timings[name]:.0f} s", flush=True)


# What only a demo folder holds: the options of its last call, its stage markers, its timings.
DEMO_MARKERS = ("demo_config.json", "stages", "demo.json")


def run_demo(config: DemoConfig) -> str:
    """Run every stage (skipping finished ones) and return the closing summary."""
    from simslm.scaling import collect, execute, report, sweep
    from simslm.speech import synth
    from simslm.textlm import TextLMConfig, family_tokenizer, pretrain_family

    out = Path(config.out)
    if out.is_dir() and any(out.iterdir()) and not any((out / name).exists() for name in DEMO_MARKERS):
        # The demo writes speech/, units/, sweep/, ... and resumes from what it finds: beside someone else's
        # files it could mix with them, or take a folder of the same name for its own.
        raise ValueError(f"{out}: not empty, and not a demo folder (no {', '.join(DEMO_MARKERS)}); give a new or "
                         f"empty folder to --out, or a demo's to continue it")
    out.mkdir(parents=True, exist_ok=True)
    stale = stale_stages(out, config)
    if stale:
        changes = {name: change for changes in stale.values() for name, change in changes.items()}
        print(f"[demo] {', '.join(stale)}: made with " + ", ".join(
            f"{_option(name, before)} (now {_option(name, now)})" for name, (before, now) in changes.items()) +
              "; running again, keeping the finished runs and family members of the same settings", flush=True)
    for stage in stale:
        # The markers go first: a call killed from here on runs these stages again, with whatever options it has.
        (out / "stages" / f"{stage}.json").unlink()
    storage.write_json(out / "demo_config.json", asdict(config))
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
        family_text = f"{config.corpus}[{config.num_stories}:2000]"
        pretrain_family(TextLMConfig(out=str(out / "textlm"), text_corpus=family_text, depths=config.depths,
                                     aspect_ratio=config.aspect_ratio,
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

    def evaluated_again(stage: str) -> None:
        """A benchmark built after the sweep (a stage new to a folder from before it, or one whose output was
        removed): the sweep and fit run again, and the sweep scores its runs on the benchmarks they hold no result
        of the folder now there for (`ledger.unevaluated`); no run is trained again."""
        finished = [name for name in ("sweep", "fit") if (out / "stages" / f"{name}.json").exists()]
        for name in finished:
            (out / "stages" / f"{name}.json").unlink()
        if finished:
            print(f"[demo] {stage}: built after the sweep; {' and '.join(finished)} run again to evaluate its runs "
                  f"on it (no run is trained again)", flush=True)

    def benchmarks():
        excluded = f"{out / 'speech' / 'manifest.jsonl'},{train_text}"
        build_benchmark(BenchBuildConfig(
            kind="tsc", out=str(out / "bench" / "tsc"), source=f"{config.corpus}{BENCH_STORIES}", exclude=excluded,
            num_items=config.num_tsc_items, voices="single", seed=config.seed))
        build_benchmark(BenchBuildConfig(
            kind="sblimp", out=str(out / "bench" / "sblimp"), per_phenomenon=config.sblimp_per_phenomenon,
            voices="single", seed=config.seed))
        evaluated_again("benchmarks")

    def swuggy():
        # Words of every story, counted in the training text, as ZeroSpeech's are in LibriSpeech: the held-out
        # stories' words it lacks make the out-of-vocabulary band.
        build_benchmark(BenchBuildConfig(
            kind="swuggy", out=str(out / "bench" / "swuggy"), source=config.corpus,
            counted_in=train_text, num_items=config.num_swuggy_items, voices="single",
            seed=config.seed))
        evaluated_again("swuggy")

    def plan_and_run():
        spec = sweep_spec(config)
        sweep.plan_sweep(spec, out / "sweep")
        # A one-thread run per core (the executor's own rule; one at a time on a GPU): two one-thread runs at once
        # beat one two-thread run on 2 cores (docs/BENCHMARKS.md), and a run's numbers do not depend on how many
        # run beside it.
        execute.run_sweep(out / "sweep", executor="local", num_parallel=execute.runs_at_once(0), threads_per_run=1,
                          bracket=config.bracket)

    def fit():
        collect.fit_sweep(out / "sweep", num_resamples=config.num_resamples, num_workers=machine.default_workers(),
                          seed=config.seed)

    for name, work in (("synthesise", synthesise), ("units", extract), ("textlm", pretrain), ("sequences", build),
                       ("benchmarks", benchmarks), ("swuggy", swuggy), ("sweep", plan_and_run), ("fit", fit)):
        _stage(out, name, config, timings, work)
    summary = summarise(out / "sweep", timings)
    report_started = time.perf_counter()
    page = report.write_report(out / "sweep", summary=summary)
    timings["report"] = round(time.perf_counter() - report_started, 2)
    storage.write_json(out / "demo.json", {"timings_sec": timings, "total_sec": round(sum(timings.values()), 2),
                                           "report": os.path.relpath(page, out)})
    return summary + f"\nreport: {page}"


def sweep_spec(config: DemoConfig):
    """The demo's sweep: three variants over the family's depths and the budgets, evaluated on the benchmarks,
    one run per cell at `seed` or, with `seeds` > 1, one per seed from `seed` on."""
    from simslm.scaling import sweep

    out = Path(config.out)
    replicated = config.seeds > 1
    return sweep.SweepSpec(
        variants=(sweep.Variant(name="interleaved-twist", data=str(out / "sequences" / "interleaved")),
                  sweep.Variant(name="interleaved-random", data=str(out / "sequences" / "interleaved"), init="random"),
                  sweep.Variant(name="textless-twist", data=str(out / "sequences" / "textless"))),
        depths=config.depths, budgets_flops=config.budgets_flops,
        family=str(out / "textlm"), validation_data=str(out / "sequences" / "validation"),
        bench=(f"tsc={out / 'bench' / 'tsc'}", f"sblimp={out / 'bench' / 'sblimp'}",
               f"swuggy={out / 'bench' / 'swuggy'}"), eval_modes=("S", "T"),
        train={"batch_size": config.batch_size, "batching": config.batching, "lr": config.lr, "lr_min": config.lr / 10,
               "new_rows": config.new_rows, "checkpoint_every": 500, "num_validation_batches": 64,
               **({} if replicated else {"seed": config.seed})},
        seeds=tuple(range(config.seed, config.seed + config.seeds)) if replicated else ())


def finding_one(best: dict[tuple[str, float], dict[str, Any]], budgets: list[float]) -> list[str]:
    """Finding 1 judged with uncertainty: per budget, the best interleaved + TWIST cell minus the best textless
    one (`collect.best_runs`), in validation speech CE (`collect.cell_difference`: the validation batches' paired
    bootstrap, plus the spread between training runs when the cells have replicates) and in every benchmark
    accuracy (`collect.cell_accuracy_difference`: the paired bootstrap over items, plus the same spread); then one
    sentence on what holds. A difference counts only when its 95% interval excludes zero."""
    from simslm.scaling import collect

    lines, lower, higher, unknown = [], [], [], []
    benchmark_verdicts: dict[str, list[int]] = {}
    for budget in budgets:
        first, second = best.get(("interleaved-twist", budget)), best.get(("textless-twist", budget))
        if first is None or second is None:
            continue
        loss = collect.cell_difference(first, second)
        if loss is None:
            unknown.append(budget)
            text = (f"speech CE {first['loss_speech'] - second['loss_speech']:+.3f} (no per-batch losses "
                    f"stored: no interval)")
        else:
            (lower if loss[2] < 0 else higher if loss[1] > 0 else unknown).append(budget)
            text = f"speech CE {loss[0]:+.3f} [{loss[1]:+.3f}, {loss[2]:+.3f}]"
        for name in sorted(set(first["accuracies"]) & set(second["accuracies"])):
            difference = collect.cell_accuracy_difference(first, second, name)
            if difference is None:
                continue
            text += f"; {name} {100 * difference[0]:+.1f} [{100 * difference[1]:+.1f}, {100 * difference[2]:+.1f}] pp"
            verdicts = benchmark_verdicts.setdefault(name, [0, 0, 0])
            verdicts[0 if difference[1] > 0 else 1 if difference[2] < 0 else 2] += 1
        lines.append(f"  C={budget:.3g}: interleaved + TWIST minus textless ({first['member']} vs {second['member']}): "
                     f"{text}")
    judged = len(lower) + len(higher) + len(unknown)
    if not judged:
        return ["Finding 1, interleaved + TWIST beats textless per FLOP: cannot be judged (a variant is missing)."]
    if len(lower) == judged:
        verdict = "holds"
    elif len(higher) == judged:
        verdict = "is reversed (textless is better)"
    elif not lower:
        verdict = "is not shown"
    else:
        verdict = "holds only in part"
    resolved = [f"{name} better at {right}, worse at {wrong}" for name, (right, wrong, _) in
                sorted(benchmark_verdicts.items()) if right or wrong]
    benches = ("; on the benchmarks: " + ", ".join(resolved) + " of the budgets (else within noise)" if resolved else
               "; no benchmark difference is resolved (every interval includes 0)" if benchmark_verdicts else "")
    runs = min(len(cell.get("replicates", [cell])) for cell in best.values())
    intervals = ("95% paired-bootstrap intervals over validation batches, best run of each variant per budget; "
                 "one training run per cell, so the spread between runs is not in them (--seeds 3 adds it)"
                 if runs == 1 else
                 f"95% intervals over validation batches and {runs}+ training runs per cell, best size of each "
                 f"variant per budget by mean speech CE" +
                 ("; with 2 runs a cell Welch's t has 1-2 degrees of freedom, so they are wide (--seeds 3 or more "
                  "narrows them)" if runs == 2 else ""))
    header = (f"Finding 1, interleaved + TWIST beats textless per FLOP: {verdict} here: lower speech CE at "
              f"{len(lower)} of {judged} budgets, higher at {len(higher)}, within noise at {len(unknown)} "
              f"({intervals}){benches}.")
    return [header, *lines]


def bracketing(sweep_dir: Path, found: list[dict[str, Any]], num_cells: int) -> str:
    """Whether each (variant, budget)'s best size lies inside the grid, naming the cells where it does not
    (`found`, from `bracket.edges`) and why the grid could not grow there (bracket.json): their isoFLOP minimum
    may lie outside the sizes run."""
    from simslm.scaling import bracket

    if not found:
        return f"Bracketing: the best size is inside the grid in all {num_cells} (variant, budget) cells."
    record = sweep_dir / bracket.BRACKET_FILE
    reasons = {(edge["variant"], edge["budget"]): edge.get("reason") for edge in
               (storage.read_json(record).get("unbracketed", []) if record.exists() else [])}
    cells = []
    for edge in found:
        reason = reasons.get((edge["variant"], edge["budget"]))
        cells.append(f"{edge['variant']} at C={edge['budget']:.3g} (best {edge['member']}, the grid's "
                     f"{'smallest' if edge['needs'] == 'smaller' else 'largest'}" + (f"; {reason}" if reason else "") + ")")
    return (f"Bracketing: the best size is at the grid's edge in {len(found)} of {num_cells} (variant, budget) "
            f"cells, so their isoFLOP minimum may lie outside the sizes run: {'; '.join(cells)}.")


def finding_two(fit: dict[str, Any], num_at_edge: int, num_budgets: int, runs_per_cell: int) -> str:
    """Whether interleaved + TWIST's compute-optimal exponent a exceeds 0.5 (the paper's finding 2), from its
    fit.json entry; `num_at_edge` of `num_budgets` budgets have their best size at the grid's edge."""
    approach3 = fit["approach3"]
    low, high = approach3["ci_a"]
    if approach3.get("degenerate"):
        allocation = f"cannot be judged (the parametric fit is degenerate: {'; '.join(approach3['degenerate'])}"
        if runs_per_cell == 1:
            # On an Intel Xeon the default demo's single runs left the N term undetermined; a second seed per cell
            # determined it (docs/LOG.md, 2026-12-05).
            allocation += ("; a second training run per cell (--seeds 2, which trains only the new runs) may "
                           "determine it")
        allocation += ")"
    elif num_at_edge:
        allocation = (f"cannot be judged (the best size is the grid's smallest or largest at {num_at_edge} of "
                      f"{num_budgets} budgets, so the grid does not bracket the optimum and the exponents "
                      f"extrapolate)")
    else:
        allocation = ("holds" if low > 0.5 else "does not hold" if high < 0.5 else
                      "is not resolved (the interval includes 0.5)")
    approach3_a = "" if approach3.get("degenerate") else f"a = {approach3['a']:.3f} [{low:.3f}, {high:.3f}], "
    second = fit["approach2"]
    second_ci = f" [{second['ci_a'][0]:.3f}, {second['ci_a'][1]:.3f}]" if second.get("ci_a") else ""
    first_a = (f"a = {fit['approach1']['a']:.3f}" if math.isfinite(fit["approach1"]["a"]) else
               "n/a (one size is the best at nearly every compute, or the best runs span too little of it)")
    agreement = ""
    if second.get("ci_a") and not approach3.get("degenerate"):
        overlap = second["ci_a"][0] <= high and low <= second["ci_a"][1]
        agreement = (" Approaches 2 and 3 agree within their 95% intervals." if overlap else
                     " Approaches 2 and 3 disagree: their 95% intervals do not overlap.")
    return (f"Finding 2, compute-optimal allocation leans to model size (a > b, i.e. a > 0.5): {allocation} "
            f"here: {approach3_a}approach 2 a = {second['a']:.3f}{second_ci}, approach 1 {first_a}.{agreement}")


def summarise(sweep_dir: Path, timings: dict[str, float]) -> str:
    """Plain statements of whether the paper's two findings hold at this scale, with the numbers."""
    from simslm.eval.evaluate import long_sides_note
    from simslm.scaling import bracket, collect

    rows = collect.collect(sweep_dir)
    fits = storage.read_json(sweep_dir / "fit.json")["variants"]
    lines = [f"simslm demo: {len(rows)} runs, {sum(timings.values()) / 60:.1f} min of stages "
             f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})"]
    best = collect.best_runs(rows)
    budgets = sorted({b for _, b in best})
    lines.append("Best speech CE per budget (validation): " + "; ".join(
        f"C={b:.3g}: " + ", ".join(f"{v} {best[(v, b)]['loss_speech']:.3f}" for v in
                                   ("interleaved-twist", "textless-twist", "interleaved-random") if (v, b) in best)
        for b in budgets))
    found = bracket.edges(rows)
    lines.append(bracketing(sweep_dir, found, len(best)))
    lines += finding_one(best, budgets)
    main = fits.get("interleaved-twist")
    if main:
        at_edge = {edge["budget"] for edge in found if edge["variant"] == "interleaved-twist"}
        runs_per_cell = max(Counter((row["budget"], row["member"]) for row in rows
                                    if row["variant"] == "interleaved-twist").values())
        lines.append(finding_two(main, len(at_edge), len(budgets), runs_per_cell))
    # Cells, not runs: with replicates, the best cell's mean accuracy, not the luckiest seed's.
    accuracies = [(row, name, result) for row in collect.cells(rows) for name, result in row["accuracies"].items()
                  if name.startswith("tsc/S")]
    if accuracies:
        row, name, result = max(accuracies, key=lambda item: item[2].accuracy)
        # A replicated cell's mean is a plain Accuracy, without the count of cut sides.
        cut = getattr(result, "num_cut", 0)
        cut = (f" {cut} of its {2 * result.num_pairs} sides were longer than the model's {result.context} positions, "
               f"{long_sides_note(result.long_sides)}." if cut else "")
        lines.append(f"Best spoken tSC ({name}): {100 * result.accuracy:.1f}% [{100 * result.ci_low:.1f}, "
                     f"{100 * result.ci_high:.1f}] by {row['id']} (chance 50%; an offline re-creation, "
                     f"not the published set).{cut}")
    sizes = sorted(row["parameters"] for row in rows)
    lines.append(f"At this scale (models of {sizes[0] / 1e6:.3f}-{sizes[-1] / 1e6:.2f}M parameters, minutes of CPU) "
                 "these are smoke-test answers, "
                 "not evidence about the paper's regime.")
    return "\n".join(lines)
