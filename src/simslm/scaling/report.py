"""The sweep report: one HTML page with PNG plots and tables, drawn from the ledger and fit.json.

Figures follow the paper's (Maimon et al. 2025): best speech loss per compute beside the
textless law of Cuervo & Marxer (Figure 1), interleaved vs textless vs random-init curves
(Figure 3), isoFLOP curves of speech loss against model size (Figure 4), and benchmark
accuracy against compute (Figure 7); then the fitted laws with their intervals.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from simslm import jobs
from simslm.scaling import sweep
from simslm.scaling.fit import TEXTLESS_EXPONENTS, TEXTLESS_REFERENCE, Law

COLOURS = ("#1b6ca8", "#d1495b", "#66a182", "#edae49", "#6c4f8b", "#00798c")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    return plt, figure, axes


def _save(plt, figure, path: Path) -> str:
    figure.tight_layout()
    with jobs.atomic_path(path) as temporary:
        figure.savefig(temporary)
    plt.close(figure)
    return path.name


def _best_per_budget(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Budgets and the lowest speech CE at each, for one variant's rows."""
    best = sorted((budget, row["loss_speech"]) for (_, budget), row in sweep.best_runs(rows).items())
    return np.array([b for b, _ in best]), np.array([loss for _, loss in best])


def plot_best_loss(rows, fits, folder: Path) -> str:
    """Figure 1: the lowest speech loss at each budget, per variant, with fitted and textless laws."""
    plt, figure, axes = _figure()
    flops_range = np.logspace(math.log10(min(r["flops"] for r in rows)) - 0.3,
                              math.log10(max(r["flops"] for r in rows)) + 0.3, 50)
    for colour, variant in zip(COLOURS, sorted({r["variant"] for r in rows})):
        budgets, best = _best_per_budget([r for r in rows if r["variant"] == variant])
        axes.plot(budgets, best, "o", color=colour, label=f"{variant} (best run per budget)")
        approach3 = fits.get(variant, {}).get("approach3", {})
        law = approach3.get("law")
        if law and not approach3.get("degenerate"):  # a degenerate law would be drawn as if it were a result
            axes.plot(flops_range, Law(**law).best_loss(flops_range), "-", color=colour, alpha=0.7,
                      label=f"{variant}: fitted law")
    reference = Law(**TEXTLESS_REFERENCE)
    axes.plot(flops_range, reference.best_loss(flops_range), "k--",
              label="textless law, Cuervo & Marxer 2024 (HuBERT units)")
    axes.set(xscale="log", xlabel="training FLOPs (6ND)", ylabel="speech cross-entropy (nats)",
             title="Best speech loss per compute (cf. paper Fig. 1)")
    axes.legend(fontsize=7)
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
    axes.legend(fontsize=8)
    return _save(plt, figure, folder / "variants_vs_compute.png")


def plot_isoflop(rows, fits, variant: str, folder: Path) -> str:
    """Figure 4: speech loss against model size at each budget, with the parabola through each."""
    plt, figure, axes = _figure()
    chosen = [r for r in rows if r["variant"] == variant and r["budget"] is not None]  # isoFLOP runs only
    for colour, budget in zip(COLOURS, sorted({r["budget"] for r in chosen})):
        at_budget = sorted((r for r in chosen if r["budget"] == budget), key=lambda r: r["parameters"])
        x = np.array([r["parameters"] for r in at_budget])
        y = np.array([r["loss_speech"] for r in at_budget])
        axes.plot(x, y, "o", color=colour, label=f"C = {budget:.1e}")
        if len(x) >= 3:
            coefficients = np.polyfit(np.log(x), y, 2)
            grid = np.logspace(np.log10(x.min()), np.log10(x.max()), 40)
            axes.plot(grid, np.polyval(coefficients, np.log(grid)), "-", color=colour, alpha=0.6)
    for vertex in fits.get(variant, {}).get("approach2", {}).get("vertices", []):
        axes.axvline(vertex["n_opt"], color="grey", lw=0.6, ls=":")
    axes.set(xscale="log", xlabel="parameters N (all)", ylabel="speech cross-entropy (nats)",
             title=f"isoFLOP curves, {variant} (cf. Fig. 4)")
    axes.legend(fontsize=8)
    return _save(plt, figure, folder / "isoflop.png")


def plot_accuracy(rows, fits, folder: Path) -> str | None:
    """Figure 7: benchmark accuracy against compute, with the fitted power law per variant."""
    keys = sorted({name for r in rows for name in r["accuracies"]})
    if not keys:
        return None
    plt, figure, axes = _figure()
    styles = ("o", "s", "^", "v", "D", "P")
    for colour, variant in zip(COLOURS, sorted({r["variant"] for r in rows})):
        for style, key in zip(styles, keys):
            chosen = [r for r in rows if r["variant"] == variant and key in r["accuracies"]]
            if not chosen:
                continue
            flops = np.array([r["flops"] for r in chosen])
            axes.plot(flops, [100 * r["accuracies"][key].accuracy for r in chosen], style, color=colour, alpha=0.5,
                      label=f"{variant} {key}")
            law = fits.get(variant, {}).get("metrics", {}).get(key)
            if law and np.isfinite(law["gamma"]):
                grid = np.logspace(np.log10(flops.min()), np.log10(flops.max()), 20)
                axes.plot(grid, 100 * law["k"] * grid ** law["gamma"], "-", color=colour, alpha=0.6)
    axes.axhline(50, color="grey", lw=0.8, ls="--")
    axes.set(xscale="log", xlabel="training FLOPs (6ND)", ylabel="accuracy (%)",
             title="Benchmark accuracy vs compute (cf. Fig. 7)")
    axes.legend(fontsize=6, ncol=2)
    return _save(plt, figure, folder / "accuracy_vs_compute.png")


