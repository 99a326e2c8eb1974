"""The sweep report: one HTML page with figures and tables, drawn from the ledger and fit.json.

Figures follow the paper's (Maimon et al. 2025): best speech loss per compute beside the
textless law of Cuervo & Marxer (Figure 1), interleaved vs textless vs random-init curves
(Figure 3), isoFLOP curves of speech loss against model size (Figure 4), and benchmark
accuracy against compute (Figure 7, a panel per benchmark); then the fitted laws with their
intervals. Each figure is written as SVG and as a 300-dpi PNG, with a caption under it saying
what it shows and how to read it; fitted laws carry their bootstrap band and are dotted where
they extrapolate; legends sit below the axes, clear of the data.
"""

from __future__ import annotations

import html
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import storage
from simslm.config import Config, ConfigError
from simslm.scaling import bracket, collect
from simslm.scaling.fit import (
    TEXTLESS_REFERENCE,
    Law,
    curve_envelope,
    points_from_rows,
    smooth_curve,
    textless_exponent,
)

COLOURS = ("#1b6ca8", "#d1495b", "#66a182", "#edae49", "#6c4f8b", "#00798c")


def _figure(panels: int | None = None):
    """A figure of one axes or, given `panels`, a list of that many axes stacked on one shared x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if panels is None:
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        return plt, figure, axes
    figure, axes = plt.subplots(panels, 1, figsize=(6.4, 0.8 + 2.3 * panels), sharex=True, sharey=True,
                                squeeze=False)
    return plt, figure, list(axes[:, 0])


def _legend_below(axes, entries: int, below: float = 0.16) -> None:
    """The legend under the axes (`below` their height down, clear of the x label), never over the data."""
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -below), ncol=2 if entries > 3 else 1,
                frameon=False)


def _save(plt, figure, path: Path) -> str:
    """Write the figure as `<path>.svg` and a 300-dpi `<path>.png`; the stem for the page."""
    # The tight frame is measured once for both files: `bbox_inches="tight"` draws the whole figure to measure it
    # before drawing each file, and the report took 1.18x as long (BENCHMARKS, forty-first session).
    frame = figure.get_tightbbox(figure.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    # zlib's fastest level: the report 1.07-1.14x faster for PNGs 22% larger (2.1 against 1.7 MB, the demo's seven).
    png = {"dpi": 300, "pil_kwargs": {"compress_level": 1}}
    for suffix, options in ((".svg", {}), (".png", png)):
        with storage.atomic_path(path.with_suffix(suffix)) as temporary:
            figure.savefig(temporary, bbox_inches=frame, **options)
    plt.close(figure)
    return path.stem


def _law_band(fit: dict[str, Any], flops: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The 95% band of the best loss at each compute, over approach 3's bootstrap laws."""
    samples = fit.get("approach3", {}).get("samples") or []
    if len(samples) < 20:
        return None
    # A resampled law with A or B at 0 has no optimum (it divides by 0): its curve is not finite, and dropped.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        curves = np.array([Law(*row).best_loss(flops) for row in samples])
    curves = curves[np.isfinite(curves).all(axis=1)]
    return (np.quantile(curves, 0.025, axis=0), np.quantile(curves, 0.975, axis=0)) if len(curves) else None


def _plot_law(axes, grid: np.ndarray, curve: np.ndarray, low: float, high: float, colour: str, label: str) -> None:
    """A fitted curve: solid over the data's range [low, high], dotted on each side beyond it (extrapolation)."""
    inside = (grid >= low) & (grid <= high)
    axes.plot(grid[inside], curve[inside], "-", color=colour, alpha=0.8, label=label)
    for beyond in (grid <= low, grid >= high):
        axes.plot(grid[beyond], curve[beyond], ":", color=colour, alpha=0.8)


