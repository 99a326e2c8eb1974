"""Scaling-law fits over plain tables of runs, with bootstrap confidence intervals.

A point is one training run (or one point of its curve): parameters N, tokens D, compute
C = 6ND (the paper's convention, N = all parameters) and a loss. Three ways to find the
compute-optimal allocation, after Hoffmann et al. (2022), "Chinchilla":

- Approach 1: the envelope of loss curves. Each run's loss (training loss at every step, or
  its validations during the run), smoothed, as a function of compute C = 6ND along the run;
  at 1,500 log-spaced values of C, the run with the lowest loss names the best N (and
  D = C / 6N); power laws N_opt = k C^a and D_opt = k' C^b through those. Without curves (a
  table of final losses), the lowest final loss in each bin of log compute instead, a coarser
  envelope named as such in fit.json.
- Approach 2: isoFLOP parabolas. At each budget, loss against log N is a parabola; its
  vertex is N_opt(C). Power laws through the vertices.
- Approach 3: the parametric law L = E + A/N^α + B/D^β, fitted as Hoffmann et al. fit it
  and as Epoch AI's replication (Besiroglu et al. 2024) computes that fit: log-sum-exp form,
  Huber loss (δ = 1e-3) on log-loss, L-BFGS from the best points of a grid of starts;
  bootstrap resampling of the runs for intervals. Compute-optimal: N_opt = G (C/6)^a,
  D_opt = G⁻¹ (C/6)^b with G = (αA/βB)^{1/(α+β)}, a = β/(α+β), b = α/(α+β).
  The estimator `likelihood` is the one behind the replication's reported estimates instead:
  maximum likelihood under a Huber density of log-loss residuals with a fitted scale
  (benchmarks/side_by_side_chinchilla.py runs both beside Epoch AI's own notebook).

Everything here is a function of arrays; the sweep and the report only call it.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import storage

# Cuervo & Marxer (2024), textless SLMs (HuBERT-25Hz, 500 units): the reference the paper
# compares against (its Figure 1), and their downstream exponents (metric ∝ C^γ).
TEXTLESS_REFERENCE = {"E": 1.73, "A": 13.9, "B": 39.8, "alpha": 0.25, "beta": 0.24}
TEXTLESS_EXPONENTS = {"sblimp": 0.021, "tsc": 0.025, "ssc": 0.017}
HUBER_DELTA = 1e-3
# Nats: a law's N or D term that changes by less than this over the data is not determined by them (a tenth of
# the Huber delta, and far below any loss noise of a real run).
NEGLIGIBLE_TERM = 1e-4
# Approach 3's estimators: Hoffmann et al.'s Huber loss, or Besiroglu et al.'s Huber likelihood (`_likelihood`).
ESTIMATORS = ("huber", "likelihood")
# Approach 3's bootstrap: Besiroglu et al.'s, over all runs, or within each isoFLOP budget (`_resample`).
BOOTSTRAPS = ("runs", "budgets")


def textless_exponent(name: str) -> float | None:
    """Cuervo & Marxer's exponent for a benchmark result named as eval.json names it (`LABEL` or `LABEL/MODE`,
    e.g. `sblimp`, `tsc/S`, `multispeaker-storycloze/tSC`), when the set is one of theirs scored on speech alone.
    Their models are textless: a text or cross-modal mode of the same set (T, S2T, T2S) has no counterpart."""
    parts = name.split("/")
    if len(parts) > 1 and parts[-1] in ("T", "S2T", "T2S"):
        return None
    return next((TEXTLESS_EXPONENTS[part.lower()] for part in parts if part.lower() in TEXTLESS_EXPONENTS), None)


@dataclass(frozen=True)
class Points:
    """The table a fit reads: one row per run (or per curve point)."""

    parameters: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    budget: np.ndarray | None = None
    """The nominal budget a run was planned for (groups isoFLOP curves); None: from C."""
    curves: tuple[np.ndarray, ...] | None = None
    """Each run's loss curve for approach 1: a (2, points) array of tokens seen and loss, tokens increasing
    (None: final points only)."""
    curve_kind: str = "training"
    """What the curves are: training (every step's training loss) or validation (held-out, every few steps)."""

    @property
    def flops(self) -> np.ndarray:
        return 6.0 * self.parameters * self.tokens

    def subset(self, index: np.ndarray) -> "Points":
        return Points(self.parameters[index], self.tokens[index], self.loss[index],
                      None if self.budget is None else self.budget[index],
                      None if self.curves is None else tuple(self.curves[i] for i in index), self.curve_kind)

    def __len__(self) -> int:
        return len(self.loss)


def synthetic_isoflop_points(law: "Law", budgets: np.ndarray, size_factors: np.ndarray, *, noise: float = 0.0,
                             seed: int = 0) -> Points:
    """An isoFLOP grid drawn from a known law: at each budget, sizes around the optimum times
    `size_factors`, with multiplicative log-normal noise. For testing fits and timing them."""
    parameters, tokens, grid_budgets = [], [], []
    for budget in budgets:
        n_opt, _ = law.optimum(budget)
        for factor in size_factors:
            parameters.append(n_opt * factor)
            tokens.append(budget / (6 * n_opt * factor))
            grid_budgets.append(budget)
    parameters, tokens = np.array(parameters), np.array(tokens)
    loss = law.loss(parameters, tokens) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(tokens)))
    return Points(parameters, tokens, loss, np.array(grid_budgets))


TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
# The columns a table may hold, by simslm's names (a table of other names maps them: `fit --columns`).
TABLE_COLUMNS = ("parameters", "non_embedding_parameters", "tokens", "flops", "loss", "budget")