def _table(header: list[str], body: list[list[Any]]) -> str:
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in body)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{rows}</table>"


def _interval(values: list[float]) -> str:
    return f"[{values[0]:.4g}, {values[1]:.4g}]"


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
        exponent_rows.append([variant, "approach 1 (envelope)", fit["approach1"]["a"], "", fit["approach1"]["b"]])
        exponent_rows.append([variant, "approach 2 (isoFLOP)", fit["approach2"]["a"], "", fit["approach2"]["b"]])
        if not approach3.get("degenerate"):
            exponent_rows.append([variant, "approach 3 (parametric)", approach3["a"], _interval(approach3["ci_a"]),
                                  approach3["b"]])
        for name, law in fit.get("metrics", {}).items():
            reference = TEXTLESS_EXPONENTS.get(name.split("/")[0].lower(), "")
            metric_rows.append([variant, name, law["gamma"], _interval(law["ci_gamma"]), reference, law["num_points"]])
    parts.append("<h3>Parametric law L = E + A/N^α + B/D^β (approach 3, 95% bootstrap CI)</h3>")
    parts.append(_table(["variant", "parameter", "fit", "95% CI", "textless (Cuervo & Marxer)"], law_rows))
    parts.append("<h3>Compute-optimal allocation N_opt ∝ C^a, D_opt ∝ C^b</h3>")
    parts.append(_table(["variant", "method", "a", "95% CI of a", "b"], exponent_rows))
    if metric_rows:
        parts.append("<h3>Accuracy ∝ C^γ</h3>")
        parts.append(_table(["variant", "benchmark", "γ", "95% CI", "textless γ (speech)", "points"], metric_rows))
    return "\n".join(parts)


def _bracket_note(sweep_dir: Path) -> str:
    """The budgets whose best run stays at an edge of the grid (bracket.json), so their minimum is not known."""
    path = sweep_dir / sweep.BRACKET_FILE
    record = jobs.read_json(path) if path.exists() else {}
    items = [f"<li>{html.escape(edge['variant'])} at C = {edge['budget']:.2g}: best at its {'smallest' if edge['needs'] == 'smaller' else 'largest'} "
             f"size ({html.escape(edge['member'])}); {html.escape(edge['reason'])}</li>"
             for edge in record.get("unbracketed", [])]
    added = ", ".join(html.escape(item["size"]) for item in record.get("added", []))
    return ((f"<p>Sizes added to bracket the minima: {added}.</p>" if added else "") +
            (f"<p><b>Not bracketed</b> (the isoFLOP minimum may lie outside the grid):</p><ul>{''.join(items)}</ul>"
             if items else ""))


def write_report(sweep_dir: str | Path, *, summary: str = "") -> Path:
    """Write `<sweep>/report/index.html` and its PNGs; fit.json is computed first when missing."""
    sweep_dir = Path(sweep_dir)
    rows = [row for row in sweep.collect(sweep_dir) if row.get("loss_speech") is not None]
    if not rows:
        raise ValueError(f"{sweep_dir}: no finished runs to report on")
    fit_path = sweep_dir / "fit.json"
    fits = (jobs.read_json(fit_path) if fit_path.exists() else sweep.fit_sweep(sweep_dir))["variants"]
    folder = sweep_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    main_variant = rows[0]["variant"]  # the sweep's first variant (interleaved + TWIST in the demo)
    images = [plot_best_loss(rows, fits, folder), plot_variants(rows, folder),
              plot_isoflop(rows, fits, main_variant, folder), plot_accuracy(rows, fits, folder)]
    accuracy_keys = sorted({name for r in rows for name in r["accuracies"]})
    run_rows = [[r["variant"], r["member"], r["parameters"], r["tokens"], r["flops"], r["loss_speech"],
                 *[r["accuracies"][k].accuracy if k in r["accuracies"] else "" for k in accuracy_keys]]
                for r in sorted(rows, key=lambda r: (r["variant"], r["flops"]))]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>simslm sweep report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:0.85em}}td,th{{border:1px solid #ccc;padding:3px 7px}}
img{{max-width:100%}}pre{{background:#f5f5f5;padding:1em;white-space:pre-wrap}}</style></head><body>
<h1>Scaling report: {html.escape(sweep_dir.name)}</h1>
{f'<pre>{html.escape(summary)}</pre>' if summary else ''}
<p>Loss: speech-only cross-entropy ({html.escape(rows[0]['loss_source'])}); compute C = 6ND with N = all parameters.
{len(rows)} finished runs.</p>
{''.join(f'<p><img src="{name}"></p>' for name in images if name)}
{_bracket_note(sweep_dir)}
<h2>Fits</h2>
{fit_tables(fits)}
<h2>Runs</h2>
{_table(["variant", "size", "parameters", "tokens", "FLOPs", "speech CE", *accuracy_keys], run_rows)}
</body></html>"""
    jobs.write_text(folder / "index.html", page)
    return folder / "index.html"