def _best_per_budget(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Budgets and the lowest speech CE at each, for one variant's rows."""
    best = sorted((budget, row["loss_speech"]) for (_, budget), row in collect.best_runs(rows).items())
    return np.array([b for b, _ in best]), np.array([loss for _, loss in best])


def plot_best_loss(rows, fits, folder: Path) -> str:
    """Figure 1: the lowest speech loss at each budget, per variant, with fitted and textless laws."""
    plt, figure, axes = _figure()
    flops_range = np.logspace(math.log10(min(r["flops"] for r in rows)) - 0.3,
                              math.log10(max(r["flops"] for r in rows)) + 0.3, 50)
    low, high = min(r["flops"] for r in rows), max(r["flops"] for r in rows)
    entries = 1
    for colour, variant in zip(COLOURS, sorted({r["variant"] for r in rows})):
        budgets, best = _best_per_budget([r for r in rows if r["variant"] == variant])
        axes.plot(budgets, best, "o", color=colour, label=f"{variant}: best run per budget")
        entries += 1
        fit = fits.get(variant, {})
        approach3 = fit.get("approach3", {})
        law = approach3.get("law")
        if law and not approach3.get("degenerate"):  # a degenerate law would be drawn as if it were a result
            _plot_law(axes, flops_range, Law(**law).best_loss(flops_range), low, high, colour,
                      f"{variant}: fitted law, 95% band")
            band = _law_band(fit, flops_range)
            if band is not None:
                axes.fill_between(flops_range, *band, color=colour, alpha=0.15, lw=0)
            entries += 1
    reference = Law(**TEXTLESS_REFERENCE)
    axes.plot(flops_range, reference.best_loss(flops_range), "k--", lw=0.9,
              label="textless law, Cuervo & Marxer 2024 (other units: compare its shape)")
    axes.axvspan(flops_range[0], low, color="grey", alpha=0.06, lw=0)
    axes.axvspan(high, flops_range[-1], color="grey", alpha=0.06, lw=0, label="beyond the data (laws dotted)")
    axes.set(xscale="log", xlabel="training FLOPs (6ND)", ylabel="speech cross-entropy (nats)",
             title="Best speech loss per compute (cf. paper Fig. 1)")
    _legend_below(axes, entries + 2)
    return _save(plt, figure, folder / "best_loss_vs_compute.png")


def plot_variants(rows, folder: Path) -> str:
    """Figure 3: every run's speech loss against compute, coloured by variant."""
    plt, figure, axes = _figure()
    for colour, variant in zip(COLOURS, sorted({r["variant"] for r in rows})):
        chosen = [r for r in rows if r["variant"] == variant]
        axes.plot([r["flops"] for r in chosen], [r["loss_speech"] for r in chosen], "o", color=colour, alpha=0.45)
        budgets, best = _best_per_budget(chosen)
        axes.plot(budgets, best, "-", color=colour, label=variant)
    axes.set(xscale="log", xlabel="training FLOPs (6ND)", ylabel="speech cross-entropy (nats)",
             title="Interleaved vs textless vs random init (cf. Fig. 3)")
    _legend_below(axes, len({r["variant"] for r in rows}))
    return _save(plt, figure, folder / "variants_vs_compute.png")


def plot_isoflop(rows, fits, variant: str, folder: Path, stem: str = "isoflop") -> str | None:
    """Figure 4: speech loss against model size at each budget, with the parabola through each, for one variant;
    None when the variant has no isoFLOP runs (a tokens-per-parameter grid)."""
    chosen = [r for r in rows if r["variant"] == variant and r["budget"] is not None]  # isoFLOP runs only
    if not chosen:
        return None
    plt, figure, axes = _figure()
    for colour, budget in zip(COLOURS, sorted({r["budget"] for r in chosen})):
        at_budget = sorted((r for r in chosen if r["budget"] == budget), key=lambda r: r["parameters"])
        x = np.array([r["parameters"] for r in at_budget])
        y = np.array([r["loss_speech"] for r in at_budget])
        axes.plot(x, y, "o", color=colour, label=f"C = {budget:.3g}")
        if len(np.unique(x)) >= 3:  # as approach 2 fits them: replicates (seeds) of 2 sizes make no parabola
            coefficients = np.polyfit(np.log(x), y, 2)
            grid = np.logspace(np.log10(x.min()), np.log10(x.max()), 40)
            axes.plot(grid, np.polyval(coefficients, np.log(grid)), "-", color=colour, alpha=0.6)
    labelled = False
    for vertex in fits.get(variant, {}).get("approach2", {}).get("vertices", []):
        if not vertex.get("inside_grid", True):
            continue  # a minimum outside the sizes run is an extrapolation, not a point to mark (the report says so)
        interval = vertex.get("n_opt_ci")
        axes.plot([vertex["n_opt"]], [vertex["loss_at_vertex"]], "x", color="black", ms=7,
                  label=None if labelled else "fitted minimum (95% CI when 4+ sizes)")
        if interval:
            # Drawn as its own segment: a percentile interval need not hold the point estimate (a skewed
            # resample), where error bars, which are lengths either side of the point, cannot be negative.
            axes.plot(interval, [vertex["loss_at_vertex"]] * 2, "|-", color="black", lw=1, ms=7)
        labelled = True
    axes.set(xscale="log", xlabel="parameters N (all)", ylabel="speech cross-entropy (nats)",
             title=f"isoFLOP curves, {variant} (cf. Fig. 4)")
    # The frame is the sizes run: an interval that reaches far past them (a flat resample's vertex) runs to the
    # frame's edge instead of stretching the axis over decades where there is no data.
    sizes = [r["parameters"] for r in chosen]
    axes.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)
    _legend_below(axes, len({r["budget"] for r in chosen}) + labelled)
    return _save(plt, figure, folder / f"{stem}.png")