def read_table(path: str | Path, *, convention: str = "all", loss_column: str = "loss",
               columns: dict[str, str] | None = None) -> Points:
    """Points from a CSV, TSV or JSONL table with columns for parameters, tokens or flops, and loss.

    `convention` = all (N counts every parameter) or non_embedding (reads
    `non_embedding_parameters`). Missing tokens come from flops / 6N, N all parameters when the
    table has them (simslm's C, and the paper's), else its N (a Kaplan-style table, whose C counts
    non-embedding parameters). Rows that lack a value, or hold one that is not a finite positive
    number, are reported with their line.
    The isoFLOP groups are the `budget` column, else the `flops` column as written (not
    recomputed as 6ND, whose rounding would split a group); a table with neither has no
    groups, and its bootstrap resamples rows freely. `columns` names the table's own columns for simslm's
    (`{"parameters": "Model Size"}`: Epoch AI's extraction of Chinchilla's runs).
    """
    path = Path(path)
    renamed = {theirs: ours for ours, theirs in (columns or {}).items()}
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: not a table simslm reads (a .csv, .tsv or .jsonl file)")
    text = storage.read_text(path)
    parameter_column = "parameters" if convention == "all" else "non_embedding_parameters"
    delimited = suffix in (".csv", ".tsv")
    if delimited:
        separator = "\t" if suffix == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator)
        given = reader.fieldnames or []
        if absent := [theirs for theirs in renamed if theirs not in given]:
            raise ValueError(f"{path}:1: no column {', '.join(repr(name) for name in absent)} (--columns; the header "
                             f"has {', '.join(repr(c) for c in given) or 'nothing'})")
        reader.fieldnames = columns = [renamed.get(name, name) for name in given]
        missing = [name for name in (parameter_column, loss_column) if name not in columns]
        missing += [] if {"tokens", "flops"} & set(columns) else ["tokens or flops"]
        if missing:
            hint = (f"; a {suffix[1:].upper()} table's columns are separated by "
                    f"{'tabs' if suffix == '.tsv' else 'commas'}" if len(columns) == 1 else "")
            raise ValueError(f"{path}:1: no {', '.join(missing)} column (the header has "
                             f"{', '.join(repr(c) for c in columns) or 'nothing'}){hint}")
        rows = list(reader)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
            if isinstance(row, dict):
                rows.append({renamed.get(key, key): value for key, value in row.items()})
            elif row is not None:
                rows.append(row)
    values: dict[str, list[float]] = {"parameters": [], "tokens": [], "loss": [], "budget": []}
    for line, row in enumerate(rows, start=2 if delimited else 1):
        try:
            parameters = float(row[parameter_column])
            # C = 6 N D with N all parameters where the table gives them (a non-embedding fit of simslm's own
            # table, or the paper's, would otherwise read 6 N_all D / (6 N_non-embedding) tokens: too many).
            counted = float(row["parameters"]) if row.get("parameters") not in (None, "") else parameters
            tokens = float(row["tokens"]) if row.get("tokens") not in (None, "") else \
                float(row["flops"]) / (6.0 * counted)
            loss = float(row[loss_column])
            group = row.get("budget") if row.get("budget") not in (None, "") else row.get("flops")
            group = float(group) if group not in (None, "") else None
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise ValueError(f"{path}:{line}: needs numeric {parameter_column}, tokens or flops, and "
                             f"{loss_column}") from None
        bad = next((name for name, value in ((parameter_column, parameters), ("tokens", tokens), (loss_column, loss),
                                             ("budget", group if group is not None else 1.0))
                    if not (math.isfinite(value) and value > 0)), None)
        if bad:
            raise ValueError(f"{path}:{line}: {bad} must be a finite number above 0")
        values["parameters"].append(parameters)
        values["tokens"].append(tokens)
        values["loss"].append(loss)
        values["budget"].append(group)
    if len(values["loss"]) < 3:
        raise ValueError(f"{path}: a fit needs at least 3 rows, found {len(values['loss'])}")
    budgets = None if any(b is None for b in values["budget"]) else np.asarray(values["budget"])
    return Points(*(np.asarray(values[k]) for k in ("parameters", "tokens", "loss")), budgets)


