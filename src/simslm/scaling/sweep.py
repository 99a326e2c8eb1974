"""Sweeps: an isoFLOP grid of runs, a ledger read from the run directories, and executors.

`plan_sweep` turns a spec (size family, FLOP budgets, variants) into `sweep.json`: one
TrainConfig per (variant, depth, budget), each with a run id hashed from its content, so
a changed setting is a new run and an unchanged one is recognised as already done. The
ledger is the run directories themselves: a run is finished when its `result.json`
(written last and atomically by `train`) and its `eval.json` exist, so a half-written
result is never read and a finished run is never repeated. A run in progress holds an
exclusive lock on `<run>/.lock` (released by the OS when its process dies), so a
restarted sweep neither duplicates it nor waits on a dead one.

Executors register by name: `local` runs several runs at once as subprocesses (each with
its share of the cores), `slurm` submits them through submitit (its `local` cluster runs
the same code without SLURM, which is how it is tested here).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from simslm import jobs
from simslm.config import Config, check_positive, registry_choices
from simslm.eval.evaluate import read_results
from simslm.scaling.fit import fit_all, points_from_rows, read_table
from simslm.train import RunResult, TrainConfig

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One recipe of the sweep: its training data and initialisation."""

    name: str
    data: str
    """Sequences folder (interleaved + speech + text, or speech only for a textless variant)."""
    init: str = "twist"
    """twist: start from the text-LM family member; random: same architecture from scratch."""


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """What `simslm sweep plan` reads (JSON)."""

    variants: tuple[Variant, ...]
    depths: tuple[int, ...]
    """Family depths (width = 32 x depth)."""
    budgets_flops: tuple[float, ...]
    """Training compute per run, C = 6 N D."""
    family: str = ""
    """Folder from `simslm textlm pretrain` (its depth-N/model is the TWIST source); '' = random only."""
    validation_data: str = ""
    """Speech-only held-out sequences: the loss the fits use (the paper's speech CE)."""
    bench: tuple[str, ...] = ()
    """Benchmarks each run is evaluated on after training (as `simslm eval --bench`)."""
    eval_modes: tuple[str, ...] = ("S", "T")
    """Cross-modal modes each run is evaluated in."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields shared by every run (batch_size, lr, ...)."""

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
        if not self.depths or not all(isinstance(d, int) and d >= 1 for d in self.depths):
            raise ValueError(f"depths must be whole numbers >= 1, not {list(self.depths)}")
        if not self.budgets_flops or not all(isinstance(b, (int, float)) and 0 < b < float("inf")
                                             for b in self.budgets_flops):
            raise ValueError(f"budgets_flops must be finite numbers > 0, not {list(self.budgets_flops)}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SweepSpec":
        if not isinstance(data, dict):
            raise ValueError("a sweep spec is a JSON object")
        missing = [key for key in ("variants", "depths", "budgets_flops") if key not in data]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(missing)}")
        values = dict(data)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown sweep spec key(s): {', '.join(sorted(unknown))}")
        try:
            values["variants"] = tuple(Variant(**v) for v in data["variants"])
            for key in ("depths", "budgets_flops", "bench", "eval_modes"):
                if key in values:
                    values[key] = tuple(values[key])
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


def run_id(variant: str, depth: int, budget: float, config: dict[str, Any]) -> str:
    """Readable prefix plus a hash of everything that defines the run (run_dir excluded)."""
    content = json.dumps({k: v for k, v in config.items() if k != "run_dir"}, sort_keys=True)
    return f"{variant}-d{depth}-c{budget:.0e}-{hashlib.sha256(content.encode()).hexdigest()[:8]}".replace("+", "")


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
        here = self.folder / value
        return str(here) if here.exists() else self.anchors[value]

    def bench(self, entries: tuple[str, ...] | list[str], convert: Callable[[str | None], str | None]) -> list[str]:
        """`label=path` (or `path`) entries with their paths converted."""
        return [f"{entry.split('=', 1)[0]}={convert(entry.split('=', 1)[1])}" if "=" in entry else convert(entry)
                for entry in entries]


