"""Sweeps: a grid of runs over model sizes, planned into `sweep.json`.

`plan_sweep` turns a spec (sizes as real model families or simslm's depths; an isoFLOP or
tokens-per-parameter grid; variants) into `sweep.json`: one TrainConfig per (variant, size,
grid point), each with a run id hashed from its content, so a changed setting is a new run
and an unchanged one is recognised as already done. `load_sweep` reads it back, its paths
placed where the sweep folder is now. The rest of a sweep's life is in the modules beside
this one: `ledger` (each run's status, read from its folder), `execute` (the executors),
`bracket` (growing the grid) and `collect` (the finished runs' rows, cells and fit).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from simslm import assets, storage
from simslm import model as model_lib
from simslm.config import Config, home_expanded
from simslm.eval.evaluate import benchmark_kind, repeated_label
from simslm.eval.layouts import CROSS_MODES, HUB_DATASET, detect_layout
from simslm.sequences.build import speech_units_folder
from simslm.sequences.loader import index_digest
from simslm.sequences.vocabulary import Vocabulary, load_base_tokenizer, speech_vocabulary
from simslm.train.build import another_tokenizer
from simslm.train.loop import validation_mismatch, validation_overlap
from simslm.train.plan import TrainConfig

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
            return cls.from_json(storage.read_json(path))
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


def check_benchmarks(spec: dict[str, Any]) -> None:
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
    from simslm.units.folder import unit_source

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


def growing(sweep_dir: Path):
    """Hold the sweep's lock for a change of sweep.json (read, grown, written), waiting for another process's: two
    `sweep run --bracket` of one sweep (on two machines, say) each grew the grid from what it had read, and the
    later write dropped the other's sizes from sweep.json while that process trained their runs."""
    return storage.exclusive_lock_waiting(sweep_dir / SWEEP_LOCK,
                                          f"{sweep_dir}: another process is planning or growing this sweep; waiting")


def plan_sweep(spec: SweepSpec, out: str | os.PathLike) -> dict[str, Any]:
    """Write `sweep.json`: the grid of run configs (existing runs with the same content keep their ids)."""
    out = Path(out)  # made once the grid is planned: a spec refused leaves no folder behind
    with growing(out) if (out / SWEEP_FILE).exists() else contextlib.nullcontext():
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
    check_benchmarks(asdict(spec))
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
        check_inputs_unchanged(earlier, {key: {anchors.placed(path): digest for path, digest in found.items()}
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
    storage.write_json(out / SWEEP_FILE, {"spec": stored_spec, "runs": runs, "anchors": anchors.anchors, **digests})
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
        lambda path: storage.content_digest(path) if Path(path).exists() else None,
        "changed since the sweep was planned (its files differ): the sweep's TWIST runs so far started from the "
        "model before. Plan a new sweep (another --out) for the new model, or keep it in a new folder"),
}


def check_inputs_unchanged(sweep: dict[str, Any], now: dict[str, dict[str, str]] | None = None) -> None:
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
    sweep = storage.read_json(path)
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


@dataclass(frozen=True, kw_only=True)
class PlanSweepConfig(Config):
    """What `simslm sweep plan` does."""

    spec: str
    """Sweep spec, JSON: variants; the sizes as families (lists of models) or depths (with family); the grid as
    budgets_flops or tokens_per_parameter; validation_data, bench, eval_modes, train, bracket_models. Its paths
    are read as the command line's are, from the current folder; the sweep stores them relative to itself."""
    out: str
    """Sweep folder (sweep.json and runs/)."""