# --- power laws ---------------------------------------------------------------------------------


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(coefficient k, exponent a) of y = k x^a by least squares in log-log space."""
    exponent, intercept = np.polyfit(np.log(x), np.log(y), 1)
    with np.errstate(over="ignore"):  # a degenerate fit (x barely varies) gives inf, for the caller to report
        return float(np.exp(intercept)), float(exponent)


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> list[float]:
    """The central `confidence` share of the finite bootstrap draws (NaNs when none is finite)."""
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return [float("nan"), float("nan")]
    tail = (1 - confidence) / 2
    return [float(v) for v in np.quantile(finite, [tail, 1 - tail])]


def _resample(points: Points, rng: np.random.Generator, within_budgets: bool = True) -> Points:
    """Bootstrap: runs drawn with replacement within each budget (so every budget keeps its size), or with
    `within_budgets` False from all of them at once, as Besiroglu et al.'s replication draws Chinchilla's runs;
    points without budgets are drawn freely (grouping by their own 6ND would make each its own stratum, and every
    resample the data itself)."""
    if points.budget is None or not within_budgets:
        return points.subset(rng.integers(0, len(points), len(points)))
    budgets = points.budget
    index = np.concatenate([rng.choice(np.flatnonzero(budgets == b), np.sum(budgets == b))
                            for b in np.unique(budgets)])
    return points.subset(index)


# --- approach 1: envelope ------------------------------------------------------------------------


# The envelope needs its best points to span at least this factor of compute, and two sizes that are each the
# best at this share of them or more: a size lowest at a few of 1,500 values of C, where two curves cross in
# their noise, is not a change of the optimum (the demo's first curve envelope: d3 at 2 of 1,500, so a = 0.001).
APPROACH1_MIN_SPAN = 2.0
APPROACH1_MIN_SHARE = 0.02
# Hoffmann et al. (2022), section 3.1: "At 1500 logarithmically spaced FLOP values, we find which model size
# achieves the lowest loss of all models along with the required number of training tokens."
APPROACH1_NUM_FLOPS = 1500
# The paper smooths each training curve without saying how. Ours: a centred moving mean over the steps within
# +-2.5% of a step's tokens. Centred, so a falling curve is not read late (a trailing mean, or an EMA, would
# put every run's loss above where it is); a window in log tokens, so it is a few steps wide early in a run,
# where the loss falls fast, and wide enough later to average out a batch's noise.
CURVE_SMOOTHING = 0.05


def approach1(points: Points, num_bins: int = 8) -> dict[str, Any]:
    """Power laws N_opt = k C^a, D_opt = k' C^b through the envelope of lowest loss against compute.

    With loss curves (`points.curves`), Chinchilla's approach 1: each run's smoothed curve, read at
    `APPROACH1_NUM_FLOPS` log-spaced values of C from the least compute a run finished at to the most, and at
    each the size whose run is lowest there. Without them, the lowest final loss in each of `num_bins` bins of
    log compute. Replicates (runs of one N and D, a sweep's seeds) count as their mean either way: the envelope
    of the luckiest seed would be biased low."""
    if points.curves is not None:
        flops, _, best_parameters = curve_envelope(points)
        method, extra = f"{points.curve_kind} curves", {"num_flops": len(flops), "smoothing": CURVE_SMOOTHING}
    else:
        cells, inverse = _cells(points)
        final = Points(cells[:, 0], cells[:, 1], np.bincount(inverse, weights=points.loss) / np.bincount(inverse))
        best = _binned_envelope(final, num_bins)
        flops, best_parameters = final.flops[best], final.parameters[best]
        method, extra = "final points", {"num_bins": int(len(best))}
    sizes, counts = np.unique(best_parameters, return_counts=True)
    result = {"a": float("nan"), "b": float("nan"), "k_n": float("nan"), "k_d": float("nan"), "method": method,
              **extra, "best_sizes": [[float(size), float(count / len(best_parameters))]
                                      for size, count in zip(sizes, counts)]}
    # Through points of nearly one compute (one budget, rounded to whole steps) a slope is noise, not a law.
    if np.sum(counts >= APPROACH1_MIN_SHARE * len(best_parameters)) < 2 or \
            np.ptp(np.log(flops)) < math.log(APPROACH1_MIN_SPAN):
        return result
    result["k_n"], result["a"] = power_law(flops, best_parameters)
    result["k_d"], result["b"] = power_law(flops, flops / (6 * best_parameters))
    return result


def _binned_envelope(points: Points, num_bins: int) -> np.ndarray:
    """The index of the lowest loss in each non-empty bin of log compute."""
    log_flops = np.log(points.flops)
    edges = np.linspace(log_flops.min(), log_flops.max() + 1e-9, num_bins + 1)
    best = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = np.flatnonzero((log_flops >= low) & (log_flops < high))
        if len(inside):
            best.append(inside[np.argmin(points.loss[inside])])
    return np.asarray(best, dtype=int)


def smooth_curve(tokens: np.ndarray, loss: np.ndarray, width: float = CURVE_SMOOTHING) -> np.ndarray:
    """Each point's loss as the mean over the points within `width` / 2 of it in log tokens (tokens increasing)."""
    log_tokens = np.log(tokens)
    sums = np.concatenate([[0.0], np.cumsum(loss)])
    low = np.searchsorted(log_tokens, log_tokens - width / 2, side="left")
    high = np.searchsorted(log_tokens, log_tokens + width / 2, side="right")
    return (sums[high] - sums[low]) / (high - low)


def _cells(points: Points) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (N, D) of the points (a cell's replicates share them) and each point's cell."""
    cells, inverse = np.unique(np.stack([points.parameters, points.tokens], axis=1), axis=0, return_inverse=True)
    return cells, inverse.reshape(-1)


def curve_envelope(points: Points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approach 1's envelope of the runs' loss curves: at `APPROACH1_NUM_FLOPS` log-spaced C from the least
    compute a run finished at to the most, the lowest smoothed loss of any cell (replicates averaged) and that
    cell's N. Values of C that no curve reaches are left out."""
    cells, inverse = _cells(points)
    flops = np.geomspace(points.flops.min(), points.flops.max(), APPROACH1_NUM_FLOPS)
    # A run covers C from its first logged step to its end, and on (at its last loss) to the end of the run of
    # its budget that went furthest: runs of one budget end a fraction of a step apart, as steps are whole
    # batches, and at the top of `flops` the one that happened to round up would be left alone, and the best.
    groups = points.budget if points.budget is not None else points.flops
    group_end = {group: points.flops[groups == group].max() for group in np.unique(groups)}
    sums, counts = np.zeros((len(cells), len(flops))), np.zeros((len(cells), len(flops)))
    for run, (tokens, loss) in enumerate(points.curves):
        at = flops / (6.0 * points.parameters[run])
        end = max(tokens[-1], group_end[groups[run]] / (6.0 * points.parameters[run]))
        covered = (at >= tokens[0]) & (at <= end * (1 + 1e-12))
        smoothed = np.interp(np.log(at[covered]), np.log(tokens), smooth_curve(tokens, loss))
        sums[inverse[run], covered] += smoothed
        counts[inverse[run], covered] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.inf)
    best = np.argmin(mean, axis=0)
    lowest = mean[best, np.arange(len(flops))]
    reached = np.isfinite(lowest)
    return flops[reached], lowest[reached], cells[best[reached], 0]


# --- approach 2: isoFLOP parabolas -------------------------------------------------------------


def _vertex(log_parameters: np.ndarray, losses: np.ndarray) -> float | None:
    """log N at the minimum of loss = p0 + p1 log N + p2 (log N)^2, None when the parabola has no minimum."""
    p2, p1, _ = np.polyfit(log_parameters, losses, 2)
    return -p1 / (2 * p2) if p2 > 0 else None


def isoflop_vertices(points: Points, *, num_resamples: int = 1000, seed: int = 0,
                     budgets_count_n: bool = True) -> list[dict[str, Any]]:
    """Per budget with 3+ sizes: the vertex of loss = p0 + p1 log N + p2 (log N)^2, when it is a minimum.

    With 4+ sizes, a 95% interval for N_opt from resampling the budget's runs (draws with fewer than 3 sizes
    or no minimum are dropped, and counted). Three sizes fit a parabola exactly: no interval then.

    `budgets_count_n`: the budgets are C = 6 N D in the N of `points` (False: a sweep's budgets, which count
    all parameters, under a fit whose N is the non-embedding count; see `_log_tokens_at`)."""
    return _vertices_and_draws(points, num_resamples, seed, budgets_count_n)[0]


def _log_tokens_at(log_n: np.ndarray | float, log_parameters: np.ndarray, log_tokens: np.ndarray) -> np.ndarray:
    """log D at log N, through one budget's runs: straight between neighbouring sizes, and on past the smallest
    or largest along the two nearest. For a vertex whose N is not the N its budget counts: a sweep plans
    C = 6 N D with all parameters, so a non-embedding fit's vertex N_opt trained on C / (6 N_all(N_opt)) tokens,
    more than C / (6 N_opt), and its compute in the fit's own count is 6 N_opt D_opt, not the budget."""
    sizes = np.unique(log_parameters)
    tokens = np.array([log_tokens[log_parameters == size].mean() for size in sizes])
    log_n = np.asarray(log_n, dtype=float)
    inner = np.interp(log_n, sizes, tokens)
    below = tokens[0] + (log_n - sizes[0]) * (tokens[1] - tokens[0]) / (sizes[1] - sizes[0])
    above = tokens[-1] + (log_n - sizes[-1]) * (tokens[-1] - tokens[-2]) / (sizes[-1] - sizes[-2])
    return np.where(log_n < sizes[0], below, np.where(log_n > sizes[-1], above, inner))


def _vertices_and_draws(points: Points, num_resamples: int, seed: int, budgets_count_n: bool = True
                        ) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """`isoflop_vertices`, each vertex's log N_opt in every resample (NaN where that draw has no minimum, and
    for a budget of 3 sizes throughout; resample i of every budget is one draw of the whole grid), and each
    drawn vertex's compute C in the fit's count of N (the budget, when the budgets count that N:
    `_log_tokens_at`)."""
    budgets = points.budget if points.budget is not None else points.flops
    budgets_count_n = budgets_count_n or points.budget is None  # grouped by their own C: in the fit's count
    rng = np.random.default_rng(seed)
    vertices, draws, computes = [], [], []
    for budget in np.unique(budgets):
        inside = np.flatnonzero(budgets == budget)
        if len(np.unique(points.parameters[inside])) < 3:
            continue
        x, y = np.log(points.parameters[inside]), points.loss[inside]
        p2, p1, p0 = np.polyfit(x, y, 2)
        if p2 <= 0:
            continue  # no minimum: the grid does not bracket the optimum at this budget
        vertex = -p1 / (2 * p2)
        n_opt = math.exp(vertex)
        log_tokens = np.log(points.tokens[inside])

        def compute(log_n):  # C = 6 N D of a vertex at log N, in the fit's count of N
            return np.full(np.shape(log_n), float(budget)) if budgets_count_n else \
                6 * np.exp(log_n + _log_tokens_at(log_n, x, log_tokens))

        flops = float(compute(vertex))
        entry = {"budget": float(budget), "flops": flops, "n_opt": n_opt, "d_opt": flops / (6 * n_opt),
                 "loss_at_vertex": float(p0 + p1 * vertex + p2 * vertex ** 2),
                 "inside_grid": bool(x.min() <= vertex <= x.max()), "n_opt_ci": None, "num_valid_resamples": 0}
        drawn = np.full(num_resamples, np.nan)
        if len(np.unique(x)) >= 4:
            for index in range(num_resamples):
                chosen = rng.integers(0, len(x), len(x))
                if len(np.unique(x[chosen])) >= 3:
                    value = _vertex(x[chosen], y[chosen])
                    if value is not None:
                        drawn[index] = value
            valid = drawn[np.isfinite(drawn)]
            if len(valid):
                low, high = np.quantile(valid, [0.025, 0.975])
                entry.update(n_opt_ci=[math.exp(low), math.exp(high)], num_valid_resamples=len(valid))
        vertices.append(entry)
        draws.append(drawn)
        computes.append(compute(drawn))
    shape = (len(vertices), num_resamples)
    return vertices, np.asarray(draws).reshape(shape), np.asarray(computes).reshape(shape)


def approach2(points: Points, *, num_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
              budgets_count_n: bool = True) -> dict[str, Any]:
    """Power laws N_opt = k C^a, D_opt = k' C^b through the isoFLOP vertices, C each vertex's compute in the
    fit's count of N (the budget, unless `budgets_count_n` is False: `isoflop_vertices`).

    The interval of a comes from the same resamples as the vertices': in each, every budget's runs are redrawn
    and the law refit through the redrawn vertices (draws where any budget has no minimum are left out and
    counted). It needs 4+ sizes at every budget with a minimum: three sizes fit a parabola exactly, and a
    vertex that cannot move would make the interval look narrower than it is. b = 1 - a exactly, as
    D_opt = C / (6 N_opt)."""
    vertices, draws, computes = _vertices_and_draws(points, num_resamples, seed, budgets_count_n)
    result: dict[str, Any] = {"vertices": vertices, "ci_a": None, "ci_b": None, "num_valid_resamples": 0}
    if len(vertices) >= 2:
        flops = np.array([v["flops"] for v in vertices])
        result["k_n"], result["a"] = power_law(flops, np.array([v["n_opt"] for v in vertices]))
        result["k_d"], result["b"] = power_law(flops, np.array([v["d_opt"] for v in vertices]))
        complete = np.isfinite(draws).all(axis=0)
        if complete.any():
            exponents = np.array([power_law(computes[:, index], np.exp(draws[:, index]))[1]
                                  for index in np.flatnonzero(complete)])
            result["ci_a"] = percentile_interval(exponents, confidence)
            result["ci_b"] = [1 - result["ci_a"][1], 1 - result["ci_a"][0]]
            result["num_valid_resamples"] = int(complete.sum())
    else:
        result.update({"k_n": float("nan"), "a": float("nan"), "k_d": float("nan"), "b": float("nan")})
    return result


# --- approach 3: the parametric law ------------------------------------------------------------


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, parameters, tokens):
        return self.E + self.A / np.power(parameters, self.alpha) + self.B / np.power(tokens, self.beta)

    def optimum(self, flops):
        """(N_opt, D_opt) minimising L under C = 6ND (closed form)."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        a, b = self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)
        flops = np.asarray(flops, dtype=float)
        return g * (flops / 6) ** a, (flops / 6) ** b / g

    def best_loss(self, flops):
        """The lowest loss reachable with compute C (at the optimal allocation)."""
        parameters, tokens = self.optimum(flops)
        return self.loss(parameters, tokens)


def _term_weights(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> tuple[np.ndarray, ...]:
    """The log-sum-exp prediction's parts: exp(term - e) of the A and B terms, and their sum with the E term's
    weight exp(0) = 1, so that log L is predicted as e + log(total). Clipped so a wild line-search step gives a
    huge finite value instead of overflow (L-BFGS backs off)."""
    a, b, e, alpha, beta = theta[:5]
    weight_n = np.exp(np.minimum(a - alpha * log_n - e, 600.0))
    weight_d = np.exp(np.minimum(b - beta * log_d - e, 600.0))
    return weight_n, weight_d, 1.0 + weight_n + weight_d


def _huber(residual: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Σ ρ_δ(r), Huber's loss (quadratic within δ, linear beyond), and dρ/dr at each residual.

    dρ/dr is r clipped to [-δ, δ], and ρ(r) = c (r - c/2) with c that clipped r: r²/2 within δ, δ (|r| - δ/2)
    beyond, to the bit (halving is exact), in 5 array operations instead of 13 (a likelihood bootstrap 1.13x, a
    Huber one within noise; docs/BENCHMARKS.md 2026-12-07). Nothing is squared unclipped, where a line search's
    wild step overflowed."""
    clipped = np.clip(residual, -delta, delta)
    return float((clipped * (residual - 0.5 * clipped)).sum()), clipped


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of the log-sum-exp prediction of log L, and its gradient in (a, b, e, alpha, beta)."""
    weight_n, weight_d, total = _term_weights(theta, log_n, log_d)
    value, slope = _huber(theta[2] + np.log(total) - log_loss, delta)
    slope = slope / total  # d Huber / d term, per unit weight
    share_n, share_d = slope * weight_n, slope * weight_d
    gradient = np.array([share_n.sum(), share_d.sum(), slope.sum(), -(share_n @ log_n), -(share_d @ log_d)])
    return float(value), gradient


# Bounds on (log A, log B, log E, alpha, beta): non-negative exponents, and coefficients
# within exp(60). Unbounded, a bootstrap resample of a degenerate grid (all minima at one
# size) sent log A past what a float can exponentiate.
def _at_bound(value: float, low: float, high: float) -> bool:
    """Whether a searched value (or an interval's end) sits on the bound of its search: within 0.1% of the searched
    range of it. L-BFGS-B stops exactly on a bound; the likelihood's BFGS, which searches unbounded, stops a hair
    inside one it pushes against (α = 4.9997 of 5 on the demo's interleaved + TWIST runs of 2026-12-05, where the
    Huber fit put it at 5). The bounds lie far beyond any law's plausible values, so nothing sound is that close."""
    return min(value - low, high - value) < 1e-3 * (high - low)


PARAMETER_BOUNDS = ((-20.0, 60.0), (-20.0, 60.0), (-20.0, 10.0), (0.0, 5.0), (0.0, 5.0))

# Hoffmann et al.'s grid of initialisations (their Appendix D.2), as Epoch AI used it.
START_GRID = {"alpha": (0.0, 0.5, 1.0, 1.5, 2.0), "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
              "e": (-1.0, -0.5, 0.0, 0.5, 1.0), "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
              "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)}


def _grid_values(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    starts = np.array([(a, b, e, alpha, beta) for a, b, e, alpha, beta in itertools.product(
        START_GRID["a"], START_GRID["b"], START_GRID["e"], START_GRID["alpha"], START_GRID["beta"])])
    a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(starts), len(log_n)))])
    predicted = np.logaddexp(np.logaddexp(terms[0], terms[1]), terms[2])
    residual = np.abs(predicted - log_loss)
    values = np.where(residual <= delta, 0.5 * residual ** 2, delta * (residual - 0.5 * delta)).sum(axis=1)
    return starts, values


