"""A sweep's results: one row per finished run, cells of replicates, differences with intervals, the fit.

`collect` reads each finished run's `result.json` and `eval.json` (never its logs); `cells`
average a (variant, size, grid point)'s seeds; `cell_difference` and
`cell_accuracy_difference` compare two cells with a paired bootstrap plus the spread between
runs; `status_table` is what `sweep status` prints; `fit_sweep` fits every variant's laws
into `fit.json`, which `report` and `plan` read.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simslm import machine, storage
from simslm.config import Config, ConfigError, check_not_input, check_output_file, check_positive
from simslm.eval.evaluate import long_sides_note, read_results
from simslm.eval.scoring import Accuracy, accuracy_draws, accuracy_with_ci
from simslm.scaling.fit import TABLE_COLUMNS, fit_all, percentile_interval, points_from_rows, read_table
from simslm.scaling.ledger import cluster_jobs, run_error, run_status, stale_results
from simslm.scaling.sweep import SWEEP_FILE, load_sweep
from simslm.train.metrics import loss_curve, training_progress
from simslm.train.plan import OFF_BUDGET, RunResult


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
    fits["source"] = storage.portable_path(sweep_dir, out.parent)["relative"]
    # The runs it fitted: `report` says when the sweep has finished others since (a fit.json gone stale).
    fits["runs"] = sorted(row["id"] for row in rows if row.get("loss_speech") is not None)
    storage.write_json(out, fits)
    return fits


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
    num_workers: int = 0
    """Worker processes for approach 3's bootstrap (each takes 100 resamples or more); 0 = one per core. The fit is
    the same with any number."""
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
        check_positive(self, "num_resamples")
        check_positive(self, "num_workers", allow_zero=True)
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
    workers = config.num_workers or machine.default_workers()
    if source.is_dir():
        out = Path(config.out) if config.out else source / ("fit.json" if config.convention == "all" else
                                                             NON_EMBEDDING_FIT)
        storage.refuse_unwritable(out, unwritable)  # before the bootstrap, not after it
        fits = fit_sweep(source, convention=config.convention, num_resamples=config.num_resamples,
                         num_workers=workers, out=out, estimator=config.estimator,
                         bootstrap=config.bootstrap)
        return fits, out
    points = read_table(source, convention=config.convention,  # a missing table is said as such first
                        columns=dict(item.partition("=")[::2] for item in config.columns))
    out = Path(config.out or source.with_suffix(".fit.json"))
    storage.refuse_unwritable(out, unwritable)
    fits = {"convention": config.convention, "source": storage.portable_path(source, out.parent)["relative"],
            "variants": {source.stem: fit_all(points, num_resamples=config.num_resamples, convention=config.convention,
                                              num_workers=workers, estimator=config.estimator,
                                              bootstrap=config.bootstrap)}}
    storage.write_json(out, fits)
    return fits, out

