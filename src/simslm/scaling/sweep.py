"""Sweeps: a grid of runs over model sizes, a ledger read from the run directories, executors, bracketing.

`plan_sweep` turns a spec (sizes as real model families or simslm's depths; an isoFLOP or
tokens-per-parameter grid; variants) into `sweep.json`: one TrainConfig per (variant, size,
grid point), each with a run id hashed from its content, so a changed setting is a new run
and an unchanged one is recognised as already done. The ledger is the run directories
themselves: a run is finished when its `result.json` (written last and atomically by
`train`) and its `eval.json` exist, so a half-written result is never read and a finished
run is never repeated. A run in progress holds an exclusive lock on `<run>/.lock`
(released by the OS when its process dies), so a restarted sweep neither duplicates it nor
waits on a dead one.

Executors register by name: `local` runs several runs at once, each a process of its own: a
fork of a server that has done the imports once (on a machine without CUDA; a script that
calls `run_sweep` then needs multiprocessing's `if __name__ == "__main__":` guard), or else a
new interpreter (torchrun when a run has several processes, placed on GPUs when given).
`slurm` submits a job array through submitit (its `local` cluster runs the same code without
SLURM, which is how it is tested here). `extend_to_bracket` grows the grid until each
budget's best size is inside it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import numpy as np

from simslm import assets, jobs
from simslm import model as model_lib
from simslm.config import (
    Config,
    ConfigError,
    check_not_input,
    check_output_file,
    check_positive,
    home_expanded,
    registry_choices,
)
from simslm.eval.evaluate import benchmark_kind, long_sides_note, read_results, repeated_label, result_label
from simslm.eval.layouts import BENCH_FILE, CROSS_MODES, HUB_DATASET, bench_digest, detect_layout
from simslm.eval.scoring import Accuracy, ScoringOptions, accuracy_draws, accuracy_with_ci
from simslm.scaling.fit import TABLE_COLUMNS, fit_all, percentile_interval, points_from_rows, read_table
from simslm.sequences.build import speech_units_folder
from simslm.sequences.loader import index_digest
from simslm.sequences.vocabulary import Vocabulary, load_base_tokenizer, speech_vocabulary
from simslm.train.build import another_tokenizer, uses_bf16
from simslm.train.loop import validation_mismatch, validation_overlap
from simslm.train.metrics import loss_curve, training_progress
from simslm.train.peak import PEAK_FLOPS_BF16_VARIABLE, PEAK_FLOPS_VARIABLE, measure_peak_flops
from simslm.train.plan import OFF_BUDGET, RUN_LOCK, RunResult, TrainConfig

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One recipe of the sweep: its training data and initialisation."""

    name: str
    data: str | dict[str, str]
    """Sequences folder (interleaved + speech + text, or speech only for a textless variant); with several
    families, a folder per family name, each built with that family's tokenizer."""
    init: str = "twist"
    """twist: start from the family member's weights; random: same architecture from scratch."""

    def data_for(self, family: str) -> str:
        if isinstance(self.data, str):
            return self.data
        if family not in self.data:
            raise ValueError(f"variant {self.name} names no data for family {family} (it has "
                             f"{', '.join(self.data) or 'none'})")
        return self.data[family]


@dataclass(frozen=True)
class Member:
    """One size of the grid: a base model of a family."""

    family: str
    label: str
    """Short name in run ids: d3 for a `simslm textlm` depth, else the model's own name (Qwen2.5-0.5B)."""
    twist_source: str | None
    """The pretrained model TWIST starts from (None: the spec has no pretrained family)."""
    random_source: str
    """The same architecture, to start from scratch (`family:N` for a `simslm textlm` depth)."""
    depth: int | None = None