def plan_sweep(spec: SweepSpec, out: str | os.PathLike) -> dict[str, Any]:
    """Write `sweep.json`: the grid of run configs (existing runs with the same content keep their ids)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    anchors = _Anchors(out)
    for variant in spec.variants:
        if not (Path(variant.data) / "index.json").exists():
            raise ValueError(f"{variant.data}: no index.json (variant {variant.name} needs a `simslm sequences "
                             f"build` folder)")
    if spec.validation_data and not (Path(spec.validation_data) / "index.json").exists():
        raise ValueError(f"{spec.validation_data}: no index.json (validation_data needs a `simslm sequences build` "
                         f"folder)")
    runs = []
    for variant in spec.variants:
        for depth in spec.depths:
            if variant.init == "twist":
                if not spec.family:
                    raise ValueError(f"variant {variant.name} uses TWIST but the spec names no text-LM family")
                base_model = str(Path(spec.family) / f"depth-{depth}" / "model")
                if not Path(base_model).exists():
                    raise ValueError(f"{base_model} does not exist: the family has no depth {depth}")
            else:
                base_model = f"family:{depth}"
            for budget in spec.budgets_flops:
                # Paths relative to the sweep folder: the run ids do not depend on where `sweep plan` ran.
                values = {**spec.train, "data": anchors.anchored(variant.data),
                          "base_model": anchors.anchored(base_model), "init": variant.init,
                          "budget_flops": float(budget), "budget_tokens": None,
                          "validation_data": anchors.anchored(spec.validation_data) or None}
                config = asdict(TrainConfig(run_dir="", **values))
                identifier = run_id(variant.name, depth, budget, config)
                config["run_dir"] = f"runs/{identifier}"  # relative to the sweep folder: see load_sweep
                runs.append({"id": identifier, "variant": variant.name, "depth": depth, "budget_flops": float(budget),
                             "config": config})
    stored_spec = _jsonable(asdict(spec))
    stored_spec.update(family=anchors.anchored(spec.family), validation_data=anchors.anchored(spec.validation_data),
                       bench=anchors.bench(spec.bench, anchors.anchored))
    for variant in stored_spec["variants"]:
        variant["data"] = anchors.anchored(variant["data"])
    jobs.write_json(out / SWEEP_FILE, {"spec": stored_spec, "runs": runs, "anchors": anchors.anchors})
    return load_sweep(out)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def load_sweep(folder: str | os.PathLike) -> dict[str, Any]:
    """sweep.json, each run's folder placed under this sweep folder (wherever it is now: a copied or
    moved sweep keeps its ledger)."""
    path = Path(folder) / SWEEP_FILE
    if not path.exists():
        raise ValueError(f"{folder}: no {SWEEP_FILE}; run `simslm sweep plan` first")
    sweep = jobs.read_json(path)
    anchors = _Anchors(Path(folder), sweep.get("anchors"))
    for run in sweep["runs"]:
        run["config"]["run_dir"] = str(Path(folder) / "runs" / run["id"])
        for key in ("data", "base_model", "validation_data"):
            if key in run["config"]:
                run["config"][key] = anchors.placed(run["config"][key])
    spec = sweep["spec"]
    spec.update(family=anchors.placed(spec.get("family")), validation_data=anchors.placed(spec.get("validation_data")),
                bench=anchors.bench(spec.get("bench") or (), anchors.placed))
    for variant in spec.get("variants", ()):
        variant["data"] = anchors.placed(variant.get("data"))
    return sweep


# --- the ledger ---------------------------------------------------------------------------------


def _locked(run_dir: Path) -> bool:
    lock = run_dir / ".lock"
    if not lock.exists():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _evaluated(run_dir: Path, bench: tuple[str, ...]) -> bool:
    """Whether eval.json holds a result for every benchmark the sweep asks for."""
    evaluated = jobs.read_json(run_dir / "eval.json")["benchmarks"] if (run_dir / "eval.json").exists() else {}
    labels = {name.split("=", 1)[0] if "=" in name else Path(name).name for name in bench}
    return all(any(key == label or key.startswith(label + "/") for key in evaluated) for label in labels)


def run_status(run: dict[str, Any], bench: tuple[str, ...]) -> str:
    """done, evaluating (trained, evaluation missing), running (locked), started (resumable) or pending."""
    run_dir = Path(run["config"]["run_dir"])
    if _locked(run_dir):
        return "running"
    if (run_dir / "result.json").exists():
        return "done" if _evaluated(run_dir, bench) else "evaluating"
    return "started" if (run_dir / "config.json").exists() else "pending"


def execute_run(sweep_dir: str, identifier: str) -> str:
    """Train (or resume) one run and evaluate it, holding its lock; returns its final status."""
    sweep = load_sweep(sweep_dir)
    run = next((r for r in sweep["runs"] if r["id"] == identifier), None)
    if run is None:
        raise ValueError(f"{sweep_dir}: no run {identifier}")
    spec = sweep["spec"]
    run_dir = Path(run["config"]["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "running"
        if not (run_dir / "result.json").exists():
            from simslm.train import train

            train(TrainConfig(**run["config"]))
        bench = tuple(spec.get("bench") or ())
        if not _evaluated(run_dir, bench):
            from simslm.eval.evaluate import EvalConfig, evaluate_run

            evaluate_run(EvalConfig(run=str(run_dir), bench=bench, modes=spec.get("eval_modes", ("S", "T")),
                                    num_workers=1))
    return "done"


# --- executors ------------------------------------------------------------------------------------


def _local(sweep_dir: Path, runs: list[dict[str, Any]], *, num_parallel: int, threads_per_run: int,
           **_: Any) -> None:
    """Run up to `num_parallel` runs at once, each a subprocess with `threads_per_run` threads."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads_per_run), "MKL_NUM_THREADS": str(threads_per_run)}
    waiting = list(runs)
    active: dict[str, tuple[subprocess.Popen, Any]] = {}  # run id -> (process, its log file)
    tracker = jobs.Progress(len(runs), "sweep runs", unit="run")
    failures = []
    try:
        while waiting or active:
            while waiting and len(active) < num_parallel:
                run = waiting.pop(0)
                log = open(Path(run["config"]["run_dir"]).parent / f"{run['id']}.log", "a")
                active[run["id"]] = (subprocess.Popen(
                    [sys.executable, "-m", "simslm", "sweep", "run-one", str(sweep_dir), run["id"]],
                    stdout=log, stderr=subprocess.STDOUT, env=environment), log)
            time.sleep(0.2)
            for identifier, (process, log) in list(active.items()):
                if process.poll() is not None:
                    del active[identifier]
                    log.close()
                    tracker.update()
                    if process.returncode != 0:
                        failures.append(identifier)
    finally:
        for process, _ in active.values():  # interrupted: stop the children too (their runs resume later)
            process.terminate()
        for process, log in active.values():
            process.wait()
            log.close()
        tracker.close()
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed: {', '.join(failures)} "
                           f"(see {sweep_dir}/runs/<id>.log); re-run `simslm sweep run` to retry them")