def _one_blas_thread():
    """L-BFGS-B calls BLAS on 5-vectors; a threaded BLAS makes each call ~10x slower (docs/LOG.md). Taken once
    around many fits: setting the limit inspects every loaded library (2.6 ms, 10% of a bootstrap's time).

    It reaches only the libraries loaded when it is set: scipy.optimize is imported first, or a fresh bootstrap
    worker would load scipy's own OpenBLAS after the limit, threaded (2x slower with 2 workers, docs/LOG.md)."""
    import scipy.optimize  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _minimise(log_n, log_d, log_loss, starts, delta) -> np.ndarray:
    """The best of L-BFGS-B from each start (callers hold `_one_blas_thread`)."""
    from scipy.optimize import minimize

    best, best_value = None, np.inf
    for start in starts:
        # The Huber sums are tiny (residuals of ~1e-3 on log-loss), so scipy's default
        # tolerances would stop at the start; these let L-BFGS walk the flat E-A-B valleys.
        result = minimize(_objective, start, args=(log_n, log_d, log_loss, delta), jac=True,
                          method="L-BFGS-B", bounds=PARAMETER_BOUNDS,
                          options={"gtol": 1e-12, "ftol": 1e-14, "maxiter": 2000})
        if result.fun < best_value:
            best, best_value = result.x, result.fun
    return best