def plot_loss_curves(rows, variant: str, folder: Path) -> str | None:
    """Chinchilla's Figure 2 (left): each run's smoothed curve of speech CE against compute (held-out when every
    run has one, as the fit reads them), coloured by size, and their envelope, which approach 1 reads; None when
    a run of the variant has no curve."""
    chosen = [dict(row) for row in rows if row["variant"] == variant]
    kind, _, _ = collect.attach_loss_curves(chosen)
    if not chosen or any(row["curve"] is None for row in chosen):
        return None
    import matplotlib.ticker

    plt, figure, axes = _figure()
    sizes, labelled, ends = sorted({row["parameters"] for row in chosen}), set(), []
    for row in chosen:
        tokens, smoothed = row["curve"][0], smooth_curve(*row["curve"])
        ends.append(smoothed[-1])
        first = row["parameters"] not in labelled
        labelled.add(row["parameters"])
        axes.plot(6.0 * row["parameters"] * tokens, smoothed, "-", color=COLOURS[sizes.index(row["parameters"]) %
                  len(COLOURS)], alpha=0.5, lw=0.8, label=f"{row['member']} (N = {row['parameters']:.3g})" if first
                  else None)
    flops, lowest, _ = curve_envelope(points_from_rows(chosen, curve_kind=kind))
    axes.plot(flops, lowest, "-", color="black", lw=1.6, label="envelope (approach 1)")
    axes.set(xscale="log", xlabel="training FLOPs so far (6ND)", ylabel=f"{kind} speech cross-entropy (nats)",
             title=f"Loss curves, {variant} (cf. Chinchilla Fig. 2)")
    # The frame starts a decade below the budgets: the first steps' losses would squash everything else. Over
    # a decade and more, labels at the minor ticks run into each other.
    axes.set_xlim(left=flops.min() / 10)
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_ylim(top=max(lowest.max(), min(ends)) * 1.25)
    _legend_below(axes, len(sizes) + 1)
    return _save(plt, figure, folder / "loss_curves.png")


def _spread_by_budget(chosen: list[dict[str, Any]]) -> np.ndarray:
    """Where to draw each run along a log compute axis: runs of one budget side by side in their given order,
    centred on the budget and together at most half the way to the nearest other budget, so that their
    error bars do not cover each other. A budget with one run stays where it is."""
    at = np.array([r["budget"] or r["flops"] for r in chosen], dtype=float)
    logs = np.log10(at)
    distinct = np.unique(logs)
    gap = float(np.diff(distinct).min()) if len(distinct) > 1 else 0.3
    spread = logs.copy()
    for position in distinct:
        members = np.flatnonzero(logs == position)
        step = min(0.02, 0.5 * gap / len(members))
        spread[members] += step * (np.arange(len(members)) - (len(members) - 1) / 2)
    return 10 ** spread