def _slurm(sweep_dir: Path, runs: list[dict[str, Any]], *, cluster: str | None = None, slurm_partition: str = "",
           timeout_min: int = 240, gpus_per_node: int = 0, **_: Any) -> None:
    """Submit each run as a job through submitit (cluster=local runs them here, for testing)."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(sweep_dir / "submitit"), cluster=cluster)
    parameters = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_node}
    if slurm_partition:
        parameters["slurm_partition"] = slurm_partition
    executor.update_parameters(**parameters)
    submitted = [executor.submit(execute_run, str(sweep_dir), run["id"]) for run in runs]
    for job in jobs.progress(submitted, "sweep jobs"):
        job.result()


EXECUTORS: dict[str, Callable[..., None]] = {"local": _local, "slurm": _slurm}


def run_sweep(sweep_dir: str | os.PathLike, *, executor: str = "local", **options: Any) -> dict[str, int]:
    """Execute every run that is not done yet; returns the count of runs by status afterwards."""
    sweep_dir = Path(sweep_dir)
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    todo = [run for run in sweep["runs"] if run_status(run, bench) not in ("done", "running")]
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor '{executor}'; known: {', '.join(EXECUTORS)}")
    if todo:
        EXECUTORS[executor](sweep_dir, todo, **options)
    return status_counts(sweep_dir)


def status_counts(sweep_dir: str | os.PathLike) -> dict[str, int]:
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    counts: dict[str, int] = {}
    for run in sweep["runs"]:
        status = run_status(run, bench)
        counts[status] = counts.get(status, 0) + 1
    return counts


# --- collecting results ---------------------------------------------------------------------------


def collect(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per finished run: variant, size, tokens, FLOPs, losses, and `accuracies` (benchmark -> result)."""
    rows = []
    for run in load_sweep(sweep_dir)["runs"]:
        run_dir = Path(run["config"]["run_dir"])
        if not RunResult.exists(run_dir):
            continue
        result = RunResult.load(run_dir)
        losses = result.comparison_losses
        row = {"id": run["id"], "run_dir": str(run_dir), "variant": run["variant"], "depth": run["depth"],
               "budget": run["budget_flops"],
               "parameters": result.parameters.total,
               "non_embedding_parameters": result.parameters.non_embedding,
               "tokens": result.tokens, "flops": result.flops,
               "loss_speech": losses.loss_speech, "loss": losses.loss,
               "loss_source": "validation" if result.held_out else "final train",
               "accuracies": read_results(run_dir)}
        rows.append(row)
    return rows