def _model_label(model: str) -> str:
    """A run-id-safe name of a model: the hub id's name, or a folder's (its parent's when it is `model`)."""
    path = Path(model.rstrip("/"))
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).stem if path.suffix in (".gguf", ".bin") else name)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """What `simslm sweep plan` reads (JSON)."""

    variants: tuple[Variant, ...]
    budgets_flops: tuple[float, ...] = ()
    """An isoFLOP grid: the training compute of each run, C = 6 N D."""
    tokens_per_parameter: tuple[float, ...] = ()
    """Or a tokens-per-parameter grid: each size trained on r N tokens for each r (N after the vocabulary
    grows)."""
    families: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The sizes as real base models: family name -> its models (HF ids or folders, .gguf, llama2.c .bin),
    e.g. {"qwen2.5": ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B"]}. Several families compare families (the
    paper's Qwen2.5 vs Llama-3.2 vs SmolLM2). Instead of depths."""
    depths: tuple[int, ...] = ()
    """Or the sizes as depths of simslm's own family (width = 32 x depth, or the aspect ratio `family` was
    pretrained with): of `family` when given."""
    family: str = ""
    """Folder from `simslm textlm pretrain` (its depth-N/model is the TWIST source); '' = random only."""
    cell_sizes: tuple[dict[str, Any], ...] = ()
    """Sizes of `depths`' family run in single isoFLOP cells only, not the whole grid: {"variant": name,
    "budget_flops": C, "size": "d1w8"}. Bracketing adds them below depth 1 (`extend_to_bracket`)."""
    bracket_models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Models held back per family for `sweep run --bracket`: one joins the grid only when a budget's best run
    sits at the family's edge on its side (smaller or larger than every member)."""
    validation_data: str | dict[str, str] = ""
    """Speech-only held-out sequences: the loss the fits use (the paper's speech CE); per family name when the
    families have different tokenizers."""
    bench: tuple[str, ...] = ()
    """Benchmarks each run is evaluated on after training (as `simslm eval --bench`)."""
    eval_modes: tuple[str, ...] = ("S", "T")
    """Cross-modal modes each run is evaluated in."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields shared by every run (batch_size, lr, ...)."""
    seeds: tuple[int, ...] = ()
    """Replicates: every (variant, size, grid point) trained once per seed (a run's seed sets its data order,
    new unit rows and random init). With two or more, a cell is the mean of its runs, and `cell_difference`'s
    intervals hold the spread between training runs, which one run per cell cannot show. Empty: one run per
    cell, at train's seed."""

    def __post_init__(self) -> None:
        """Refuse a grid that cannot run, before anything is planned."""
        if not self.variants:
            raise ValueError("the spec needs at least one variant")
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must differ, got {names}")
        for variant in self.variants:
            if variant.init not in ("twist", "random"):
                raise ValueError(f"variant {variant.name}: init must be twist or random, not '{variant.init}'")
        if bool(self.families) == bool(self.depths):
            raise ValueError("give the sizes as families (lists of models) or as depths, one of the two")
        if self.depths and not all(isinstance(d, int) and d >= 1 for d in self.depths):
            raise ValueError(f"depths must be whole numbers >= 1, not {list(self.depths)}")
        for name, models in self.families.items():
            if not models or not all(isinstance(model, str) and model for model in models):
                raise ValueError(f"family {name} must list its models (hub ids or paths)")
        # A size or grid point given twice planned its runs twice under one id: the fit counted each twice.
        for name, values in [("depths", self.depths), ("budgets_flops", self.budgets_flops),
                             ("tokens_per_parameter", self.tokens_per_parameter),
                             *((f"family {family}", models) for family, models in self.families.items())]:
            repeated = sorted(str(value) for value, count in collections.Counter(values).items() if count > 1)
            if repeated:
                raise ValueError(f"{name} lists {', '.join(repeated)} more than once")
        if self.families and self.family:
            raise ValueError("family (a `simslm textlm` folder) goes with depths, not with families")
        unknown = set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"train: unknown option(s) {', '.join(sorted(unknown))} (TrainConfig fields)")
        if bool(self.budgets_flops) == bool(self.tokens_per_parameter):
            raise ValueError("give the grid as budgets_flops (isoFLOP) or as tokens_per_parameter, one of the two")
        for name in ("budgets_flops", "tokens_per_parameter"):
            if not all(isinstance(b, (int, float)) and 0 < b < float("inf") for b in getattr(self, name)):
                raise ValueError(f"{name} must be finite numbers > 0, not {list(getattr(self, name))}")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds) or \
                len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct whole numbers >= 0, not {list(self.seeds)}")
        if self.seeds and "seed" in self.train:
            raise ValueError("give the runs' seed as seeds (replicates) or as train.seed, not both")
        for cell in self.cell_sizes:
            if not isinstance(cell, dict) or set(cell) != {"variant", "budget_flops", "size"}:
                raise ValueError(f"a cell size is {{\"variant\", \"budget_flops\", \"size\"}}, not {json.dumps(cell)}")
            if not self.depths:
                raise ValueError("cell_sizes go with depths (sizes of simslm's family)")
            if cell["variant"] not in names or cell["budget_flops"] not in self.budgets_flops:
                raise ValueError(f"cell size {json.dumps(cell)}: no such variant or budget in the grid")
            model_lib.parse_member_label(cell["size"])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SweepSpec":
        if not isinstance(data, dict):
            raise ValueError("a sweep spec is a JSON object")
        data = _home_paths(data)
        missing = [key for key in ("variants",) if key not in data]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(missing)}")
        values = dict(data)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown sweep spec key(s): {', '.join(sorted(unknown))}")
        # Lists first, each named when it is not one: the variants' TypeError below would blame a variant.
        for key in ("depths", "budgets_flops", "tokens_per_parameter", "bench", "eval_modes", "seeds", "cell_sizes"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list, not {json.dumps(values[key])}")
                values[key] = tuple(values[key])
        for key in ("families", "bracket_models"):
            if key in values:
                if not isinstance(values[key], dict) or not all(isinstance(models, (list, tuple))
                                                                for models in values[key].values()):
                    raise ValueError(f"{key} must map each family name to a list of models, not "
                                     f"{json.dumps(values[key])}")
                values[key] = {name: tuple(models) for name, models in values[key].items()}
        try:
            values["variants"] = tuple(Variant(**v) for v in data["variants"])
        except TypeError as error:
            raise ValueError(f"a variant is a JSON object with name, data and optionally init ({error})") from None
        return cls(**values)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SweepSpec":
        """A spec from its JSON file; a ValueError naming the file when it is not one."""
        try:
            return cls.from_json(jobs.read_json(path))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such sweep spec") from None
        except ValueError as error:
            message = str(error)
            raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None


    def members(self) -> list[Member]:
        """The sizes of the grid, family by family."""
        if self.families:
            return [Member(family=name, label=_model_label(model), twist_source=model, random_source=model)
                    for name, models in self.families.items() for model in models]
        return [self.depth_member(depth) for depth in self.depths]

    def depth_member(self, depth: int, width: int | None = None) -> Member:
        """A size of `depths`' family: a depth, or depth 1 at a narrower `width`."""
        from simslm.textlm import family_aspect_ratio, member_folder

        # Depth 1 of width W is the family's architecture at aspect ratio W.
        ratio = width or family_aspect_ratio(self.family)
        return Member(family=Path(self.family).name if self.family else "family",
                      label=model_lib.member_label(depth, width), depth=depth,
                      random_source=model_lib.family_source(depth, ratio),
                      twist_source=str(Path(self.family) / member_folder(depth, width) / "model") if self.family
                      else None)

    def validation_for(self, family: str) -> str:
        if isinstance(self.validation_data, str):
            return self.validation_data
        return self.validation_data.get(family, "")


def run_id(variant: str, label: str, grid_point: str, config: dict[str, Any], family: str = "") -> str:
    """Readable prefix plus a hash of everything that defines the run (run_dir excluded, and fields added since
    at their default: `TrainConfig.hashed_unless`)."""
    content = json.dumps({k: v for k, v in config.items() if k != "run_dir" and not
                          (k in TrainConfig.hashed_unless and v == TrainConfig.hashed_unless[k])}, sort_keys=True)
    prefix = f"{family}-{label}-{variant}" if family else f"{variant}-{label}"
    return f"{prefix}-{grid_point}-{hashlib.sha256(content.encode()).hexdigest()[:8]}"


def _home_paths(value: Any) -> Any:
    """A spec's strings with a leading `~` as the home folder's path (`config.home_expanded`), at any depth."""
    if isinstance(value, str):
        return home_expanded(value)
    if isinstance(value, dict):
        return {key: _home_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_home_paths(item) for item in value)
    return value


class _Anchors:
    """Paths a sweep reads (data, family, benchmarks), written relative to the sweep folder, so that a sweep
    moved or copied together with them keeps working, and absolute, so that one copied alone does too.

    sweep.json keeps the map relative -> absolute under "anchors"; `placed` reads a value back."""

    def __init__(self, folder: Path, anchors: dict[str, str] | None = None):
        self.folder, self.anchors = folder, dict(anchors or {})

    def anchored(self, value: str | None) -> str | None:
        """`value` relative to the sweep folder when it names an existing file or folder, else as given (a hub
        id, `family:N`)."""
        if not value or not Path(value).exists():
            return value
        relative = os.path.relpath(Path(value).resolve(), self.folder.resolve())
        self.anchors[relative] = str(Path(value).resolve())
        return relative

    def placed(self, value: str | None) -> str | None:
        if value not in self.anchors:
            return value
        here = (self.folder / value).resolve()  # absolute: a run's config.json must not depend on the cwd
        return str(here) if here.exists() else self.anchors[value]

    def bench(self, entries: tuple[str, ...] | list[str], convert: Callable[[str | None], str | None]) -> list[str]:
        """`label=path` (or `path`) entries with their paths converted."""
        return [f"{entry.split('=', 1)[0]}={convert(entry.split('=', 1)[1])}" if "=" in entry else convert(entry)
                for entry in entries]


def _check_benchmarks(spec: dict[str, Any]) -> None:
    """Refuse, before any run trains, what would fail every run's evaluation after its training: a benchmark
    folder that is not there or not a benchmark, `validation` with no validation data, a mode no layout has.
    A published set named by hub id is left to its first evaluation, which downloads it. `spec`: a SweepSpec's
    fields, or sweep.json's spec (its paths placed)."""
    unknown = [mode for mode in spec.get("eval_modes") or () if mode not in CROSS_MODES]
    if unknown:
        raise ValueError(f"eval_modes: {', '.join(map(str, unknown))} (the modes are {', '.join(CROSS_MODES)})")
    if repeated := repeated_label(spec.get("bench") or ()):
        raise ValueError(f"bench: {repeated}")
    for argument in spec.get("bench") or ():
        kind, _, target = benchmark_kind(argument)
        if kind == "validation":
            if not spec.get("validation_data"):
                raise ValueError("bench names validation, but the spec has no validation_data")
        elif not Path(target).exists():
            if kind != "pairs" or not HUB_DATASET.fullmatch(target):
                raise ValueError(f"{target}: benchmark folder does not exist (bench: {argument})")
        elif kind == "pairs":
            detect_layout(Path(target))


def _check_base_model(base_model: str, data: str, checked: set[tuple[str, str]]) -> None:
    """Refuse at planning what every run of a base model would fail on at its start: a hub model that cannot be had
    here, or data built with another tokenizer than a local model's (the check `train` makes, before any run).
    `checked` holds the pairs already found sound."""
    if (base_model, data) in checked:
        return
    if problem := assets.hub_model_problem(base_model) or model_lib.local_model_problem(base_model):
        raise ValueError(problem)
    local = Path(base_model).expanduser().exists() or base_model in assets.REGISTRY
    if local and not base_model.endswith(".bin"):  # a llama2.c .bin carries no tokenizer: its runs check its rows
        if (extended := speech_vocabulary(base_model)) is not None:  # a speech LM trained on: its whole vocabulary
            problem = Vocabulary.load(Path(data) / "tokenizer").mismatch(extended)
        else:
            try:
                tokenizer = load_base_tokenizer(base_model)
            except ValueError:
                tokenizer = None  # a model folder without one: its runs compare its embedding rows
            problem = tokenizer and Vocabulary.load(Path(data) / "tokenizer").base_mismatch(tokenizer)
        if problem:
            raise ValueError(another_tokenizer(data, base_model, problem))
    checked.add((base_model, data))


def _mixed_codebooks(spec: SweepSpec, families: set[str]) -> list[str]:
    """A warning for each family whose variants read units of different codebooks: their speech CEs are then
    losses over other tokens, which the report and the demo's findings compare as if they were the same."""
    from simslm.units.extract import unit_source

    warnings = []
    for family in sorted(families):
        digests: dict[str, list[str]] = collections.defaultdict(list)
        for variant in spec.variants:
            units = speech_units_folder(variant.data_for(family))
            if units is not None and (units / "units.json").is_file():
                digests[unit_source(units).codebook_sha256 or ""].append(variant.name)
        if len(digests) > 1:
            groups = "; ".join(", ".join(names) for names in digests.values())
            warnings.append(f"{'family ' + family + ': ' if len(families) > 1 else ''}variants read units of different "
                            f"codebooks ({groups}): their speech CEs are losses over other tokens, not comparable")
    return warnings


SWEEP_LOCK = ".sweep.lock"


def _growing(sweep_dir: Path):
    """Hold the sweep's lock for a change of sweep.json (read, grown, written), waiting for another process's: two
    `sweep run --bracket` of one sweep (on two machines, say) each grew the grid from what it had read, and the
    later write dropped the other's sizes from sweep.json while that process trained their runs."""
    return jobs.exclusive_lock_waiting(sweep_dir / SWEEP_LOCK,
                                       f"{sweep_dir}: another process is planning or growing this sweep; waiting")


def plan_sweep(spec: SweepSpec, out: str | os.PathLike) -> dict[str, Any]:
    """Write `sweep.json`: the grid of run configs (existing runs with the same content keep their ids)."""
    out = Path(out)  # made once the grid is planned: a spec refused leaves no folder behind
    with _growing(out) if (out / SWEEP_FILE).exists() else contextlib.nullcontext():
        return _plan_sweep(spec, out)


def _plan_sweep(spec: SweepSpec, out: Path) -> dict[str, Any]:
    anchors = _Anchors(out)
    members = spec.members()
    several = len({member.family for member in members}) > 1
    overlaps: list[str] = []
    for family in {member.family for member in members}:
        for variant in spec.variants:
            if not (Path(variant.data_for(family)) / "index.json").exists():
                raise ValueError(f"{variant.data_for(family)}: no index.json (variant {variant.name} needs a "
                                 f"`simslm sequences build` folder)")
        validation = spec.validation_for(family)
        if validation and not (Path(validation) / "index.json").exists():
            raise ValueError(f"{validation}: no index.json (validation_data needs a `simslm sequences build` "
                             f"folder)")
        for variant in spec.variants if validation else ():  # said once planned, not only in each run's log
            if problem := validation_mismatch(variant.data_for(family), validation):
                raise ValueError(f"{validation}: {problem} (validation_data of variant {variant.name})")
            if overlap := validation_overlap(variant.data_for(family), validation):
                overlaps.append(f"validation_data {validation} {overlap} (variant {variant.name})")
    mixed = _mixed_codebooks(spec, {member.family for member in members})
    _check_benchmarks(asdict(spec))
    runs = []
    grid = [_budget_point(b) for b in spec.budgets_flops] + \
        [(None, float(r), f"t{r:g}") for r in spec.tokens_per_parameter]
    # Every size at every grid point, then the sizes of single cells (a grid size named again there runs once).
    by_name = {variant.name: variant for variant in spec.variants}
    planned = [(variant, member, grid) for variant in spec.variants for member in members] + \
        [(by_name[cell["variant"]], spec.depth_member(*model_lib.parse_member_label(cell["size"])),
          [_budget_point(cell["budget_flops"])]) for cell in spec.cell_sizes
         if cell["size"] not in {member.label for member in members}]
    checked: set[tuple[str, str]] = set()  # (base model, data) pairs found sound
    for variant, member, points in planned:
        if variant.init == "twist":
            if member.twist_source is None:
                raise ValueError(f"variant {variant.name} uses TWIST but the spec names no text-LM family")
            if member.depth is not None and not Path(member.twist_source).exists():
                family_dir = Path(member.twist_source).parents[1]  # FAMILY/depth-N/model
                if not (family_dir / "family.json").is_file():  # said as "FAMILY.jsonl/depth-1/model does not exist"
                    raise ValueError(f"{family_dir}: not a text-LM family (no family.json; `simslm textlm pretrain` "
                                     f"makes one)")
                raise ValueError(f"{member.twist_source} does not exist: the family has no member "
                                 f"{member.label}")
            base_model = member.twist_source
        else:
            base_model = member.random_source
        if assets.missing_local_path(base_model):
            raise ValueError(f"{base_model}: no such model (family {member.family})")
        _check_base_model(base_model, variant.data_for(member.family), checked)
        # No seeds: one run per cell, its id as before replicates existed (finished sweeps stay done).
        replicates = [({"seed": seed}, f"-s{seed}") for seed in spec.seeds] or [({}, "")]
        for (budget, ratio, grid_point), (seed, suffix) in itertools.product(points, replicates):
            # Paths relative to the sweep folder: the run ids do not depend on where `sweep plan` ran.
            values = {**spec.train, **seed, "data": anchors.anchored(variant.data_for(member.family)),
                      "base_model": anchors.anchored(base_model), "init": variant.init,
                      "budget_flops": budget, "budget_tokens": None, "budget_tokens_per_parameter": ratio,
                      "validation_data": anchors.anchored(spec.validation_for(member.family)) or None}
            config = asdict(TrainConfig(run_dir="", **values))
            named = functools.partial(run_id, variant.name, member.label, config=config,
                                      family=member.family if several else "")
            identifier = named(grid_point + suffix)
            # The same run under its other name, if that is the one on disk: a sweep given seeds later keeps
            # its one run per cell as that seed's run (same content, same hash), and the other way round.
            other = named(grid_point + ("" if suffix else f"-s{config['seed']}"))
            if not (out / "runs" / identifier).exists() and (out / "runs" / other).is_dir():
                identifier = other
            config["run_dir"] = f"runs/{identifier}"  # relative to the sweep folder: see load_sweep
            runs.append({"id": identifier, "variant": f"{member.family}/{variant.name}" if several else
                         variant.name, "family": member.family, "member": member.label, "depth": member.depth,
                         "budget_flops": budget, "tokens_per_parameter": ratio, "config": config})
    repeated = sorted(identifier for identifier, count in collections.Counter(run["id"] for run in runs).items()
                      if count > 1)
    if repeated:  # one model under two spellings of its path, say: the same runs planned twice
        raise ValueError(f"the spec plans the same run more than once ({', '.join(repeated[:3])}): a model listed twice "
                         f"under two spellings of its path?")
    stored_spec = _jsonable(asdict(spec))
    stored_spec.update(family=anchors.anchored(spec.family), validation_data=_paths(spec.validation_data, anchors.anchored),
                       bench=anchors.bench(spec.bench, anchors.anchored),
                       families={name: [anchors.anchored(model) for model in models]
                                 for name, models in spec.families.items()},
                       bracket_models={name: [anchors.anchored(model) for model in models]
                                       for name, models in spec.bracket_models.items()})
    for variant in stored_spec["variants"]:
        variant["data"] = _paths(variant["data"], anchors.anchored)
    # What each data folder and each TWIST source was when planned: runs trained and runs to come must see the
    # same sequences and start from the same weights.
    digests: dict[str, dict[str, str]] = {}
    for key, shared in _PLANNED_INPUTS.items():
        paths = sorted({run["config"][field] for run in runs for field in shared.fields
                        if run["config"][field] and shared.applies(run["config"])})
        found = {path: shared.digest(anchors.placed(path)) for path in paths}
        digests[key] = {path: digest for path, digest in found.items() if digest is not None}
    if (out / SWEEP_FILE).exists():
        earlier = load_sweep(out)
        _check_inputs_unchanged(earlier, {key: {anchors.placed(path): digest for path, digest in found.items()}
                                          for key, found in digests.items()})
        planned = {run["id"] for run in runs}
        left = [run["id"] for run in earlier["runs"] if run["id"] not in planned]
        if left:  # a spec of other sizes or budgets over a sweep: its runs so far leave sweep.json (not their folders)
            print(f"simslm sweep plan: warning: {out}: {len(left)} run(s) planned there before are not in this plan "
                  f"({', '.join(left[:3])}{', ...' if len(left) > 3 else ''}); `sweep status`, `fit` and `report` "
                  f"leave them out, and their folders stay under runs/ for a plan that holds them again",
                  file=sys.stderr)
    for overlap in overlaps:
        print(f"simslm sweep plan: warning: {overlap}: its losses are not held out, though the fits read them as "
              f"held-out curves", file=sys.stderr)
    for warning in mixed:
        print(f"simslm sweep plan: warning: {warning}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    jobs.write_json(out / SWEEP_FILE, {"spec": stored_spec, "runs": runs, "anchors": anchors.anchors, **digests})
    return load_sweep(out)


class _SharedInput(NamedTuple):
    """An input many runs of a sweep share, whose digest sweep.json keeps (under its key in `_PLANNED_INPUTS`)."""

    fields: tuple[str, ...]  # the run config's fields that name it
    applies: Callable[[dict[str, Any]], bool]  # whether a run's config depends on its contents
    digest: Callable[[str], str | None]  # None: not there (a hub id; a folder gone, for its run to report)
    changed: str  # what it means when the digest changed


_PLANNED_INPUTS = {
    "data_sha256": _SharedInput(
        ("data", "validation_data"), lambda config: True,
        lambda path: index_digest(path) if (Path(path) / "index.json").is_file() else None,
        "was built again since the sweep was planned (its index.json differs): the sweep's runs so far saw the "
        "data before. Plan a new sweep (another --out) for the new data, or build it into a new folder"),
    # A random init reads its source's architecture only: new weights beside the same config change no run.
    "base_sha256": _SharedInput(
        ("base_model",), lambda config: config["init"] == "twist",
        lambda path: jobs.content_digest(path) if Path(path).exists() else None,
        "changed since the sweep was planned (its files differ): the sweep's TWIST runs so far started from the "
        "model before. Plan a new sweep (another --out) for the new model, or keep it in a new folder"),
}


def _check_inputs_unchanged(sweep: dict[str, Any], now: dict[str, dict[str, str]] | None = None) -> None:
    """Refuse a sweep whose data was built again, or whose TWIST source changed, since it was planned (the same
    folder, other contents): its finished runs saw the inputs before, and runs to come would see the new, in one
    fit. `now`: digests by key and path (else read from the inputs); an input gone is left to the run to report,
    and sweeps planned before sweeps recorded digests pass."""
    for key, shared in _PLANNED_INPUTS.items():
        found = None if now is None else {str(Path(path).resolve()): digest for path, digest in now[key].items()}
        for path, digest in (sweep.get(key) or {}).items():
            current = shared.digest(path) if found is None else found.get(str(Path(path).resolve()))
            if current is not None and current != digest:
                raise ValueError(f"{path} {shared.changed}")


def _budget_point(budget: float) -> tuple[float, None, str]:
    """An isoFLOP grid point: (budget, no tokens per parameter, its name in run ids: c2e11)."""
    return float(budget), None, f"c{budget:.0e}".replace("+", "")


def _paths(value: str | dict[str, str] | None, convert: Callable[[str | None], str | None]):
    """A path, or a path per family, converted."""
    return {key: convert(path) for key, path in value.items()} if isinstance(value, dict) else convert(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _is_sweep_file(path: Path) -> bool:
    """Whether `path` is a sweep's sweep.json (a demo's stage record of the same name is not)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and {"spec", "runs"} <= set(value)


def load_sweep(folder: str | os.PathLike) -> dict[str, Any]:
    """sweep.json, each run's folder placed under this sweep folder (wherever it is now: a copied or
    moved sweep keeps its ledger)."""
    path = Path(folder) / SWEEP_FILE
    if not path.exists():
        # A demo's or a study's folder holds its sweep one level down (`simslm demo` writes DEMO/sweep).
        inside = sorted(str(found.parent) for found in Path(folder).glob(f"*/{SWEEP_FILE}") if _is_sweep_file(found))
        raise ValueError(f"{folder}: no {SWEEP_FILE}; " + (f"the sweep folders inside it are: {', '.join(inside)}"
                                                           if inside else "run `simslm sweep plan` first"))
    sweep = jobs.read_json(path)
    anchors = _Anchors(Path(folder), sweep.get("anchors"))
    for run in sweep["runs"]:
        run["config"]["run_dir"] = str(Path(folder) / "runs" / run["id"])
        for key in ("data", "base_model", "validation_data"):
            if key in run["config"]:
                run["config"][key] = anchors.placed(run["config"][key])
    spec = sweep["spec"]
    spec.update(family=anchors.placed(spec.get("family")),
                validation_data=_paths(spec.get("validation_data"), anchors.placed),
                bench=anchors.bench(spec.get("bench") or (), anchors.placed),
                families={name: [anchors.placed(model) for model in models]
                          for name, models in (spec.get("families") or {}).items()},
                bracket_models={name: [anchors.placed(model) for model in models]
                                for name, models in (spec.get("bracket_models") or {}).items()})
    for variant in spec.get("variants", ()):
        variant["data"] = _paths(variant.get("data"), anchors.placed)
    for key in _PLANNED_INPUTS:
        sweep[key] = {anchors.placed(path): digest for path, digest in (sweep.get(key) or {}).items()}
    return sweep


# --- the ledger ---------------------------------------------------------------------------------


def _locked(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (trains it). Asked with a shared lock on a read-only descriptor, so
    a user who may only read a colleague's sweep can ask its status: locally flock takes any descriptor, and NFS,
    which emulates flock with POSIX locks, grants a read lock on one open for reading (a write lock would need
    write access). A file system without locks says nothing is held."""
    lock = run_dir / RUN_LOCK
    if not lock.exists():
        return False
    with open(lock, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return False
            raise
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _unevaluated(run_dir: Path, bench: tuple[str, ...]) -> tuple[str, ...]:
    """The benchmarks the sweep asks for that eval.json holds no result for, one whose sides past the model's
    positions were cut (scored before 2026-12-05, when cutting was the only way; a sweep scores with the defaults,
    which now score them whole, as slamkit does, so its runs are scored alike again), one scored on a sample of
    its pairs (`eval --max-pairs`, a quick look), or one of a benchmark folder built again since (`_stale`)."""
    eval_path = run_dir / "eval.json"
    evaluated = jobs.read_json(eval_path)["benchmarks"] if eval_path.exists() else {}

    def scored(name: str) -> bool:
        entries = list(_results_of(evaluated, name).values())
        return bool(entries) and not any(
            isinstance(entry, dict) and (entry.get("num_cut") and (entry.get("scoring") or {}).get(
                "long_sides", "cut") != ScoringOptions.long_sides or entry.get("sampled_from")  # a quick look's
                                         or _stale(entry.get("bench_digest"), name, eval_path))
            for entry in entries)

    return tuple(name for name in bench if not scored(name))


def _results_of(evaluated: dict[str, Any], name: str) -> dict[str, Any]:
    """The results eval.json files under the --bench argument `name` (its modes and subsets too)."""
    label = result_label(name)  # as `simslm eval` files it: a hub id's label is its name and folder
    return {key: entry for key, entry in evaluated.items() if key == label or key.startswith(label + "/")}


def stale_results(run_dir: Path, bench: tuple[str, ...], results: dict[str, Any]) -> list[str]:
    """Which of a run's pairwise `results` (`read_results` of its eval.json) are of an earlier build of their
    benchmark folder (`_stale`)."""
    return sorted(key for name in bench for key, result in _results_of(results, name).items()
                  if _stale(result.bench_digest, name, run_dir / "eval.json"))


def _stale(digest: str | None, name: str, eval_path: Path) -> bool:
    """Whether a result (its recorded `digest`) is of another build of its benchmark folder than the one there now:
    the digest differs, or, a result that records none, the folder's bench.json (one `bench build` made) is newer
    than the eval.json holding it. A folder not here (a hub id not downloaded) is taken to be the one scored."""
    kind, _, target = benchmark_kind(name)
    folder = Path(target)
    if kind != "pairs" or not folder.is_dir():
        return False
    if digest:
        return digest != bench_digest(folder)
    built = folder / BENCH_FILE
    return built.exists() and built.stat().st_mtime > eval_path.stat().st_mtime


def _evaluated(run_dir: Path, bench: tuple[str, ...]) -> bool:
    """Whether eval.json holds a result for every benchmark the sweep asks for."""
    return not _unevaluated(run_dir, bench)


def _to_run(status: str) -> bool:
    """Whether a run in this status is this sweep's to (re)start: not done, not held by another process, and not
    waiting in a cluster's queue (submitted by an earlier `sweep run --no-wait`)."""
    return status not in ("done", "running", "queued")


def run_status(run: dict[str, Any], bench: tuple[str, ...], ledger: dict[str, Any] | None = None) -> str:
    """done, evaluating (trained, evaluation missing), running (locked), queued (its cluster job has not ended, nor
    taken the run yet), failed (its last attempt ended in an error: `run_error`), started (resumable) or pending.
    `ledger`: the sweep's `cluster_jobs`, read once by a caller that asks of every run."""
    run_dir = Path(run["config"]["run_dir"])
    if _locked(run_dir):
        return "running"
    if (run_dir / "result.json").exists():
        return "done" if _evaluated(run_dir, bench) else "evaluating"
    if _queued(run, cluster_jobs(run_dir.parent.parent) if ledger is None else ledger):
        return "queued"
    if run_error(run) is not None:
        return "failed"
    return "started" if (run_dir / "config.json").exists() else "pending"


def cluster_jobs(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's ledger of cluster jobs (submitit/jobs.json) by run id; empty when it has none or it is not one.
    Its SLURM jobs are made known to submitit's watcher at once (`_watch_slurm_jobs`)."""
    try:
        ledger = jobs.read_json(sweep_dir / "submitit" / JOBS_FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(ledger, dict):
        return {}
    _watch_slurm_jobs(sweep_dir / "submitit", ledger)
    return ledger


def _watch_slurm_jobs(folder: Path, ledger: dict[str, Any]) -> None:
    """The ledger's SLURM jobs that have written no result, made known to submitit's watcher and to squeue's
    questions all at once (`jobs.watch_slurm_jobs`): asked one by one, a status pass over a sweep of 100 runs ran
    sacct 100 times, each naming every job registered so far."""
    jobs.watch_slurm_jobs([str(job["job_id"]) for job in ledger.values()
                           if isinstance(job, dict) and job.get("cluster") == "slurm" and "job_id" in job
                           and not (folder / str(job.get("result", ""))).is_file()])


def _queued(run: dict[str, Any], ledger: dict[str, Any]) -> bool:
    """Whether the run's job in the sweep's ledger of cluster jobs has not ended. A run submitted with `--no-wait`
    read `pending` until its job started, and a second `sweep run` submitted it again: two jobs of one run, the
    later one ending at the lock once the first held it, its allocation spent."""
    job = ledger.get(run["id"])
    folder = Path(run["config"]["run_dir"]).parent.parent / "submitit"
    return isinstance(job, dict) and "cluster" in job and not _job_ended(folder, job)


def run_error(run: dict[str, Any]) -> str | None:
    """The error its last attempt ended with, from the run's log beside its folder (`runs/<id>.log`, where a local
    sweep writes it), or None. `sweep status` said "started" of a run that had failed, as of one in progress or
    stopped to resume."""
    log = Path(run["config"]["run_dir"]).parent / f"{run['id']}.log"
    try:
        tail = jobs.read_tail(log)
    except OSError:
        return None
    last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
    return last.strip() if re.match(r"simslm [\w -]+: error: ", last) else None


def execute_run(sweep_dir: str, identifier: str) -> str:
    """Train (or resume) one run and evaluate it, holding its lock; returns its final status.

    Under torchrun or a SLURM job of several tasks every process calls this: all of them train,
    the first holds the lock and evaluates."""
    sweep = load_sweep(sweep_dir)
    run = next((r for r in sweep["runs"] if r["id"] == identifier), None)
    if run is None:
        raise ValueError(f"{sweep_dir}: no run {identifier}")
    spec = sweep["spec"]
    run_dir = Path(run["config"]["run_dir"])
    _distributed_from_slurm()
    trained = (run_dir / "result.json").exists()  # read before any process trains: all decide alike
    if int(os.environ.get("RANK", "0")) != 0:
        if not trained:
            from simslm.train.loop import train

            train(TrainConfig(**run["config"]))
        return "done"
    try:
        with jobs.exclusive_lock(run_dir / RUN_LOCK, f"{run_dir}: held by another process"):
            if not trained:
                from simslm.train.loop import train

                train(TrainConfig(**run["config"]))  # takes the same lock again, as this process may
            missing = _unevaluated(run_dir, tuple(spec.get("bench") or ()))
            if missing:  # only those: an evaluation stopped part way kept the others
                from simslm.eval.evaluate import EvalConfig, evaluate_run

                evaluate_run(EvalConfig(run=str(run_dir), bench=missing, modes=spec.get("eval_modes", ("S", "T")),
                                        num_workers=1))
    except jobs.Busy:
        return "running"
    return "done"


def execute_cluster_run(sweep_dir: str, identifier: str) -> str:
    """`execute_run` as a cluster's job (`--executor slurm`), its first process saying in the run's log
    (`runs/<id>.log`, where a local sweep's subprocess writes a run's output) that the job started, how it ended,
    and on an error simslm's one line (`jobs.error_line`): `sweep status` reads a failed run's error there,
    whichever executor ran it. The job's own output, tracebacks included, stays in submitit's folder."""
    _distributed_from_slurm()
    first = int(os.environ.get("RANK", "0")) == 0
    log = Path(sweep_dir) / "runs" / f"{identifier}.log"

    def say(line: str) -> None:
        if first:
            with open(log, "a") as handle:
                handle.write(line + "\n")

    import submitit

    name = "simslm sweep run-one"
    say(f"{name}: job {submitit.JobEnvironment().job_id} started (its output: the sweep's submitit folder)")
    try:
        status = execute_run(sweep_dir, identifier)
    except Exception as error:
        say(jobs.error_line(name, error))
        raise
    say(status)
    return status


def _distributed_from_slurm() -> None:
    """In a submitit job of several tasks (SLURM, or submitit's local cluster), torch.distributed's variables
    from the job's, through submitit's helper; nothing elsewhere (torchrun sets them itself).

    CUDA_VISIBLE_DEVICES stays as the job has it: training picks its GPU by LOCAL_RANK."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    if submitit.JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# --- executors ------------------------------------------------------------------------------------


def _run_command(sweep_dir: Path, identifier: str, nproc_per_run: int) -> list[str]:
    """`simslm sweep run-one`, under torchrun when a run has several processes."""
    one = ["-m", "simslm", "sweep", "run-one", str(sweep_dir), identifier]
    if nproc_per_run == 1:
        return [sys.executable, *one]
    # torchrun's default log folder is a new torchelastic_* folder in the temporary directory, left behind by
    # every run (a sweep of hundreds leaves hundreds); the ranks' output already goes to the run's log.
    # simslm's wrapper of torchrun: its end on a signal or a failed rank is one line in the run's log, not a
    # traceback of torch's.
    return [sys.executable, "-m", "simslm.torchrun", "--standalone", "--nproc_per_node", str(nproc_per_run),
            "--log-dir", os.devnull, *one]


# What a run imports (torch, transformers' model and tokenizer classes of the paper's families, simslm's
# training and scoring): about 6 s of a run's start on a 2-core CPU, paid once by the warm executor's server.
WARM_MODULES = ("simslm.cli", "simslm.scaling.sweep", "simslm.train.loop", "simslm.eval.evaluate",
                "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
                "transformers.models.llama.modeling_llama", "transformers.models.llama.tokenization_llama",
                "transformers.models.llama.tokenization_llama_fast",  # transformers 4 (5 has none; skipped)
                "transformers.models.qwen2.modeling_qwen2", "transformers.models.qwen2.tokenization_qwen2")


class _ForkedRun:
    """`simslm sweep run-one` in a fork of a server that has imported `WARM_MODULES` (multiprocessing's
    forkserver): a fresh process of its own, as a subprocess is (own memory, own lock, killed alone), without
    paying the imports again. Answers poll / terminate / wait as subprocess.Popen does."""

    def __init__(self, context, sweep_dir: Path, identifier: str, log_path: Path, threads: int,
                 environment: dict[str, str]):
        # The run gets this process's folder and `environment` now, as a subprocess would, not the server's
        # from when it started (settings read at import time stay the server's).
        self.process = context.Process(target=_run_one_forked, name=f"simslm-run-{identifier}",
                                       args=(str(sweep_dir), identifier, str(log_path), threads, os.getcwd(),
                                             environment))
        self.process.start()

    def poll(self) -> int | None:
        return self.process.exitcode

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def wait(self) -> int | None:
        self.process.join()
        return self.process.exitcode


def _run_one_forked(sweep_dir: str, identifier: str, log_path: str, threads: int, cwd: str,
                    environment: dict[str, str]) -> None:
    """A forked run's body: its output into its log, the caller's folder and environment, its thread count,
    then what `simslm sweep run-one` does (the same messages and exit status as the subprocess it stands for)."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(log, stream.fileno())
    os.close(log)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    import torch

    torch.set_num_threads(threads)  # the server read no thread count: it never ran an op
    import runpy

    # `python -m simslm sweep run-one ...` itself (its SystemExit is the fork's exit status); the CLI is a later
    # stage than this module, so it is run, not imported.
    sys.argv = ["simslm", "sweep", "run-one", sweep_dir, identifier]
    runpy.run_module("simslm", run_name="__main__", alter_sys=True)


# The forkserver listens on a socket at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX; a socket's path holds at most 107
# bytes (Linux's sun_path of 108, with its NUL; 104 on macOS and the BSDs), so on Linux a TMPDIR longer than 75
# characters (a cluster's per-job scratch) fails the server's start with "AF_UNIX path too long".
_SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
_FORKSERVER_SOCKET_TAIL = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def _warm_context():
    """multiprocessing's forkserver, its server preloading `WARM_MODULES` (started once per process, reused by
    later calls, e.g. bracketing's); None, with a warning, where its socket's path would be too long."""
    import multiprocessing
    import tempfile

    if len(os.fsencode(tempfile.gettempdir())) + _FORKSERVER_SOCKET_TAIL > _SOCKET_PATH_MAX:
        print(f"simslm: warning: TMPDIR {tempfile.gettempdir()} is longer than "
              f"{_SOCKET_PATH_MAX - _FORKSERVER_SOCKET_TAIL} characters, too long for the path of the warm server's "
              f"socket: each run starts a new interpreter instead (about 6 s more of imports; a shorter TMPDIR "
              f"saves them)", file=sys.stderr)
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WARM_MODULES))
    return context


def _peak_flops(threads: int, bf16: bool = False) -> float:
    """This CPU's matrix-multiply FLOP/s at `threads` threads, in fp32 or bf16 (`train.peak.measure_peak_flops`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_peak_flops("cpu", bf16=bf16)
    finally:
        torch.set_num_threads(before)


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def _local(sweep_dir: Path, runs: list[dict[str, Any]], *, num_parallel: int = 2, threads_per_run: int = 1,
           nproc_per_run: int = 1, gpus: str = "", fresh_processes: bool = False,
           more: Callable[[str], list[dict[str, Any]]] | None = None, **_: Any) -> None:
    """Run up to `num_parallel` runs at once, each a process of its own with `threads_per_run` threads: a fork of
    a warm server (`_ForkedRun`) for one-process runs on a machine without CUDA, unless `fresh_processes`; a new
    interpreter otherwise (torchrun with `nproc_per_run` processes when more than one). With `gpus`, each run
    gets `nproc_per_run` of them. `more`, given the id of each run that ends well, gives runs to add
    (bracketing's, while the grid still runs): they go ahead of the runs still waiting."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads_per_run), "MKL_NUM_THREADS": str(threads_per_run)}
    devices = [device.strip() for device in gpus.split(",") if device.strip()]
    cuda = _cuda_present()
    if devices and not cuda:  # each run would see no GPU and train on the CPU, `--device auto` as it is
        raise ValueError(f"--gpus {gpus}: torch sees no CUDA device here; leave --gpus out to train on the CPU")
    if not devices and not cuda:
        # One MFU denominator for every CPU run, measured before any of them loads the cores (a run measuring
        # its own would see its neighbour's load, and spend 0.75 s on it); bf16's too when the runs train in bf16
        # (one product took 1.3-2.5 s on a CPU without native bf16, and each run measured at least two).
        if PEAK_FLOPS_VARIABLE not in environment:
            environment[PEAK_FLOPS_VARIABLE] = repr(_peak_flops(threads_per_run))
        if PEAK_FLOPS_BF16_VARIABLE not in environment and any(
                uses_bf16(run["config"].get("precision", "auto"), "cpu") for run in runs):
            environment[PEAK_FLOPS_BF16_VARIABLE] = repr(_peak_flops(threads_per_run, bf16=True))
    slots = [",".join(devices[i:i + nproc_per_run]) for i in range(0, len(devices) - nproc_per_run + 1,
                                                                     nproc_per_run)] if devices else []
    if devices and not slots:
        raise ValueError(f"--gpus {gpus}: fewer GPUs than --nproc-per-run {nproc_per_run}")
    # CUDA is left to fresh processes: a fork must not inherit a CUDA context, and a GPU run's imports are
    # small against its training.
    warm = (None if fresh_processes or nproc_per_run > 1 or devices or cuda else _warm_context())
    num_parallel = min(num_parallel, len(slots)) if slots else num_parallel
    free = list(slots)
    waiting = list(runs)
    seen = {run["id"] for run in runs}
    active: dict[str, tuple[Any, Any, str]] = {}  # run id -> (its process, its log file or None for a fork, its GPUs)
    tracker = jobs.Progress(len(runs), "sweep runs", unit="run")
    failures = []
    try:
        while waiting or active:
            while waiting and len(active) < num_parallel:
                run = waiting.pop(0)
                slot = free.pop(0) if slots else ""
                log_path = Path(run["config"]["run_dir"]).parent / f"{run['id']}.log"
                log = None  # a fork opens its log itself
                if warm is not None:
                    process = _ForkedRun(warm, sweep_dir, run["id"], log_path, threads_per_run, environment)
                else:
                    log = open(log_path, "a")
                    env = {**environment, "CUDA_VISIBLE_DEVICES": slot} if slot else environment
                    process = subprocess.Popen(_run_command(sweep_dir, run["id"], nproc_per_run), stdout=log,
                                               stderr=subprocess.STDOUT, env=env)
                active[run["id"]] = (process, log, slot)
            time.sleep(0.2)
            for identifier, (process, log, slot) in list(active.items()):
                if process.poll() is not None:
                    del active[identifier]
                    if log is not None:
                        log.close()
                    if slot:
                        free.append(slot)
                    tracker.update()
                    if process.returncode != 0:
                        failures.append(identifier)
                    elif more is not None:
                        added = [run for run in more(identifier) if run["id"] not in seen]
                        seen.update(run["id"] for run in added)
                        waiting[:0] = added
                        tracker.grow(len(added))
    except jobs.Stopped:
        raise jobs.Stopped(f"{sweep_dir}: stopped by SIGTERM; the {len(active)} run(s) in progress stopped with it, "
                           f"each keeping the steps it had trained as a checkpoint; run the same command again to "
                           f"resume") from None
    finally:
        for process, _, _ in active.values():  # interrupted: stop the children too (their runs resume later)
            process.terminate()
        for process, log, _ in active.values():
            process.wait()
            if log is not None:
                log.close()
        tracker.close()
    if failures:
        raise jobs.JobsFailed(f"{sweep_dir}: {len(failures)} run(s) failed: {', '.join(failures)} "
                              f"(see {sweep_dir}/runs/<id>.log); re-run `simslm sweep run` to retry them")


JOBS_FILE = "jobs.json"


def _slurm(sweep_dir: Path, runs: list[dict[str, Any]], *, cluster: str | None = None, slurm_partition: str = "",
           timeout_min: int = 240, gpus_per_node: int = 0, nodes: int = 1, nproc_per_run: int = 1,
           cpus_per_task: int = 0, mem_gb: float = 0, slurm_account: str = "", slurm_qos: str = "",
           array_parallelism: int = 0, sbatch: tuple[str, ...] = (), wait: bool = True,
           max_requeues: int = jobs.MAX_REQUEUES, warning_s: int = jobs.WARNING_S, **_: Any) -> None:
    """Submit the runs as one SLURM job array through submitit (cluster=local runs them here, for testing).

    A run of several processes is one job of `nodes` x `nproc_per_run` tasks (torch.distributed set up from
    SLURM's variables in `execute_run`). The job of each run is recorded in submitit/jobs.json, so that
    `sweep wait` can follow jobs submitted without waiting. A job warned of its time limit saves a checkpoint
    (`train`) and is requeued to resume from it, up to `max_requeues` times."""
    folder = sweep_dir / "submitit"
    executor = jobs.submitit_executor(
        folder, cluster, timeout_min=timeout_min, gpus_per_node=gpus_per_node, nodes=nodes,
        tasks_per_node=nproc_per_run, cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm_partition=slurm_partition,
        slurm_account=slurm_account, slurm_qos=slurm_qos, slurm_array_parallelism=array_parallelism,
        slurm_additional_parameters=dict(option.split("=", 1) for option in sbatch), max_requeues=max_requeues,
        warning_s=warning_s)
    submitted = executor.map_array(jobs.Resumable(execute_cluster_run), [str(sweep_dir)] * len(runs),
                                   [run["id"] for run in runs])
    recorded = {run["id"]: {"job_id": job.job_id, "result": os.path.relpath(job.paths.result_pickle, folder),
                            "stderr": os.path.relpath(job.paths.stderr, folder),
                            "cluster": type(job).__name__.removesuffix("Job").lower()}
                for run, job in zip(runs, submitted)}
    jobs.update_json(folder / JOBS_FILE, lambda ledger: {**ledger, **recorded})
    if not wait:
        print(f"submitted {len(runs)} run(s) as job(s) {submitted[0].job_id.split('_')[0]}...; follow them with "
              f"`simslm sweep status {sweep_dir}` or `simslm sweep wait {sweep_dir}`", file=sys.stderr)
        return
    try:
        failures = jobs.job_failures([(run["id"], job) for run, job in zip(runs, submitted)], "sweep jobs")
    except jobs.Stopped:  # the jobs are the cluster's, not this process's: they go on
        raise jobs.Stopped(f"{sweep_dir}: stopped by SIGTERM while waiting; the {len(runs)} job(s) it submitted go on: "
                           f"follow them with `simslm sweep wait {sweep_dir}`") from None
    if failures:
        raise jobs.JobsFailed(f"{sweep_dir}: {len(failures)} run(s) failed: {'; '.join(failures)}; re-run "
                              f"`simslm sweep run` to retry them")


EXECUTORS: dict[str, Callable[..., None]] = {"local": _local, "slurm": _slurm}


def run_sweep(sweep_dir: str | os.PathLike, *, executor: str = "local", bracket: bool = False,
              **options: Any) -> dict[str, int]:
    """Execute every run that is not done yet; returns the count of runs by status afterwards.

    With `bracket`, then grow the grid until every budget's best size is inside it (`bracket_sweep`)."""
    sweep_dir = Path(sweep_dir)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor '{executor}'; known: {', '.join(EXECUTORS)}")
    while True:
        sweep = load_sweep(sweep_dir)
        bench = tuple(sweep["spec"].get("bench") or ())
        ledger = cluster_jobs(sweep_dir)
        status = {run["id"]: run_status(run, bench, ledger) for run in sweep["runs"]}
        todo = [run for run in sweep["runs"] if _to_run(status[run["id"]])]
        held = [run for run in sweep["runs"] if status[run["id"]] == "running"]
        (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
        if todo:  # each fails now rather than after training
            _check_inputs_unchanged(sweep)
            _check_benchmarks(sweep["spec"])
            # Locally, a cell's growth starts as soon as the cell is done, while the rest of the grid runs: the
            # machine is not left half idle at the end with the added runs alone (the demo's d1w8: 77 s).
            grow = {"more": functools.partial(_grown_after, sweep_dir)} if bracket and executor == "local" else {}
            EXECUTORS[executor](sweep_dir, todo, **options, **grow)
        # A run another process held when this sweep looked, and has let go of unfinished since, is this sweep's
        # to finish: a sweep killed just before this one started leaves its runs locked until its children are
        # gone, which takes a moment after the kill.
        if options.get("wait", True) and held:
            ledger = cluster_jobs(sweep_dir)  # once for all of them: reading it registers its SLURM jobs anew
            if any(_to_run(run_status(run, bench, ledger)) for run in held):
                continue
        if not bracket or not options.get("wait", True) or not extend_to_bracket(sweep_dir):
            return status_counts(sweep_dir)


# --- grids that bracket -----------------------------------------------------------------------------

BRACKET_FILE = "bracket.json"


def edges(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (variant, budget) whose best run is its smallest or largest size: the minimum is not bracketed."""
    found = []
    for (variant, budget), best in sorted(best_runs(rows).items(), key=lambda item: (item[0][0], item[0][1])):
        sizes = sorted({row["parameters"] for row in rows if row["variant"] == variant and row["budget"] == budget})
        for side, edge in (("smaller", sizes[0]), ("larger", sizes[-1])):
            if best["parameters"] == edge:
                found.append({"variant": variant, "budget": budget, "member": best["member"], "needs": side,
                              "family": best["family"]})
    return found


def _meta_parameters(model: str) -> int:
    """Parameters of a model from its config alone (built on the meta device: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(parameter.numel() for parameter in built.parameters())


def _next_size(spec: SweepSpec, family: str, side: str) -> tuple[SweepSpec | None, str]:
    """The spec grown by one size beyond `family`'s edge on `side`, and what was added (or why nothing)."""
    if spec.depths:
        depth = min(spec.depths) - 1 if side == "smaller" else max(spec.depths) + 1
        if not 1 <= depth <= model_lib.FAMILY_MAX_DEPTH:
            return None, f"no depth {depth} in simslm's family (depths 1 to {model_lib.FAMILY_MAX_DEPTH})"
        if spec.family:
            _pretrain_member(Path(spec.family), depth)
        return dataclasses.replace(spec, depths=tuple(sorted({*spec.depths, depth}))), f"depth {depth}"
    members = list(spec.families[family])
    held = [model for model in spec.bracket_models.get(family, ()) if model not in members]
    if not held:
        return None, (f"family {family} has no model {side} than its members; list one under bracket_models "
                      f"to let the grid grow")
    sizes = {model: _meta_parameters(model) for model in (*members, *held)}
    bound = min(sizes[m] for m in members) if side == "smaller" else max(sizes[m] for m in members)
    beyond = [m for m in held if (sizes[m] < bound if side == "smaller" else sizes[m] > bound)]
    if not beyond:
        return None, f"family {family}: none of bracket_models is {side} than its members"
    chosen = max(beyond, key=lambda m: sizes[m]) if side == "smaller" else min(beyond, key=lambda m: sizes[m])
    grown = sorted([*members, chosen], key=lambda m: sizes[m])
    return dataclasses.replace(spec, families={**spec.families, family: tuple(grown)}), \
        f"{chosen} ({sizes[chosen]:,} parameters)"


def _narrower_in_cell(spec: SweepSpec, edge: dict[str, Any]) -> tuple[SweepSpec | None, str]:
    """The spec with depth 1 at half the width of `edge`'s best size (depth 1, the cell's smallest) added to that
    cell alone, and what was added (or why nothing).

    Not to the whole grid, as a depth is: these members take the most steps of all for a budget (2.3x depth 1's
    at width 8), and a tiny model's step costs its launches, not its FLOPs (a depth-1 step of the demo: 10 ms for
    46 MFLOP), so at every budget of every variant they would cost more than the rest of the sweep."""
    from simslm.textlm import family_aspect_ratio

    _, width = model_lib.parse_member_label(edge["member"])
    narrower = model_lib.narrower_width(width or family_aspect_ratio(spec.family))
    if narrower is None:
        return None, (f"no size below {edge['member']} in simslm's family (depth 1 narrows down to width "
                      f"{model_lib.FAMILY_MIN_WIDTH})")
    if spec.family and next(v for v in spec.variants if v.name == edge["variant"]).init == "twist":
        _pretrain_member(Path(spec.family), 1, narrower)
    size = model_lib.member_label(1, narrower)
    cell = {"variant": edge["variant"], "budget_flops": edge["budget"], "size": size}
    return dataclasses.replace(spec, cell_sizes=(*spec.cell_sizes, cell)), size


def _pretrain_member(family_dir: Path, depth: int, width: int | None = None) -> None:
    """Pretrain one more member of a `simslm textlm` family, as its others were (family.json's config): a depth,
    or depth 1 at a narrower width."""
    from simslm.textlm import TextLMConfig, pretrain_family

    family = jobs.read_json(family_dir / "family.json")
    config = TextLMConfig.from_dict(family["config"], source=str(family_dir / "family.json"))
    depths = tuple(sorted({*(member["depth"] for member in family["members"]), depth}))
    narrow = tuple(sorted({*config.narrow_widths, *([width] if width else [])}))
    pretrain_family(dataclasses.replace(config, out=str(family_dir), depths=depths, narrow_widths=narrow))


def _note_added(record: dict[str, Any], entry: dict[str, Any]) -> None:
    """Record a size bracketing added, once: a sweep planned again from its first spec (`simslm demo` does, from
    its options) grows the same sizes again, finding their runs done."""
    if entry not in record["added"]:
        record["added"].append(entry)


def extend_to_bracket(sweep_dir: str | os.PathLike, settled_only: bool = False) -> bool:
    """Add the next size beyond each edge where a budget's best run sits; record what stays unbracketed in
    bracket.json. True when the grid grew (its new runs are still to run).

    `settled_only`: judge only the (variant, budget) cells whose planned runs have all finished, and leave what
    stays unbracketed to the call after the last run (a cell still running may yet find its minimum inside)."""
    sweep_dir = Path(sweep_dir)
    with _growing(sweep_dir):  # what it reads is what it grows
        return _extend_to_bracket(sweep_dir, settled_only)


def _extend_to_bracket(sweep_dir: Path, settled_only: bool) -> bool:
    sweep = load_sweep(sweep_dir)
    spec = SweepSpec.from_json(sweep["spec"])
    rows = [row for row in collect(sweep_dir) if row.get("loss_speech") is not None]
    if settled_only:
        finished = {row["id"] for row in rows}
        unfinished = {(run["variant"], run["budget_flops"]) for run in sweep["runs"] if run["id"] not in finished}
        rows = [row for row in rows if (row["variant"], row["budget"]) not in unfinished]
    record = jobs.read_json(sweep_dir / BRACKET_FILE) if (sweep_dir / BRACKET_FILE).exists() else {"added": []}
    unbracketed, grown = [], False
    found = edges(rows)
    # Below depth 1, cell by cell; elsewhere the next size joins the whole grid.
    narrow = [edge for edge in found if spec.depths and edge["needs"] == "smaller" and
              model_lib.parse_member_label(edge["member"])[0] == 1]
    for edge in narrow:
        narrowed, added = _narrower_in_cell(spec, edge)
        if narrowed is None:
            unbracketed.append({**edge, "reason": added})
            continue
        spec, grown = narrowed, True
        _note_added(record, {"family": edge["family"], "side": "smaller", "size": added, "variant": edge["variant"],
                             "budget": edge["budget"]})
        print(f"simslm sweep: bracketing: {edge['variant']} at C={edge['budget']:.3g} gets {added}, smaller than "
              f"{edge['member']}", file=sys.stderr)
    for family, side in sorted({(edge["family"], edge["needs"]) for edge in found if edge not in narrow}):
        larger, added = _next_size(spec, family, side)
        if larger is None:
            unbracketed += [{**edge, "reason": added} for edge in found
                            if (edge["family"], edge["needs"]) == (family, side) and edge not in narrow]
            continue
        spec, grown = larger, True
        _note_added(record, {"family": family, "side": side, "size": added})
        print(f"simslm sweep: bracketing: family {family} gets {added}, {side} than its sizes", file=sys.stderr)
    if grown or not settled_only:
        record["unbracketed"] = [] if grown else unbracketed
        jobs.write_json(sweep_dir / BRACKET_FILE, record)
    if grown:
        plan_sweep(spec, sweep_dir)
    elif not settled_only:  # the sweep ends with these minima unknown: said here, not only in bracket.json
        grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for edge in unbracketed:
            grouped.setdefault((edge["variant"], edge["needs"], edge["reason"]), []).append(edge)
        for (variant, needs, reason), group in grouped.items():
            where = "smallest" if needs == "smaller" else "largest"
            budgets = ", ".join(f"{edge['budget']:.3g}" for edge in group)
            print(f"simslm sweep: warning: not bracketed: {variant} at C = {budgets}, best at its {where} size "
                  f"({', '.join(sorted({edge['member'] for edge in group}))}); {reason}", file=sys.stderr)
    return grown


def _grown_after(sweep_dir: Path, ended: str) -> list[dict[str, Any]]:
    """`_grown_runs` once run `ended` was the last of its (variant, budget) cell to finish, else none: only a cell's
    last run lets bracketing find something new, and the ledger it reads (every run's result) would otherwise be
    read after each run, growing with the square of the sweep."""
    runs = load_sweep(sweep_dir)["runs"]
    cell = next(((run["variant"], run["budget_flops"]) for run in runs if run["id"] == ended), None)
    if cell is None or not all(RunResult.exists(Path(run["config"]["run_dir"])) for run in runs
                               if (run["variant"], run["budget_flops"]) == cell):
        return []
    return _grown_runs(sweep_dir)


def _grown_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The runs still to do after bracketing the cells finished so far (`extend_to_bracket(settled_only=True)`);
    none when the grid did not grow."""
    if not extend_to_bracket(sweep_dir, settled_only=True):
        return []
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    ledger = cluster_jobs(Path(sweep_dir))
    return [run for run in sweep["runs"] if _to_run(run_status(run, bench, ledger))]


def wait_for_sweep(sweep_dir: str | os.PathLike, poll_sec: float = 30.0) -> dict[str, int]:
    """Follow the jobs `sweep run --executor slurm --no-wait` submitted until each has ended; the status counts.

    A job has ended when submitit has written its result file, or, on SLURM, when the cluster says so: a job
    killed for memory, cancelled or lost with its node writes none, and would otherwise be waited for forever.
    A run whose job ended without a finished run folder failed (its job's stderr says why)."""
    sweep_dir = Path(sweep_dir)
    folder = sweep_dir / "submitit"
    if not (folder / JOBS_FILE).exists():
        raise ValueError(f"{sweep_dir}: no submitted jobs to wait for ({folder / JOBS_FILE} is missing)")
    submitted = jobs.read_json(folder / JOBS_FILE)
    _watch_slurm_jobs(folder, submitted)
    tracker = jobs.Progress(len(submitted), "sweep wait", unit="job")
    ended: set[str] = set()
    while len(ended) < len(submitted):
        for identifier, job in submitted.items():
            if identifier not in ended and _job_ended(folder, job):
                ended.add(identifier)
                tracker.update()
        if len(ended) < len(submitted):
            time.sleep(poll_sec)
    tracker.close()
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    # Each with its one-line error where its job lived to write it (`execute_cluster_run`), and its job's log.
    failed = [f"{run['id']} ({(run_error(run) or '').partition(': error: ')[2] or 'no error said'}; log "
              f"{folder / submitted[run['id']]['stderr']})" for run in sweep["runs"]
              if run["id"] in submitted and run_status(run, bench, submitted) != "done"]
    if failed:
        raise jobs.JobsFailed(f"{sweep_dir}: {len(failed)} run(s) failed: {'; '.join(failed)}; re-run "
                              f"`simslm sweep run` to retry them")
    return status_counts(sweep_dir)


def _job_ended(folder: Path, job: dict[str, str]) -> bool:
    """Whether a job of submitit/jobs.json has ended: its result file is there; or SLURM's accounting (sacct,
    asked through submitit at most every 2 s to 10 minutes) has it in a final state, or, knowing nothing of it,
    SLURM's queue (squeue) has it no longer or in a final state; or, on the local cluster, its controller process
    (whose pid is the job id) is gone. Ledgers from before 2026-12-04 do not say which cluster."""
    if (folder / job["result"]).exists():
        return True
    if job.get("cluster") == "slurm":
        return jobs.slurm_job_ended(str(job["job_id"]))
    if job.get("cluster") == "local":
        try:
            os.kill(int(job["job_id"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        # Alive, unless the pid is another process's now (the machine restarted since): a run would read `queued`
        # for good, and `sweep run` never start it again. A local job's controller runs submitit's own module.
        process = Path("/proc") / str(int(job["job_id"]))
        if not jobs.proc_shows_this_namespace():  # the pid being alive is all there is to go by
            return False
        try:
            command = (process / "cmdline").read_bytes()
            if command:
                return b"submitit" not in command
            # Empty: a zombie (ended), or a process still in its exec (just submitted). The state follows the last
            # ") " of stat: the name before it, in parentheses, may hold one itself.
            return (process / "stat").read_text().rpartition(") ")[2][:1] == "Z"
        except OSError:  # it ended just now
            return True
    return False


def status_counts(sweep_dir: str | os.PathLike) -> dict[str, int]:
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    counts: dict[str, int] = {}
    ledger = cluster_jobs(Path(sweep_dir))
    for run in sweep["runs"]:
        status = run_status(run, bench, ledger)
        counts[status] = counts.get(status, 0) + 1
    return counts


# --- collecting results ---------------------------------------------------------------------------


def collect(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per finished run: variant, size, tokens, FLOPs, losses, `accuracies` (benchmark -> result) and
    `stale` (the results of an earlier build of their benchmark folder, which `sweep run` scores again)."""
    rows = []
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    for run in sweep["runs"]:
        run_dir = Path(run["config"]["run_dir"])
        if not RunResult.exists(run_dir):
            continue
        try:
            result = RunResult.load(run_dir)
        except ValueError as error:  # a finished run's checkpoint outlives its result.json: train writes it again
            raise ValueError(f"{error}; move it aside and run `simslm sweep run {sweep_dir}`, which resumes the run "
                             f"from its last checkpoint and writes it again") from None
        losses, accuracies = result.comparison_losses, read_results(run_dir)
        row = {"id": run["id"], "run_dir": str(run_dir), "variant": run["variant"], "depth": run["depth"],
               "member": run.get("member", f"d{run['depth']}"), "family": run.get("family", ""),
               "seed": run["config"].get("seed", 0), "budget": run["budget_flops"],
               "tokens_per_parameter": run.get("tokens_per_parameter"),
               "parameters": result.parameters.total,
               "non_embedding_parameters": result.parameters.non_embedding,
               "tokens": result.tokens, "flops": result.flops,
               "loss_speech": losses.loss_speech, "loss": losses.loss,
               "loss_source": "validation" if result.held_out else "final train",
               "validation_batches": result.validation_batches, "accuracies": accuracies,
               "stale": stale_results(run_dir, bench, accuracies)}
        rows.append(row)
    return rows


def loss_kind(rows: list[dict[str, Any]]) -> str:
    """Which loss `collect`'s rows are compared on, in words: validation (held-out) or final train, or both, with
    how many runs have each (runs that differ in validation data give losses of two kinds)."""
    sources = collections.Counter(row["loss_source"] for row in rows)
    if len(sources) == 1:
        return next(iter(sources))
    return " or ".join(f"{source} ({count} runs)" for source, count in sorted(sources.items(), reverse=True))


def fitted_sweep(fit_path: str | os.PathLike, stored: dict[str, Any]) -> Path | None:
    """The sweep folder a fit.json fitted, as its `source` names it (None: a table's fit, or one that does not
    say, or a sweep no longer there)."""
    source = stored.get("source") if isinstance(stored, dict) else None
    if not isinstance(source, str):
        return None
    sweep_dir = Path(fit_path).parent / source
    return sweep_dir if (sweep_dir / SWEEP_FILE).is_file() else None


def trained_sizes(rows: list[dict[str, Any]], variant: str, *, non_embedding: bool = False
                  ) -> list[tuple[str, int, int]]:
    """The sizes a variant's finished runs (`collect`'s rows) trained, smallest first: (name, parameters as a fit
    counts them (all, or outside the embeddings), all parameters)."""
    sizes = {}
    for row in rows:
        if row["variant"] == variant and row.get("loss_speech") is not None:
            name = f"{row['member']} of {row['family']}" if row.get("family") else row["member"]
            sizes[name] = (int(row["non_embedding_parameters" if non_embedding else "parameters"]),
                           int(row["parameters"]))
    return sorted(((name, *counts) for name, counts in sizes.items()), key=lambda size: size[1])


def stale_fit(fit_path: str | os.PathLike, stored: dict[str, Any], finished: set[str] | None = None) -> str | None:
    """Why a sweep's fit.json no longer fits the sweep's finished runs (None when it does, or when it does not say
    which runs it fitted: a table's fit, an older one): `report` and `plan` say it. `finished`: the finished runs'
    ids, when the caller has them."""
    sweep_dir = fitted_sweep(fit_path, stored)
    if "runs" not in stored or sweep_dir is None:
        return None
    if finished is None:
        try:
            finished = {row["id"] for row in collect(sweep_dir) if row.get("loss_speech") is not None}
        except ValueError:  # a run's unreadable result: `report` and `fit` say that; planning need not stop on it
            return None
    fitted = set(stored["runs"])
    if fitted == finished:
        return None
    changes = [f"{len(finished - fitted)} finished since"] * bool(finished - fitted) + \
        [f"{len(fitted - finished)} no longer finished runs of the sweep"] * bool(fitted - finished)
    return (f"{fit_path} fitted {len(fitted)} run(s), not the {len(finished)} the sweep has finished now "
            f"({'; '.join(changes)}): `simslm fit {os.path.normpath(sweep_dir)}` fits it again")


def cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of each (variant, size, grid point) as one row: its replicates (a spec's seeds) under
    `replicates`, speech CE the mean of theirs, each benchmark's accuracy over per-item outcomes averaged across
    them (`mean_accuracy`). A cell of one run is that run's row with `replicates` = [row]."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["variant"], row.get("family"), row["member"], row["budget"], row.get("tokens_per_parameter"))
        grouped.setdefault(key, []).append(row)
    merged = []
    for replicates in grouped.values():
        replicates = sorted(replicates, key=lambda row: row.get("seed", 0))
        cell = {**replicates[0], "replicates": replicates}
        if len(replicates) > 1:
            losses = [row.get("loss_speech") for row in replicates]
            names = set.intersection(*(set(row["accuracies"]) for row in replicates))
            cell.update(id=f"{replicates[0]['id']} and {len(replicates) - 1} more",
                        loss_speech=float(np.mean(losses)) if None not in losses else None,
                        accuracies={name: mean_accuracy([row["accuracies"][name] for row in replicates])
                                    for name in sorted(names)},
                        validation_batches=None)  # per run: see `cell_difference`
        merged.append(cell)
    return merged


def mean_accuracy(results: list[Accuracy]) -> Accuracy:
    """One benchmark's accuracy over several runs: each item's outcome averaged over the runs, then the usual
    percentile bootstrap over items (so `difference_with_ci` pairs two cells item by item). A run without stored
    outcomes leaves the cell without them."""
    first = results[0]
    if any(result.outcomes is None or result.groups() != first.groups() for result in results):
        return dataclasses.replace(first, accuracy=float(np.mean([result.accuracy for result in results])),
                                   ci_low=float("nan"), ci_high=float("nan"), outcomes=None)
    mean = accuracy_with_ci(np.mean([result.outcomes for result in results], axis=0), first.groups(),
                            aggregation=first.aggregation, num_resamples=first.num_resamples,
                            confidence=first.confidence)
    if first.num_items is None:
        return mean
    # The stored outcomes are items' (their voices averaged): the counts of pairs behind them are the runs'.
    return dataclasses.replace(mean, num_pairs=first.num_pairs, num_items=first.num_items,
                               per_group={name: {**entry, "num_pairs": first.per_group[name]["num_pairs"],
                                                 "num_items": first.per_group[name]["num_items"]}
                                          for name, entry in mean.per_group.items()})


def _batch_sums(row: dict[str, Any]) -> np.ndarray | None:
    """A run's per-validation-batch [speech loss sum, speech tokens], or None when it kept none."""
    batches = row.get("validation_batches")
    return np.asarray(batches, dtype=float)[:, 2:4] if batches else None


def speech_loss_difference(first: dict[str, Any], second: dict[str, Any], *, num_resamples: int = 1000,
                           confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float] | None:
    """`first` minus `second` validation speech CE (rows of `collect`), with a paired percentile-bootstrap
    interval over validation batches: every run of a sweep scores the same batches, so one resample of batch
    indices redraws both losses, each the ratio of its summed loss to its summed speech tokens. None when
    either run kept no per-batch sums or they scored different batches."""
    return cell_difference({"replicates": [first]}, {"replicates": [second]}, num_resamples=num_resamples,
                           confidence=confidence, seed=seed)


def cell_difference(first: dict[str, Any], second: dict[str, Any], *, num_resamples: int = 1000,
                    confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float] | None:
    """`first` minus `second` mean validation speech CE of two cells (of `cells`) and an interval on it.

    Two sources of error, independent: the validation sample (every run scores the same batches) and, with 2+
    replicates in both cells, the training runs themselves. The batches' share is the paired bootstrap of
    `speech_loss_difference`, applied to the difference of the cells' mean losses. The runs' share is Welch's:
    s1^2/n1 + s2^2/n2 over the runs' losses, all on one validation set, so the two shares do not overlap. With
    replicates the interval is difference +- t * sqrt(both shares), t from Student's t at the Welch-Satterthwaite
    degrees of freedom (the batch share, from 64 batches, adds none); without, the percentile bootstrap alone.
    None when a run kept no per-batch sums or the runs scored different batches."""
    runs = [[_batch_sums(row) for row in cell.get("replicates", [cell])] for cell in (first, second)]
    every = [sums for side in runs for sums in side]
    if any(sums is None or sums.shape != every[0].shape or not np.array_equal(sums[:, 1], every[0][:, 1])
           for sums in every):
        return None  # a run without per-batch sums, or over other batches
    index = np.random.default_rng(seed).integers(0, len(every[0]), (num_resamples, len(every[0])))
    tokens = every[0][index, 1].sum(axis=1)
    per_run = [[sums[:, 0].sum() / sums[:, 1].sum() for sums in side] for side in runs]
    draws = [np.mean([sums[index, 0].sum(axis=1) / tokens for sums in side], axis=0) for side in runs]
    return _with_run_spread(float(np.mean(per_run[0]) - np.mean(per_run[1])), draws[0] - draws[1], per_run,
                            confidence)


def _with_run_spread(difference: float, draws: np.ndarray, per_run: list[list[float]], confidence: float
                     ) -> tuple[float, float, float]:
    """An interval on a difference of two cells' means: the percentile interval of the evaluation set's bootstrap
    `draws` with one run in either cell; with 2+ in both, difference +- t * sqrt(var(draws) + s1^2/n1 + s2^2/n2)
    over the runs' own values `per_run`, t at the Welch-Satterthwaite degrees of freedom of the runs' share."""
    from scipy import stats

    if min(len(side) for side in per_run) < 2:
        low, high = percentile_interval(draws, confidence)
        return difference, low, high
    shares = [np.var(side, ddof=1) / len(side) for side in per_run]
    freedom = sum(shares) ** 2 / sum(share ** 2 / (len(side) - 1) for share, side in zip(shares, per_run)) \
        if sum(shares) > 0 else float("inf")
    half = stats.t.ppf(0.5 + confidence / 2, freedom) * math.sqrt(sum(shares) + np.var(draws, ddof=1))
    return difference, difference - half, difference + half


def cell_accuracy_difference(first: dict[str, Any], second: dict[str, Any], name: str, *,
                             num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
                             ) -> tuple[float, float, float] | None:
    """`first` minus `second` accuracy on benchmark `name`, two cells (of `cells`) each the mean of its runs, with
    `cell_difference`'s two shares: the items (the paired bootstrap of `difference_with_ci`, over the runs'
    averaged outcomes) and, with 2+ runs in both cells, the runs' own accuracies on the same items (Welch). With
    one run in each, exactly `difference_with_ci`. None when a run has no stored outcomes for it, or the runs
    scored other items."""
    results = [[row["accuracies"].get(name) for row in cell.get("replicates", [cell])] for cell in (first, second)]
    every = [result for side in results for result in side]
    if any(result is None or result.outcomes is None or result.aggregation != every[0].aggregation
           or result.groups() != every[0].groups() for result in every):
        return None
    outcomes = [np.mean([result.outcomes for result in side], axis=0) for side in results]
    difference, draws = accuracy_draws(outcomes[0] - outcomes[1], every[0].groups(), aggregation=every[0].aggregation,
                                       num_resamples=num_resamples, seed=seed)
    return _with_run_spread(difference, draws, [[result.accuracy for result in side] for side in results],
                            confidence)


def best_runs(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """The cell (`cells`: a run, or the mean of a cell's replicates) with the lowest speech CE for each
    (variant, budget) of an isoFLOP grid: the compute envelope."""
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for row in cells(rows):
        key = (row["variant"], row["budget"])
        if row["budget"] is None or row.get("loss_speech") is None:
            continue  # a tokens-per-parameter run has no budget to share
        if key not in best or row["loss_speech"] < best[key]["loss_speech"]:
            best[key] = row
    return best


def _count(number: float) -> str:
    """A parameter count in 3 figures: 11.6k, 135M, 7.62B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if number >= scale:
            return f"{number / scale:.3g}{suffix}"
    return f"{number:.0f}"


def status_table(sweep_dir: str | os.PathLike) -> str:
    """A line per run: status, size, budget and, when finished, losses and accuracies; its seed when the spec
    has several (a run planned before the spec had seeds keeps its name without one)."""
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    seeds = bool(sweep["spec"].get("seeds"))
    finished = {row["id"]: row for row in collect(sweep_dir)}
    lines = [f"{'run':<44} {'status':<12} {'size':>6} {'params':>7} {'budget':>8} " + ("seed " if seeds else "") +
             f"{'speech CE':>9}  accuracies"]
    counts: dict[str, int] = {}
    failed = []
    ledger = cluster_jobs(Path(sweep_dir))
    for run in sweep["runs"]:
        status = run_status(run, bench, ledger)
        counts[status] = counts.get(status, 0) + 1
        if status == "failed":
            failed.append(run)
        row = finished.get(run["id"], {})
        accuracies = " ".join(f"{name}={result.accuracy:.3f}" for name, result in row.get("accuracies", {}).items())
        speech = f"{row['loss_speech']:.3f}" if row.get("loss_speech") is not None else "-"
        parameters = _count(row["parameters"]) if row else "-"
        grid_point = f"{run['budget_flops']:>8.1e}" if run.get("budget_flops") else \
            f"{run.get('tokens_per_parameter', 0):>5g} tpp"
        seed = f"{run['config'].get('seed', 0):>4} " if seeds else ""
        # How far a run not finished got (a run on a cluster is otherwise `running` for hours without a sign).
        progress = training_progress(run["config"]["run_dir"]) if status in ("running", "started", "failed",
                                                                             "queued") else None
        shown = f"{status} {100 * progress[0] // progress[1]}%" if progress else status
        lines.append(f"{run['id']:<44} {shown:<12} {run.get('member', ''):>6} {parameters:>7} {grid_point:>8} "
                     f"{seed}{speech:>9}  {accuracies}")
    lines.append("total: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    lines += [f"failed {run['id']}: {(run_error(run) or '')[:300]}" for run in failed]
    return "\n".join(lines)


def attach_loss_curves(rows: list[dict[str, Any]]) -> tuple[str, int, int]:
    """Put each run's curve of speech CE under `curve` (None when it has none), for approach 1: held out, as the
    other approaches' losses, when every run validated during training (`validation_every`; Cuervo & Marxer's
    envelope is of test loss), else training loss (Chinchilla's envelope is of training loss). Returns which kind
    of curve, how many runs have a speech loss, and how many of those have a held-out curve."""
    scored = [row for row in rows if row.get("loss_speech") is not None]
    for row in rows:
        row["curve"] = loss_curve(row["run_dir"], "loss_speech", validation=True)
    validated = sum(row["curve"] is not None for row in scored)
    if validated == len(scored):
        return "validation", len(scored), validated
    for row in rows:
        row["curve"] = loss_curve(row["run_dir"], "loss_speech")
    return "training", len(scored), validated


def fit_sweep(sweep_dir: str | os.PathLike, *, convention: str = "all", num_resamples: int = 1000,
              num_workers: int = 1, seed: int = 0, out: str | os.PathLike | None = None,
              estimator: str = "huber", bootstrap: str = "runs") -> dict[str, Any]:
    """Fit every variant's runs (speech CE; accuracies against compute) and write them to `out` (default: the
    sweep's `fit.json`, which the report reads)."""
    import numpy as np

    rows = collect(sweep_dir)
    if not rows:
        # An empty fit.json would replace a good one: refused instead.
        raise ValueError(f"{sweep_dir}: no finished run to fit (see `simslm sweep status {sweep_dir}`)")
    fits: dict[str, Any] = {"convention": convention, "loss": "speech-only cross-entropy (validation when given)",
                            "variants": {}}
    for variant in sorted({row["variant"] for row in rows}):
        chosen = [row for row in rows if row["variant"] == variant]
        kind, scored, validated = attach_loss_curves(chosen)
        points = points_from_rows(chosen, convention=convention, curve_kind=kind)
        if len(points) < 3:
            continue
        # Accuracy against C = 6 N D in the fit's own count of N, as its laws read C.
        compute = (lambda r: r["flops"]) if convention == "all" else \
            (lambda r: 6.0 * r["non_embedding_parameters"] * r["tokens"])
        metrics = {name: (np.array([compute(r) for r in chosen if name in r["accuracies"]]),
                          np.array([r["accuracies"][name].accuracy for r in chosen if name in r["accuracies"]]))
                   for name in sorted({name for r in chosen for name in r["accuracies"]})}
        fits["variants"][variant] = fit_all(points, num_resamples=num_resamples, seed=seed, convention=convention,
                                            metrics=metrics, num_workers=num_workers, estimator=estimator,
                                            bootstrap=bootstrap)
        if 0 < validated < scored:
            fits["variants"][variant]["warnings"].append(
                f"approach 1 reads training curves: {scored - validated} of {scored} run(s) have no "
                f"validation curve (2 or more validations; train with validation_every)")
        without = [row["id"] for row in chosen if row["curve"] is None and row.get("loss_speech") is not None]
        if without:
            fits["variants"][variant]["warnings"].append(
                f"approach 1 is the envelope of final losses, not of training curves: {len(without)} run(s) have no "
                f"training curve of speech CE in metrics.jsonl ({', '.join(without[:3])}{', ...' if len(without) > 3 else ''})")
        off = [row["id"] for row in chosen if row["budget"] and abs(row["flops"] / row["budget"] - 1) > OFF_BUDGET]
        if off:
            fits["variants"][variant]["warnings"].append(
                f"{len(off)} run(s) trained more than {OFF_BUDGET:.0%} off their isoFLOP budget ({', '.join(off[:3])}"
                f"{', ...' if len(off) > 3 else ''}): steps are whole batches, so a budget of a few steps or less at "
                f"a size cannot be met, and approach 2 takes each as at its budget")
        if len({row["loss_source"] for row in chosen}) > 1:
            fits["variants"][variant]["warnings"].append(
                f"its runs' speech CE is of two kinds, {loss_kind(chosen)}: the law mixes held-out losses with "
                f"training ones; give every run the same validation data")
        for name in metrics:  # a quick look's sample of pairs (`eval --max-pairs`), which `sweep run` scores again
            sampled = [r["id"] for r in chosen if getattr(r["accuracies"].get(name), "sampled_from", None)]
            if sampled:
                fits["variants"][variant]["warnings"].append(
                    f"{name}: in {len(sampled)} run(s) scored on a sample of its pairs (eval --max-pairs: "
                    f"{', '.join(sampled[:3])}{', ...' if len(sampled) > 3 else ''}); `simslm sweep run` scores "
                    f"them whole")
            stale = [r["id"] for r in chosen if name in r.get("stale", ())]
            if stale:
                fits["variants"][variant]["warnings"].append(
                    f"{name}: in {len(stale)} run(s) scored on an earlier build of its benchmark folder "
                    f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); `simslm sweep run` scores them "
                    f"on the folder there now")
        for name in metrics:  # benchmark sides that outgrew the models' positions (`BenchmarkResult.num_cut`)
            results = [r["accuracies"][name] for r in chosen if getattr(r["accuracies"].get(name), "num_cut", 0)]
            for long_sides in sorted({result.long_sides for result in results}):
                most = max((r.num_cut, 2 * r.num_pairs, r.context) for r in results if r.long_sides == long_sides)
                count = sum(r.long_sides == long_sides for r in results)
                fits["variants"][variant]["warnings"].append(
                    f"{name}: in {count} run(s), sides longer than the model's positions (up to {most[0]} of "
                    f"{most[1]}, at {most[2]} positions): {long_sides_note(long_sides)}")
    out = Path(out) if out else Path(sweep_dir) / "fit.json"
    # Which sweep it fits, relative to where it is written ("." for the sweep's own), as a table's fit says which
    # table: a fit.json written elsewhere with --out would otherwise not say.
    fits["source"] = jobs.portable_path(sweep_dir, out.parent)["relative"]
    # The runs it fitted: `report` says when the sweep has finished others since (a fit.json gone stale).
    fits["runs"] = sorted(row["id"] for row in rows if row.get("loss_speech") is not None)
    jobs.write_json(out, fits)
    return fits


@dataclass(frozen=True, kw_only=True)
class PlanSweepConfig(Config):
    """What `simslm sweep plan` does."""

    spec: str
    """Sweep spec, JSON: variants; the sizes as families (lists of models) or depths (with family); the grid as
    budgets_flops or tokens_per_parameter; validation_data, bench, eval_modes, train, bracket_models. Its paths
    are read as the command line's are, from the current folder; the sweep stores them relative to itself."""
    out: str
    """Sweep folder (sweep.json and runs/)."""


@dataclass(frozen=True, kw_only=True)
class RunSweepConfig(Config):
    """What `simslm sweep run` does."""

    sweep: str
    """Sweep folder from `simslm sweep plan`."""
    executor: str = field(default="local", metadata=registry_choices(EXECUTORS))
    """local (subprocesses here) or slurm (through submitit)."""
    nproc_per_run: int = 1
    """Processes per run: torchrun on this machine (local), tasks per node (slurm); FSDP needs 2 or more."""
    num_parallel: int = 2
    """local: runs at once."""
    threads_per_run: int = 1
    """local: threads per run."""
    fresh_processes: bool = False
    """local: start every run in a new interpreter. By default a one-process run on a machine without CUDA is a
    fork of a server that has imported torch and transformers once, which saves each run ~6 s of imports."""
    gpus: str = ""
    """local: GPUs to place runs on (e.g. 0,1,2,3); each run gets nproc_per_run of them, one run per group."""
    cluster: str | None = None
    """slurm: submitit cluster (slurm, local or debug; default: slurm where sbatch is on PATH;
    elsewhere local must be asked for)."""
    nodes: int = 1
    """slurm: nodes per run."""
    gpus_per_node: int = 0
    """slurm: GPUs per node of a run's job."""
    cpus_per_task: int = 0
    """slurm: CPUs per task (0: the cluster's default)."""
    mem_gb: float = 0
    """slurm: memory per node in GB (0: the cluster's default)."""
    slurm_partition: str = ""
    """slurm: partition."""
    slurm_account: str = ""
    """slurm: account to charge."""
    slurm_qos: str = ""
    """slurm: quality of service."""
    array_parallelism: int = 0
    """slurm: runs of the job array at once (0: no limit)."""
    sbatch: tuple[str, ...] = ()
    """slurm: extra sbatch options as key=value (e.g. constraint=h100 exclusive=)."""
    timeout_min: int = 240
    """slurm: time limit per job in minutes."""
    max_requeues: int = jobs.MAX_REQUEUES
    """slurm: times a job that reaches its time limit is requeued; each resumes its run from a checkpoint saved
    when the job was warned."""
    warning_s: int = jobs.WARNING_S
    """slurm: seconds before the time limit at which a job is warned: time to finish the step in hand and save a
    checkpoint (raise it for a large model on a slow disk)."""
    wait: bool = True
    """slurm: wait for the jobs; with --no-wait, submit and return (then `sweep status` / `sweep wait`)."""
    bracket: bool = False
    """Then grow the grid until every budget's best size is inside it: the next depth (a new `textlm` member
    pretrained) or the next of bracket_models, repeated; what cannot be bracketed goes into bracket.json."""

    def check(self) -> None:
        check_positive(self, "num_parallel", "threads_per_run", "timeout_min", "nproc_per_run", "nodes", "warning_s")
        check_positive(self, "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism", "max_requeues",
                       allow_zero=True)
        for option in self.sbatch:
            if "=" not in option:
                raise ConfigError(f"--sbatch takes key=value, not '{option}'")
        if self.executor == "local" and self.nodes != 1:
            raise ConfigError("--nodes needs --executor slurm: the local executor runs on this machine")


@dataclass(frozen=True, kw_only=True)
class WaitConfig(Config):
    """What `simslm sweep wait` does."""

    sweep: str
    """Sweep folder whose submitted jobs to follow."""
    poll_sec: float = 30.0
    """Seconds between looks at the jobs."""

    def check(self) -> None:
        check_positive(self, "poll_sec")


@dataclass(frozen=True, kw_only=True)
class RunOneConfig(Config):
    """What `simslm sweep run-one` does (the executors call it)."""

    sweep: str
    """Sweep folder."""
    run_id: str
    """Id of the run in sweep.json."""


@dataclass(frozen=True, kw_only=True)
class StatusConfig(Config):
    """What `simslm sweep status` does."""

    sweep: str
    """Sweep folder."""


# Where `simslm fit SWEEP --convention non_embedding` writes: the sweep's fit.json is the report's law, in the
# paper's count of N (all parameters).
NON_EMBEDDING_FIT = "fit.non_embedding.json"


@dataclass(frozen=True, kw_only=True)
class FitConfig(Config):
    """What `simslm fit` does."""

    source: str
    """Sweep folder, or a CSV, TSV or JSONL table (parameters, tokens or flops, loss; optional budget)."""
    convention: Literal["all", "non_embedding"] = "all"
    """Parameters counted in N (all: the paper's)."""
    num_resamples: int = 1000
    """Bootstrap resamples."""
    num_workers: int = 1
    """Worker processes for the bootstrap."""
    estimator: Literal["huber", "likelihood"] = "huber"
    """Approach 3's estimator: huber (Hoffmann et al.'s fit) or likelihood (the Huber likelihood behind Besiroglu
    et al.'s reported estimates)."""
    bootstrap: Literal["runs", "budgets"] = "runs"
    """Approach 3's bootstrap: runs (Besiroglu et al.'s: each resample draws from all the runs) or budgets (within
    each isoFLOP budget, so that every resample keeps the grid's design; somewhat narrower intervals)."""
    out: str | None = None
    """Where fit.json goes (default: beside a table, or the sweep folder's own, which `simslm report` reads; a
    non_embedding fit of a sweep goes to its fit.non_embedding.json)."""
    columns: tuple[str, ...] = ()
    """A table's own column names, as simslm=theirs: e.g. parameters="Model Size" flops="Training FLOP" for Epoch
    AI's extraction of Chinchilla's runs (simslm's names: parameters, non_embedding_parameters, tokens, flops, loss,
    budget)."""

    def check(self) -> None:
        check_positive(self, "num_resamples", "num_workers")
        for item in self.columns:
            ours, _, theirs = item.partition("=")
            if ours not in TABLE_COLUMNS or not theirs:
                raise ConfigError(f"--columns takes {'=, '.join(TABLE_COLUMNS)}= followed by a column's name, not "
                                  f"'{item}'")
        if self.columns and Path(self.source).is_dir():
            raise ConfigError("--columns names a table's columns; a sweep folder's runs need none")
        check_output_file(self, "out", "the fit (a JSON file)")  # refused before the fit, not after it
        check_not_input(self, "out", "source", "the table being fitted, which the fit would replace")
        if self.out is not None:
            owner = Path(self.out).parent
            # A sweep's own fit.json is what `report` and `plan` read as the sweep's law, which the report draws
            # at the compute its runs were planned in: C = 6 N D with all parameters.
            if Path(self.out).name == "fit.json" and (owner / SWEEP_FILE).is_file():
                if os.path.realpath(owner) != os.path.realpath(self.source):
                    raise ConfigError(f"{self.out}: the fit of sweep {owner}, which `simslm report` reads as that "
                                      f"sweep's law; write this fit to another --out")
                if self.convention != "all":
                    raise ConfigError(f"{self.out}: the sweep's law, which `simslm report` draws with N as all "
                                      f"parameters; write the {self.convention} fit to another --out (by default "
                                      f"{owner / NON_EMBEDDING_FIT})")


def fit_source(config: FitConfig) -> tuple[dict[str, Any], Path]:
    """Fit a sweep folder or a table as `simslm fit` asks; the fits and where they were written."""
    source = Path(config.source)
    unwritable = "pass --out FILE to write the fit elsewhere"
    if source.is_dir():
        out = Path(config.out) if config.out else source / ("fit.json" if config.convention == "all" else
                                                             NON_EMBEDDING_FIT)
        jobs.refuse_unwritable(out, unwritable)  # before the bootstrap, not after it
        fits = fit_sweep(source, convention=config.convention, num_resamples=config.num_resamples,
                         num_workers=config.num_workers, out=out, estimator=config.estimator,
                         bootstrap=config.bootstrap)
        return fits, out
    points = read_table(source, convention=config.convention,  # a missing table is said as such first
                        columns=dict(item.partition("=")[::2] for item in config.columns))
    out = Path(config.out or source.with_suffix(".fit.json"))
    jobs.refuse_unwritable(out, unwritable)
    fits = {"convention": config.convention, "source": jobs.portable_path(source, out.parent)["relative"],
            "variants": {source.stem: fit_all(points, num_resamples=config.num_resamples, convention=config.convention,
                                              num_workers=config.num_workers, estimator=config.estimator,
                                              bootstrap=config.bootstrap)}}
    jobs.write_json(out, fits)
    return fits, out


@dataclass(frozen=True, kw_only=True)
class ReportConfig(Config):
    """What `simslm report` does."""

    sweep: str
    """Sweep folder (its fit.json is computed first when missing)."""
    out: str | None = None
    """Folder for index.html and its figures (default: the sweep's `report` folder); a fit computed for it goes
    there too when the sweep folder cannot be written (a colleague's sweep)."""

    def check(self) -> None:
        if self.out and Path(self.out).is_file():
            raise ConfigError(f"--out {self.out}: a file, where the report's folder is needed")