# The Huber density's normaliser (δ = 1e-3 in units of the scale), as Besiroglu et al. define it:
# √(2π)(1 - 2Φ(-δ)) + 2 exp(-δ²/2)/δ. Only the scale's fit depends on it, through n log Z.
def _huber_log_normaliser(delta: float) -> float:
    from scipy.stats import norm

    return math.log(math.sqrt(2 * math.pi) * (1 - 2 * norm.sf(delta)) + 2 * math.exp(-0.5 * delta * delta) / delta)


# Bounds of the likelihood's log scale: below exp(-40) a float residual is no longer resolved.
LOG_SCALE_BOUNDS = (-40.0, 5.0)


def _likelihood(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                delta: float, log_normaliser: float) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of log L under a Huber density (Besiroglu et al. 2024, the estimates they report)
    centred on the log-sum-exp prediction, with scale s = exp(σ): Σ ρ_δ(r/s) + n (log Z + σ), over
    (a, b, e, α, β, σ).
    With δ = 1e-3 of the scale, ρ is linear for nearly every residual, so this is close to least absolute
    deviations, and its σ settles near log(δ · mean |r|)."""
    log_scale = theta[5]
    if not -600.0 < log_scale < 600.0:  # a wild line-search step: worse than anything, and L-BFGS backs off
        return math.inf, np.zeros(6)
    weight_n, weight_d, total = _term_weights(theta, log_n, log_d)
    scale = math.exp(log_scale)
    x = (theta[2] + np.log(total) - log_loss) / scale  # residual of the prediction, in units of the scale
    value, slope = _huber(x, delta)  # Σ ρ(x) and dρ/dx
    value += len(x) * (log_normaliser + log_scale)
    per_weight = slope / (scale * total)
    share_n, share_d = per_weight * weight_n, per_weight * weight_d
    gradient = np.array([share_n.sum(), share_d.sum(), per_weight.sum(), -(share_n @ log_n), -(share_d @ log_d),
                         len(x) - float(slope @ x)])
    return float(value), gradient


def _maximise_likelihood(log_n, log_d, log_loss, start: np.ndarray, delta: float) -> np.ndarray:
    """(a, b, e, α, β, σ) maximising `_likelihood` from `start` (callers hold `_one_blas_thread`).

    BFGS, as Besiroglu et al. run it (from Hoffmann et al.'s published estimates; here from the Huber-loss optimum).
    The objective is all but piecewise linear, and L-BFGS-B stops at its kinks, at a point that depends on where σ
    starts. BFGS reached the same optimum from four starts of σ, and on their data their reported estimates to
    every digit they print (docs/LOG.md 2026-12-04, eleventh session). Unbounded, it can leave the bounds the
    Huber fit keeps to; then L-BFGS-B within them is taken instead."""
    from scipy.optimize import minimize

    args = (log_n, log_d, log_loss, delta, _huber_log_normaliser(delta))
    bounds = PARAMETER_BOUNDS + (LOG_SCALE_BOUNDS,)
    result = minimize(_likelihood, start, args=args, jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 5000})
    if np.isfinite(result.fun) and all(low <= value <= high for value, (low, high) in zip(result.x, bounds)):
        return result.x
    return minimize(_likelihood, start, args=args, jac=True, method="L-BFGS-B", bounds=bounds,
                    options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000}).x


def _scale_start(theta: np.ndarray, log_n, log_d, log_loss, delta: float) -> float:
    """Where the likelihood's log scale starts: log(δ · mean |r|), its optimum for fixed law parameters while the
    residuals lie beyond δ scales (clamped into its bounds; an exact fit has no residual to scale)."""
    a, b, e, alpha, beta = theta
    predicted = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    spread = delta * float(np.mean(np.abs(predicted - log_loss)))
    return float(np.clip(math.log(spread) if spread > 0 else LOG_SCALE_BOUNDS[0], *LOG_SCALE_BOUNDS))


def _law(theta: np.ndarray) -> Law:
    a, b, e, alpha, beta = theta[:5]
    return Law(E=float(math.exp(e)), A=float(math.exp(a)), B=float(math.exp(b)), alpha=float(alpha), beta=float(beta))


def _fit_theta(points: Points, delta: float, starts: np.ndarray, estimator: str) -> np.ndarray:
    """Approach 3's parameters (a, b, e, α, β), plus σ for the likelihood, from `starts` (the likelihood's starts
    carry their σ; its law parameters are refined from the Huber-loss optimum of the first five). Callers hold
    `_one_blas_thread`."""
    log_n, log_d, log_loss = np.log(points.parameters), np.log(points.tokens), np.log(points.loss)
    theta = _minimise(log_n, log_d, log_loss, [start[:5] for start in starts], delta)
    if estimator == "huber":
        return theta
    log_scale = starts[0][5] if len(starts[0]) == 6 else _scale_start(theta, log_n, log_d, log_loss, delta)
    return _maximise_likelihood(log_n, log_d, log_loss, np.append(theta, log_scale), delta)


def fit_law(points: Points, *, delta: float = HUBER_DELTA, num_starts: int = 8, estimator: str = "huber") -> Law:
    """Approach 3 on all points: L-BFGS from the `num_starts` best points of the start grid (then, for the
    `likelihood` estimator, the Huber likelihood's maximum from that optimum)."""
    return _law(_full_fit(points, delta, num_starts, estimator))


def _full_fit(points: Points, delta: float, num_starts: int, estimator: str) -> np.ndarray:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}")
    starts, values = _grid_values(np.log(points.parameters), np.log(points.tokens), np.log(points.loss), delta)
    with _one_blas_thread():
        return _fit_theta(points, delta, starts[np.argsort(values)[:num_starts]], estimator)