def best_runs(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """The run with the lowest speech CE for each (variant, budget): the compute envelope."""
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for row in rows:
        key = (row["variant"], row["budget"])
        if row.get("loss_speech") is not None and (key not in best or row["loss_speech"] < best[key]["loss_speech"]):
            best[key] = row
    return best


def status_table(sweep_dir: str | os.PathLike) -> str:
    """A line per run: status, size, budget and, when finished, losses and accuracies."""
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    finished = {row["id"]: row for row in collect(sweep_dir)}
    lines = [f"{'run':<44} {'status':<10} {'params':>9} {'budget':>8} {'speech CE':>9}  accuracies"]
    counts: dict[str, int] = {}
    for run in sweep["runs"]:
        status = run_status(run, bench)
        counts[status] = counts.get(status, 0) + 1
        row = finished.get(run["id"], {})
        accuracies = " ".join(f"{name}={result.accuracy:.3f}" for name, result in row.get("accuracies", {}).items())
        speech = f"{row['loss_speech']:.3f}" if row.get("loss_speech") is not None else "-"
        parameters = f"{row['parameters'] / 1e6:.2f}M" if row else "-"
        lines.append(f"{run['id']:<44} {status:<10} {parameters:>9} {run['budget_flops']:>8.1e} "
                     f"{speech:>9}  {accuracies}")
    lines.append("total: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return "\n".join(lines)


def fit_sweep(sweep_dir: str | os.PathLike, *, convention: str = "all", num_resamples: int = 1000,
              num_workers: int = 1, seed: int = 0) -> dict[str, Any]:
    """Fit every variant's runs (speech CE; accuracies against compute) and write `fit.json`."""
    import numpy as np


    rows = collect(sweep_dir)
    if not rows:
        # An empty fit.json would replace a good one: refused instead.
        raise ValueError(f"{sweep_dir}: no finished run to fit (see `simslm sweep status {sweep_dir}`)")
    fits: dict[str, Any] = {"convention": convention, "loss": "speech-only cross-entropy (validation when given)",
                            "variants": {}}
    for variant in sorted({row["variant"] for row in rows}):
        chosen = [row for row in rows if row["variant"] == variant]
        points = points_from_rows(chosen, convention=convention)
        if len(points) < 3:
            continue
        metrics = {name: (np.array([r["flops"] for r in chosen if name in r["accuracies"]]),
                          np.array([r["accuracies"][name].accuracy for r in chosen if name in r["accuracies"]]))
                   for name in sorted({name for r in chosen for name in r["accuracies"]})}
        fits["variants"][variant] = fit_all(points, num_resamples=num_resamples, seed=seed,
                                                    convention=convention, metrics=metrics, num_workers=num_workers)
    jobs.write_json(Path(sweep_dir) / "fit.json", fits)
    return fits


@dataclass(frozen=True, kw_only=True)
class PlanSweepConfig(Config):
    """What `simslm sweep plan` does."""

    spec: str
    """Sweep spec, JSON: variants, depths, budgets_flops, family, validation_data, bench, eval_modes, train."""
    out: str
    """Sweep folder (sweep.json and runs/)."""


@dataclass(frozen=True, kw_only=True)
class RunSweepConfig(Config):
    """What `simslm sweep run` does."""

    sweep: str
    """Sweep folder from `simslm sweep plan`."""
    executor: str = field(default="local", metadata=registry_choices(EXECUTORS))
    """local (subprocesses here) or slurm (through submitit)."""
    num_parallel: int = 2
    """local: runs at once."""
    threads_per_run: int = 1
    """local: threads per run."""
    cluster: str | None = None
    """slurm: submitit cluster (slurm, local or debug; default: detected)."""
    slurm_partition: str = ""
    """slurm: partition."""
    timeout_min: int = 240
    """slurm: time limit per job in minutes."""
    gpus_per_node: int = 0
    """slurm: GPUs per job."""

    def check(self) -> None:
        check_positive(self, "num_parallel", "threads_per_run", "timeout_min")
        check_positive(self, "gpus_per_node", allow_zero=True)


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


@dataclass(frozen=True, kw_only=True)
class FitConfig(Config):
    """What `simslm fit` does."""

    source: str
    """Sweep folder, or a CSV/JSONL table (parameters, tokens or flops, loss; optional budget)."""
    convention: Literal["all", "non_embedding"] = "all"
    """Parameters counted in N (all: the paper's)."""
    num_resamples: int = 1000
    """Bootstrap resamples."""
    num_workers: int = 1
    """Worker processes for the bootstrap."""
    out: str | None = None
    """fit.json path for a table (default: beside it; a sweep's goes into its folder)."""

    def check(self) -> None:
        check_positive(self, "num_resamples", "num_workers")


def fit_source(config: FitConfig) -> tuple[dict[str, Any], Path]:
    """Fit a sweep folder or a table as `simslm fit` asks; the fits and where they were written."""
    source = Path(config.source)
    if source.is_dir():
        fits = fit_sweep(source, convention=config.convention, num_resamples=config.num_resamples,
                         num_workers=config.num_workers)
        return fits, source / "fit.json"
    points = read_table(source, convention=config.convention)
    fits = {"convention": config.convention, "source": str(source),
            "variants": {source.stem: fit_all(points, num_resamples=config.num_resamples,
                                              convention=config.convention, num_workers=config.num_workers)}}
    out = Path(config.out or source.with_suffix(".fit.json"))
    jobs.write_json(out, fits)
    return fits, out


@dataclass(frozen=True, kw_only=True)
class ReportConfig(Config):
    """What `simslm report` does."""

    sweep: str
    """Sweep folder (its fit.json is computed first when missing)."""