def plot_accuracy(rows, fits, folder: Path) -> str | None:
    """Figure 7: benchmark accuracy against compute, one panel per benchmark, with the fitted power law per
    variant. Every run is drawn with its interval: a budget's runs are spread a little sideways (by variant,
    then size) instead of on one vertical line, where a dozen intervals hid each other."""
    keys = sorted({name for r in rows for name in r["accuracies"]})
    if not keys:
        return None
    variants = sorted({r["variant"] for r in rows})
    plt, figure, panels = _figure(len(keys))
    for axes, key in zip(panels, keys):
        chosen = sorted((r for r in rows if key in r["accuracies"]),
                        key=lambda r: (variants.index(r["variant"]), r["parameters"], r.get("seed") or 0))
        positions = _spread_by_budget(chosen)
        for colour, variant in zip(COLOURS, variants):
            mine = [index for index, r in enumerate(chosen) if r["variant"] == variant]
            if not mine:
                continue
            results = [chosen[index]["accuracies"][key] for index in mine]
            accuracy = np.array([100 * a.accuracy for a in results])
            error = np.array([[100 * (a.accuracy - a.ci_low) for a in results],
                              [100 * (a.ci_high - a.accuracy) for a in results]])
            axes.errorbar(positions[mine], accuracy, yerr=error, fmt="o", ms=3, color=colour, alpha=0.7, capsize=1.5,
                          lw=0.7, label=f"{variant}: a run (95% CI)")
            law = fits.get(variant, {}).get("metrics", {}).get(key)
            if law and np.isfinite(law["gamma"]):
                flops = np.array([chosen[index]["flops"] for index in mine])
                grid = np.logspace(np.log10(flops.min()), np.log10(flops.max()), 20)
                axes.plot(grid, 100 * law["k"] * grid ** law["gamma"], "-", color=colour, lw=1.4,
                          label=f"{variant}: fitted power law")
        axes.axhline(50, color="grey", lw=0.8, ls="--", label="chance (50%)")
        axes.set(xscale="log", ylabel="accuracy (%)")
        axes.set_title(key, fontsize=9, loc="left")
    # Ticks at the budgets run: the runs sit around them, and log-axis minor labels (2e11, 3e11) name none.
    scored = [r for r in rows if r["accuracies"]]
    if all(r["budget"] for r in scored):
        budgets = sorted({r["budget"] for r in scored})
        panels[-1].set_xticks(budgets, [f"{b:.3g}" for b in budgets], minor=False)
        panels[-1].set_xticks([], minor=True)
    panels[-1].set_xlabel("training FLOPs (6ND): the budget a run had")
    figure.suptitle("Benchmark accuracy vs compute (cf. Fig. 7)")
    _legend_below(panels[-1], 2 * len(variants) + 1, below=0.3)
    return _save(plt, figure, folder / "accuracy_vs_compute.png")


# What each figure shows and how to read it, under it on the page.
CAPTIONS = {
    "best_loss_vs_compute": "Each point is the lowest {loss} speech cross-entropy any run of a variant reached "
    "at one FLOP budget. Solid lines are that variant's fitted law L(C) = E + A/N^α + B/D^β at its compute-optimal "
    "N and D, with its 95% bootstrap band; they are dotted where they extrapolate past the budgets run (shaded). "
    "The dashed black line is the textless law Cuervo & Marxer (2024) fit on HuBERT units: the units here differ, "
    "so compare its slope, not its level. A degenerate fit is not drawn (the tables say why).",
    "variants_vs_compute": "Every run's {loss} speech cross-entropy against its training compute (points), and "
    "each variant's best run per budget (line). Lower is better; a variant whose line lies below another's reaches "
    "the same loss with less compute.",
    "isoflop": "Runs of one budget (one colour) at different model sizes, with the parabola in log N through them "
    "(several points at one size are its runs at different seeds). "
    "A cross marks the fitted minimum, the compute-optimal size at that budget, with its 95% bootstrap interval "
    "when the budget has 4 or more sizes (an interval that runs to the frame's edge goes on past the sizes run); "
    "minima outside the sizes run are not marked (the grid does not bracket them).",
    "loss_curves": "Every run's speech cross-entropy as it trained, against the compute spent so far, one "
    "colour per size: its validations when every run validated during training (validation_every), else its "
    "training loss on the training mix, which is not the validation loss of the other figures (the y axis says "
    "which). Smoothed by a centred mean over the points within 2.5% of a point's tokens. The black line is their "
    "envelope over the budgets run: at each compute the lowest any run had reached, which is what approach 1 reads "
    "(the size of that run against compute gives its exponent a).",
    "accuracy_vs_compute": "One panel per benchmark: every run's accuracy with its 95% bootstrap interval, against "
    "its training compute, and the power law fitted per variant (lines). A budget's runs are drawn a little apart "
    "(by variant, then from the smallest size to the largest) so that no interval hides another; they all ran at "
    "that budget. The dashed line is chance: a run whose interval includes it is not shown to be above chance.",
}