def _bootstrap_fits(task: tuple[Points, np.ndarray, float, int, list[int], str, str]
                    ) -> tuple[int, list[list[float]]]:
    """Worker: refit the law on the resamples numbered `indices` (resample i is drawn with seed (seed, i))."""
    points, full, delta, seed, indices, estimator, bootstrap = task
    fits = []
    with _one_blas_thread():
        for index in indices:
            drawn = _resample(points, np.random.default_rng([seed, index]), within_budgets=bootstrap == "budgets")
            fitted = _law(_fit_theta(drawn, delta, [full], estimator))
            fits.append([fitted.E, fitted.A, fitted.B, fitted.alpha, fitted.beta])
    return indices[0], fits


# The fewest resamples worth a worker process: starting one (spawned, importing numpy and scipy) takes about 1 s on a
# 2-core CPU, as long as ~100 resamples of a 48-run sweep take to fit (docs/LOG.md, 2026-12-07).
RESAMPLES_PER_WORKER = 100


def approach3(points: Points, *, num_resamples: int = 1000, seed: int = 0, delta: float = HUBER_DELTA,
              confidence: float = 0.95, num_workers: int = 1, estimator: str = "huber",
              bootstrap: str = "runs") -> dict[str, Any]:
    """The parametric law, its compute-optimal exponents, and bootstrap intervals for all of them.

    Each resample starts from the full-data optimum, as Besiroglu et al.'s bootstrap does: a resample's optimum lies
    near it, and re-searching the 4,500-point start grid per resample would cost ~100x more (docs/LOG.md).
    Resample i depends on (seed, i) alone, so the result does not depend on `num_workers`.
    `estimator`: `huber` (Hoffmann et al.'s fit) or `likelihood` (Besiroglu et al.'s reported fit, `_likelihood`).
    `bootstrap`: `runs` (theirs: every resample draws from all the runs) or `budgets` (within each isoFLOP budget,
    so that every resample keeps the grid's design; `_resample`).
    """
    from simslm import jobs

    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"bootstrap {bootstrap!r}: choose one of {', '.join(BOOTSTRAPS)}")
    full = _full_fit(points, delta, 8, estimator)
    law = _law(full)
    # Chunks of at most 250 resamples, for progress; one per worker where each gets `RESAMPLES_PER_WORKER` or more.
    size = min(250, max(RESAMPLES_PER_WORKER, math.ceil(num_resamples / num_workers)))
    chunks = [list(range(start, min(num_resamples, start + size))) for start in range(0, num_resamples, size)]
    tasks = [(points, full, delta, seed, chunk, estimator, bootstrap) for chunk in chunks]
    chunks_done = sorted(jobs.parallel_map(_bootstrap_fits, tasks, num_workers=min(num_workers, len(tasks)),
                                           total=len(tasks), description=f"bootstrap (x{size})"))
    samples = np.asarray([row for _, fits in chunks_done for row in fits]).reshape(-1, 5)
    names = ("E", "A", "B", "alpha", "beta")
    # a = β/(α+β) is undefined where both exponents are 0 (points that do not vary): NaN, which the degenerate
    # checks name, not a division error.
    with np.errstate(divide="ignore", invalid="ignore"):
        exponents = samples[:, 4] / (samples[:, 3] + samples[:, 4])
    a, b = ((law.beta / (law.alpha + law.beta), law.alpha / (law.alpha + law.beta)) if law.alpha + law.beta > 0
            else (float("nan"), float("nan")))
    return {"law": asdict(law), "ci": {name: percentile_interval(samples[:, i], confidence) for i, name in enumerate(names)},
            "a": a, "b": b,
            "ci_a": percentile_interval(exponents, confidence), "ci_b": percentile_interval(1 - exponents, confidence),
            "samples": samples.tolist(), "num_resamples": num_resamples, "huber_delta": delta,
            "confidence": confidence, "estimator": estimator, "bootstrap": bootstrap,
            **({"log_scale": float(full[5])} if estimator == "likelihood" else {})}