def _cell(value: Any) -> str:
    """A table cell; a number that could not be computed shows as n/a (the notes under the fit tables say why)."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    return html.escape(str(value))


def _table(header: list[str], body: list[list[Any]]) -> str:
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in body)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{rows}</table>"


def _interval(values: list[float]) -> str:
    return f"[{values[0]:.4g}, {values[1]:.4g}]" if all(math.isfinite(v) for v in values) else "n/a"


def fit_tables(fits: dict[str, Any]) -> str:
    """The fitted laws, allocation exponents and accuracy exponents, with their intervals."""
    parts = []
    law_rows, exponent_rows, metric_rows = [], [], []
    for variant, fit in fits.items():
        approach3 = fit["approach3"]
        if approach3.get("degenerate"):
            law_rows.append([variant, "degenerate: not shown", "; ".join(approach3["degenerate"]), "", ""])
        for name in ("E", "A", "B", "alpha", "beta") if not approach3.get("degenerate") else ():
            law_rows.append([variant, name, approach3["law"][name], _interval(approach3["ci"][name]),
                             TEXTLESS_REFERENCE[name]])
        # fit.json files from before training curves hold the envelope of final points.
        first_method = fit["approach1"].get("method", "final points")
        exponent_rows.append([variant, f"approach 1 (envelope of {first_method})", fit["approach1"]["a"], "",
                              fit["approach1"]["b"]])
        second = fit["approach2"]
        exponent_rows.append([variant, "approach 2 (isoFLOP)", second["a"],
                              _interval(second["ci_a"]) if second.get("ci_a") else "(needs 4+ sizes per budget)",
                              second["b"]])
        if not approach3.get("degenerate"):
            exponent_rows.append([variant, "approach 3 (parametric)", approach3["a"], _interval(approach3["ci_a"]),
                                  approach3["b"]])
        for name, law in fit.get("metrics", {}).items():
            reference = textless_exponent(name)
            reference = "" if reference is None else reference
            metric_rows.append([variant, name, law["gamma"], _interval(law["ci_gamma"]), reference, law["num_points"]])
    # `simslm fit --estimator`: Hoffmann et al.'s Huber loss unless fit.json says otherwise (older ones say nothing).
    estimators = ", ".join(sorted({fit["approach3"].get("estimator", "huber") for fit in fits.values()}))
    # `simslm fit --bootstrap`: over all runs (Besiroglu et al.'s) unless it says within budgets, as older ones did.
    bootstraps = " / ".join(sorted({"resampling runs" if fit["approach3"].get("bootstrap", "budgets") == "runs"
                                    else "resampling runs within each budget" for fit in fits.values()}))
    parts.append(f"<h3>Parametric law L = E + A/N^α + B/D^β (approach 3, estimator {html.escape(estimators)}, "
                 f"95% bootstrap CI, {bootstraps})</h3>")
    parts.append(_table(["variant", "parameter", "fit", "95% CI", "textless (Cuervo & Marxer)"], law_rows))
    parts.append("<h3>Compute-optimal allocation N_opt ∝ C^a, D_opt ∝ C^b</h3>")
    parts.append(_table(["variant", "method", "a", "95% CI of a", "b"], exponent_rows))
    if metric_rows:
        parts.append("<h3>Accuracy ∝ C^γ</h3>")
        parts.append(_table(["variant", "benchmark", "γ", "95% CI", "textless γ (speech)", "points"], metric_rows))
    notes = [f"<li>{html.escape(variant)}: {html.escape(note)}</li>" for variant, fit in fits.items()
             for note in [*(f"approach 3 is degenerate: {reason}" for reason in fit["approach3"].get("degenerate") or []),
                          *fit.get("warnings", [])]]
    for variant, fit in fits.items():
        for name, law in fit.get("metrics", {}).items():
            if not math.isfinite(law["gamma"]):
                notes.append(f"<li>{html.escape(variant)}: no power law for {html.escape(name)}: "
                             f"{law['num_points']} usable point(s), 3 are needed</li>")
    if notes:
        parts.append("<h3>Notes on the fits (why a number is n/a or not to be trusted)</h3>")
        parts.append(f"<ul>{''.join(notes)}</ul>")
    return "\n".join(parts)


def _bracket_note(sweep_dir: Path) -> str:
    """The budgets whose best run stays at an edge of the grid (bracket.json), so their minimum is not known."""
    path = sweep_dir / bracket.BRACKET_FILE
    record = storage.read_json(path) if path.exists() else {}
    items = [f"<li>{html.escape(edge['variant'])} at C = {edge['budget']:.3g}: best at its {'smallest' if edge['needs'] == 'smaller' else 'largest'} "
             f"size ({html.escape(edge['member'])}); {html.escape(edge['reason'])}</li>"
             for edge in record.get("unbracketed", [])]
    added = ", ".join(html.escape(item["size"] + (f" ({item['variant']} at C = {item['budget']:.3g} only)"
                                                  if item.get("variant") else ""))
                      for item in record.get("added", []))
    return ((f"<p>Sizes added to bracket the minima: {added}.</p>" if added else "") +
            (f"<p><b>Not bracketed</b> (the isoFLOP minimum may lie outside the grid):</p><ul>{''.join(items)}</ul>"
             if items else ""))


def _accuracy_cell(result) -> str:
    return f"{100 * result.accuracy:.1f}% [{100 * result.ci_low:.1f}, {100 * result.ci_high:.1f}]"


def _figure_html(stem: str, loss: str) -> str:
    """A figure and its caption, which names the loss the runs are compared on (`collect.loss_kind`)."""
    caption = (CAPTIONS.get(stem) or CAPTIONS[stem.partition("-")[0]]).replace("{loss}", loss)  # isoflop-VARIANT
    # A screen reader's text for the figure: its caption's first sentence (the file name said nothing).
    alt = caption.split(". ")[0].rstrip(".") + "."
    return (f'<figure><img src="{stem}.svg" alt="{html.escape(alt)}"><figcaption>{html.escape(caption)} '
            f'<a href="{stem}.png">PNG (300 dpi)</a></figcaption></figure>')


def write_report(sweep_dir: str | Path, *, summary: str = "", out: str | Path | None = None,
                 num_workers: int = 1) -> Path:
    """Write `index.html` and its figures into `out` (default `<sweep>/report`); the sweep's fit.json is computed
    first when missing (written into `out` when the sweep folder cannot be written), its bootstrap on
    `num_workers` processes."""
    sweep_dir = Path(sweep_dir)
    folder = Path(out) if out else sweep_dir / "report"
    storage.refuse_unwritable(folder / "index.html", "pass --out FOLDER to write the report elsewhere")
    rows = [row for row in collect.collect(sweep_dir) if row.get("loss_speech") is not None]
    if not rows:
        raise ValueError(f"{sweep_dir}: no finished runs to report on")
    fit_path = sweep_dir / "fit.json"
    if fit_path.exists():
        stored = storage.read_json(fit_path)
        source = stored.get("source")  # relative to fit.json's folder: "." for the sweep's own (older ones: none)
        if source is not None and os.path.realpath(fit_path.parent / source) != os.path.realpath(sweep_dir):
            raise ValueError(f"{fit_path}: the fit of {os.path.normpath(fit_path.parent / source)}, not of this "
                             f"sweep; `simslm fit {sweep_dir}` fits it again")
        if stored.get("convention", "all") != "all":
            # Its laws read C = 6 N D with N outside the embeddings; the page draws the runs at the compute and sizes
            # they were planned in (all parameters), where those laws and isoFLOP minima would sit misplaced.
            raise ValueError(f"{fit_path}: a fit of N as {stored['convention']} parameters, and the report draws C = "
                             f"6 N D with all parameters; `simslm fit {sweep_dir}` fits it so (write a "
                             f"{stored['convention']} fit elsewhere with --out)")
        fits = stored["variants"]
        stale = collect.stale_fit(fit_path, stored, {row["id"] for row in rows})
        if stale:
            print(f"simslm report: warning: {stale}", file=sys.stderr)
    else:
        fit_out = None if storage.may_write(sweep_dir) else folder / "fit.json"
        fits = collect.fit_sweep(sweep_dir, out=fit_out, num_workers=num_workers)["variants"]
    folder.mkdir(parents=True, exist_ok=True)
    main_variant = rows[0]["variant"]  # the sweep's first variant (interleaved + TWIST in the demo)
    # The isoFLOP curves of every variant, the first as isoflop.svg: a sweep of several recipes or families asks
    # where each one's compute-optimal size lies, not only the first one's.
    others = [variant for variant in dict.fromkeys(row["variant"] for row in rows) if variant != main_variant]
    isoflops = [plot_isoflop(rows, fits, main_variant, folder)] + [
        plot_isoflop(rows, fits, variant, folder, "isoflop-" + re.sub(r"[^A-Za-z0-9._-]+", "_", variant))
        for variant in others]
    images = [plot_best_loss(rows, fits, folder), plot_variants(rows, folder), *isoflops,
              plot_loss_curves(rows, main_variant, folder), plot_accuracy(rows, fits, folder)]
    accuracy_keys = sorted({name for r in rows for name in r["accuracies"]})
    loss = collect.loss_kind(rows)
    seeds = len({r.get("seed") for r in rows}) > 1  # replicates: which run of its cell each row is
    run_rows = [[r["variant"], r["member"], *([r.get("seed")] if seeds else []), r["parameters"], r["tokens"],
                 r["flops"], r["loss_speech"],
                 *[_accuracy_cell(r["accuracies"][k]) if k in r["accuracies"] else "" for k in accuracy_keys]]
                # By grid point and size, not by the FLOPs a run reached: its last whole step takes it past its
                # budget by part of a step, which differs by size and listed a budget's sizes out of order.
                for r in sorted(rows, key=lambda r: (r["variant"], r["budget"] or 0, r.get("tokens_per_parameter") or 0,
                                                     r["parameters"], r.get("seed") or 0))]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>simslm sweep report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:0.85em}}td,th{{border:1px solid #ccc;padding:3px 7px}}
img{{max-width:100%}}figure{{margin:1.5em 0}}figcaption{{font-size:0.85em;color:#444;max-width:52em}}pre{{background:#f5f5f5;padding:1em;white-space:pre-wrap}}</style></head><body>
<h1>Scaling report: {html.escape(sweep_dir.name)}</h1>
{f'<pre>{html.escape(summary)}</pre>' if summary else ''}
<p>Loss: speech-only cross-entropy ({html.escape(loss)}); compute C = 6ND with N = all parameters.
{len(rows)} finished runs.</p>
{''.join(_figure_html(name, loss) for name in images if name)}
{_bracket_note(sweep_dir)}
<h2>Fits</h2>
{fit_tables(fits)}
<h2>Runs</h2>
{_table(["variant", "size", *(["seed"] if seeds else []), "parameters", "tokens", "FLOPs", "speech CE",
         *[f"{key} (95% CI)" for key in accuracy_keys]], run_rows)}
</body></html>"""
    storage.write_text(folder / "index.html", page)
    return folder / "index.html"


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