def metric_power_law(flops: np.ndarray, values: np.ndarray, *, num_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, Any]:
    """metric = k C^γ (least squares in log-log), with a bootstrap interval for γ."""
    flops, values = np.asarray(flops, float), np.asarray(values, float)
    keep = values > 0
    flops, values = flops[keep], values[keep]
    if len(flops) < 3:
        return {"k": float("nan"), "gamma": float("nan"), "ci_gamma": [float("nan")] * 2, "num_points": int(len(flops))}
    k, gamma = power_law(flops, values)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(num_resamples):
        index = rng.integers(0, len(flops), len(flops))
        if len(np.unique(flops[index])) >= 2:
            draws.append(power_law(flops[index], values[index])[1])
    return {"k": k, "gamma": gamma, "ci_gamma": percentile_interval(np.asarray(draws), confidence),
            "num_points": int(len(flops))}


# --- fit.json and the planner -----------------------------------------------------------------


def fit_all(points: Points, *, num_resamples: int = 1000, seed: int = 0, convention: str = "all",
            metrics: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, num_workers: int = 1,
            estimator: str = "huber", bootstrap: str = "runs") -> dict[str, Any]:
    """Approaches 1-3 and metric power laws: the contents of fit.json (parameters unrounded)."""
    result = {"convention": {"parameters": convention, "flops": "C = 6 N D",
                             "note": "N counts all parameters (embeddings and head included)" if convention == "all"
                             else "N counts non-embedding parameters (Kaplan et al. 2020)"},
              "num_points": len(points), "approach1": approach1(points),
              # A sweep's budgets count all parameters: under another convention they are not its C.
              "approach2": approach2(points, num_resamples=num_resamples, seed=seed,
                                     budgets_count_n=convention == "all"),
              "approach3": approach3(points, num_resamples=num_resamples, seed=seed, num_workers=num_workers,
                                     estimator=estimator, bootstrap=bootstrap),
              "textless_reference": {"law": TEXTLESS_REFERENCE, "exponents": TEXTLESS_EXPONENTS,
                                     "source": "Cuervo & Marxer (2024)"}}
    result["metrics"] = {name: metric_power_law(flops, values, num_resamples=num_resamples, seed=seed)
                         for name, (flops, values) in (metrics or {}).items()}
    result["approach3"]["degenerate"] = degenerate_reasons(points, result["approach3"])
    result["warnings"] = fit_warnings(points, result)
    return result


def degenerate_reasons(points: Points, fit: dict[str, Any]) -> list[str]:
    """Why approach 3's law says nothing about these data (empty when it is a fit): too few points for its five
    parameters, a parameter on the bound of its search, or an unbounded bootstrap interval. A degenerate law is
    named as such instead of printed, drawn or planned from (issue 18). An interval that is a single point is a
    warning only (`fit_warnings`): data without noise give exactly that, with a law that is right."""
    reasons = []
    if len(points) < 2 * 5:
        reasons.append(f"only {len(points)} points for its 5 parameters (fewer than twice as many)")
    law = fit["law"]
    theta = (math.log(law["A"]), math.log(law["B"]), math.log(law["E"]), law["alpha"], law["beta"])
    for name, value, (low, high) in zip(("A", "B", "E", "alpha", "beta"), theta, PARAMETER_BOUNDS):
        if _at_bound(value, low, high):
            reasons.append(f"{name} ended on the bound of its search ({law[name]:.4g}): the data do not determine it")
    unbounded = [name for name, (low, high) in fit["ci"].items() if not (np.isfinite(low) and np.isfinite(high))]
    if unbounded:
        reasons.append(f"the bootstrap interval of {', '.join(unbounded)} is unbounded")
    # A term that hardly changes over the data leaves its coefficient and exponent free, inside their bounds: a
    # fit of tiny models at 0.5-4 tokens per parameter gave alpha 4.1 with A / N^alpha below 1e-15 nats at every
    # size, hence a = beta / (alpha + beta) = 0.06, a plan of ever smaller models from nothing in the data.
    for term, (scale, exponent, values) in (("N", ("A", "alpha", points.parameters)),
                                            ("D", ("B", "beta", points.tokens))):
        contribution = law[scale] / values ** law[exponent]
        if np.ptp(contribution) < NEGLIGIBLE_TERM:
            reasons.append(f"its {term} term {scale}/{term}^{exponent} changes by {np.ptp(contribution):.2g} nats "
                           f"over the data: the data do not determine {scale} and {exponent}")
    return reasons


def fit_warnings(points: Points, fit: dict[str, Any]) -> list[str]:
    """What makes a fit less sure than its intervals say, beyond approach 3 being degenerate: repeated rows,
    intervals that are a point, no approach 1 or 2."""
    warnings = []
    rows = np.stack([points.parameters, points.tokens, points.loss], axis=1)
    duplicates = len(rows) - len(np.unique(rows, axis=0))
    if duplicates:
        warnings.append(f"{duplicates} row(s) repeat an earlier one exactly: the fit counts every copy, so a "
                        f"repeated point weighs as much as its copies together")
    collapsed = [name for name, (low, high) in fit["approach3"]["ci"].items()
                 if np.isfinite(low) and np.isfinite(high) and high - low <= 1e-9 * max(1.0, abs(high))]
    if collapsed:
        warnings.append(f"the bootstrap interval of {', '.join(collapsed)} is a single point: every resample refits "
                        f"the same law (data without noise, or one isoFLOP group), so it measures nothing")
    if not fit["approach3"].get("degenerate"):
        at_bound = []
        for name, bounds in zip(("A", "B", "E", "alpha", "beta"), PARAMETER_BOUNDS):
            ends = fit["approach3"]["ci"][name]
            if name in ("A", "B", "E"):  # searched in log space
                ends = [math.log(end) for end in ends]
            if any(_at_bound(end, *bounds) for end in ends):
                at_bound.append(name)
        if at_bound:
            warnings.append(f"the bootstrap interval of {', '.join(at_bound)} reaches the bound of its search: the "
                            f"data bound it on one side only (the law and its exponent a can still be sound)")
    for name, key in (("approach 1", "approach1"), ("approach 2", "approach2"), ("approach 3", "approach3")):
        a = fit[key].get("a", float("nan"))
        if np.isfinite(a) and not 0 <= a <= 1 and not (key == "approach3" and fit[key].get("degenerate")):
            warnings.append(f"{name} gives a = {a:.3f}, outside [0, 1]: the compute-optimal size would "
                            f"{'shrink' if a < 0 else 'grow faster than compute'} as compute grows, which no law "
                            f"allows; the grid does not bracket the minima, or noise dominates")
    # A sound point whose interval leaves [0, 1] (approach 2's; approach 3's a = beta / (alpha + beta) cannot)
    # printed without a word reads as if a negative exponent were plausible: say where such draws come from.
    approach2 = fit["approach2"]
    low, high = approach2.get("ci_a") or (0, 1)
    if 0 <= approach2["a"] <= 1 and not 0 <= low <= high <= 1:
        budgets = [vertex["flops"] for vertex in approach2["vertices"]]
        warnings.append(f"approach 2's interval of a, [{low:.3f}, {high:.3f}], reaches "
                        f"outside [0, 1]: in some resamples the compute-optimal size "
                        f"{'shrinks as compute grows' if low < 0 else 'grows faster than compute'}. "
                        f"{len(budgets)} minima over {max(budgets) / min(budgets):.3g}x of compute fix their slope "
                        f"loosely; more budgets, a wider span or more runs per size narrow it")
    second, third = fit["approach2"].get("ci_a"), fit["approach3"].get("ci_a")
    if second and third and not fit["approach3"].get("degenerate") and (second[1] < third[0] or third[1] < second[0]):
        warnings.append(f"approaches 2 and 3 disagree on the allocation exponent a: [{second[0]:.3f}, {second[1]:.3f}] "
                        f"against [{third[0]:.3f}, {third[1]:.3f}] (95% intervals that do not overlap)")
    if not np.isfinite(fit["approach1"]["a"]):
        warnings.append(f"approach 1 could not be computed: the lowest-loss runs ({fit['approach1']['method']}) "
                        f"span less than {APPROACH1_MIN_SPAN:g}x of compute, or only one size is the lowest at "
                        f"{APPROACH1_MIN_SHARE:.0%} of them or more (approach1.best_sizes)")
    if not np.isfinite(fit["approach2"]["a"]):
        budgets = points.budget if points.budget is not None else points.flops
        sized = sum(len(np.unique(points.parameters[budgets == b])) >= 3 for b in np.unique(budgets))
        reason = ("no budget has runs of 3 or more sizes" if sized == 0 else
                  f"only {len(fit['approach2']['vertices'])} of {sized} budgets with 3+ sizes have a minimum "
                  f"(2 are needed)")
        warnings.append(f"approach 2 could not be computed: {reason}")
    return warnings


def fit_summary(fits: dict[str, Any]) -> list[str]:
    """Each variant of a fit.json as `simslm fit` states it: approach 3's law with its intervals (or why it is
    degenerate), the exponent a of N_opt ~ C^a by each approach, and the fit's warnings."""
    lines = []
    for variant, fit in fits["variants"].items():
        law, approach3 = fit["approach3"]["law"], fit["approach3"]
        second = fit["approach2"]
        interval = f" [{second['ci_a'][0]:.3f}, {second['ci_a'][1]:.3f}]" if second.get("ci_a") else ""
        first = fit["approach1"]
        others = (f"approach 2: {_exponent(second['a'])}{interval}, "
                  f"approach 1 ({first.get('method', 'final points')}): {_exponent(first['a'])}")
        if approach3.get("degenerate"):
            # Its numbers stay in fit.json, but printed beside sound ones they would be read as a result.
            lines.append(f"{variant}: approach 3 is degenerate, its law not shown: "
                         f"{'; '.join(approach3['degenerate'])}")
            lines.append(f"  N_opt ~ C^a: {others}")
        else:
            named = [approach3.get("estimator", "huber"), f"bootstrap {approach3.get('bootstrap', 'budgets')}"]
            named = [name for name in named if name not in ("huber", "bootstrap runs")]  # the defaults go unsaid
            estimator = f" [{', '.join(named)}]" if named else ""
            lines.append(f"{variant}{estimator}: L = {law['E']:.4g} + {law['A']:.4g}/N^{law['alpha']:.4g} + "
                         f"{law['B']:.4g}/D^{law['beta']:.4g}"
                         f"  (alpha CI [{approach3['ci']['alpha'][0]:.3g}, {approach3['ci']['alpha'][1]:.3g}], "
                         f"beta CI [{approach3['ci']['beta'][0]:.3g}, {approach3['ci']['beta'][1]:.3g}])")
            lines.append(f"  N_opt ~ C^a: a = {approach3['a']:.3f} [{approach3['ci_a'][0]:.3f}, "
                         f"{approach3['ci_a'][1]:.3f}] ({others})")
        lines.extend(f"  warning: {warning}" for warning in fit.get("warnings", []))
    return lines


def _exponent(a: float | None) -> str:
    """An exponent as the summary prints it; n/a for an approach that could not be computed (None, or NaN), as in
    the report: its warning says why."""
    return "n/a" if a is None or a != a else f"{a:.3f}"


def plan_compute(flops: float, fit: dict[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """N_opt and D_opt for a budget from a fit's law, with intervals from its bootstrap samples."""
    law = Law(**fit["approach3"]["law"])
    n_opt, d_opt = law.optimum(flops)
    samples = np.asarray(fit["approach3"].get("samples") or [])
    result = {"flops": flops, "n_opt": float(n_opt), "d_opt": float(d_opt),
              "tokens_per_parameter": float(d_opt / n_opt), "loss": float(law.best_loss(flops))}
    if len(samples):
        optima = [Law(*row).optimum(flops) for row in samples]
        result["ci_n_opt"] = percentile_interval(np.array([o[0] for o in optima]), confidence)
        result["ci_d_opt"] = percentile_interval(np.array([o[1] for o in optima]), confidence)
    return result


def points_from_rows(rows: list[dict[str, Any]], *, convention: str = "all", loss_key: str = "loss_speech",
                     curve_kind: str = "training") -> Points:
    """Points from run rows (as `collect.collect` gives them), skipping rows without the loss. Their loss curves
    (of `curve_kind`) come along when every row has one under `curve` (see `train.metrics.loss_curve`)."""
    usable = [row for row in rows if row.get(loss_key) is not None]
    key = "parameters" if convention == "all" else "non_embedding_parameters"
    budgets = [row.get("budget") for row in usable]
    curves = [row.get("curve") for row in usable]
    # Runs of a tokens-per-parameter grid have no common budget: no isoFLOP groups, an iid bootstrap.
    return Points(np.array([row[key] for row in usable], dtype=float),
                  np.array([row["tokens"] for row in usable], dtype=float),
                  np.array([row[loss_key] for row in usable], dtype=float),
                  None if any(b is None for b in budgets) else np.array(budgets, dtype=float),
                  None if any(c is None for c in curves) else tuple(curves), curve_kind)
