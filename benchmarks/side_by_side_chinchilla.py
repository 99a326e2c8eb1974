"""Side by side with Epoch AI's replication of Chinchilla's approach 3, on Chinchilla's own runs.

    git clone https://github.com/epoch-research/analyzing-chinchilla /tmp/analyzing-chinchilla
    python3 -m venv /tmp/epochvenv && /tmp/epochvenv/bin/pip install autograd pandas scipy matplotlib scikit-learn
    .venv/bin/python benchmarks/side_by_side_chinchilla.py --epoch-repo /tmp/analyzing-chinchilla \
        --epoch-python /tmp/epochvenv/bin/python [--bootstrap]

Besiroglu et al. (2024) extracted the 245 runs of Hoffmann et al.'s Figure 4 (`data/svg_extracted_data.csv`) and
refitted L = E + A/N^alpha + B/D^beta as Hoffmann et al. describe it: Huber loss (delta 1e-3) on log-loss, L-BFGS from
every point of a grid of starts, the five runs of highest loss left out. Their notebook (`data_analysis.ipynb`) is
run here in its own environment, not copied: its cells that read the data, leave out those runs, define the
objective and search the grid are executed as they are. With `--bootstrap` its bootstrap cell (4,000 resamples)
runs too, for the standard deviation of each parameter.

simslm's side reads the same rows, less the same five, as `simslm fit TABLE` reads a table, and fits with
`simslm.scaling.fit`: L-BFGS from the 8 best grid points, then 1,000 bootstrap resamples of the runs.

The estimates their paper reports (A = 482.01, B = 2085.43) come from a further cell, run here too: a maximum
likelihood fit under a Huber density with a fitted scale, which is simslm's `--estimator likelihood`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from simslm.scaling import fit

# Each of the notebook's cells that this runs: the first cell holding the line given (not found by position,
# which a later commit of the notebook may shift; later cells redefine some names for other analyses).
CELLS = {
    "imports": "#Imports",
    "data": "pd.read_csv('data/svg_extracted_data.csv')",
    "exclusion": "nr_of_models_excluded =",
    "resample indices": "random_indices =",
    "objective": "def huber_loss_objective",
    "grid fit": "for alpha, beta, e, a, b in product(",
    "likelihood fit": "init_params = list(true_params) + [0]",
}
BOOTSTRAP_CELL = "param_list.append(result.x)"

EPOCH_SIDE = r"""
import contextlib, io, json, sys, os, time
import numpy
notebook, cells = json.load(open(sys.argv[1])), json.loads(sys.argv[2])
os.chdir(os.path.dirname(os.path.abspath(sys.argv[1])))
namespace, seconds = {}, {}
for name, source in cells:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, name, "exec"), namespace)
    seconds[name] = time.perf_counter() - start
    if name == "grid fit":  # taken now: the bootstrap cell reuses these names
        out = {"theta": [float(x) for x in namespace["best_params"]], "objective": float(namespace["best_loss"]),
               "num_runs": len(namespace["indices"]), "seconds": seconds}
    if name == "likelihood fit":
        out["likelihood"] = {"theta": [float(x) for x in namespace["result"].x],
                             "objective": float(namespace["result"].fun)}
if "param_list" in namespace:
    draws = numpy.asarray(namespace["param_list"])
    named = numpy.hstack([numpy.exp(draws[:, 2:3]), numpy.exp(draws[:, :2]), draws[:, 3:]])  # E, A, B, alpha, beta
    out["sd"] = named.std(axis=0, ddof=1).tolist()
    out["num_resamples"] = len(draws)
print(json.dumps(out))
"""


def notebook_cells(notebook: Path, bootstrap: bool) -> list[tuple[str, str]]:
    sources = [''.join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"]
               if cell["cell_type"] == "code"]
    wanted = {**CELLS, **({"bootstrap": BOOTSTRAP_CELL} if bootstrap else {})}
    found = []
    for name, marker in wanted.items():
        source = next((source for source in sources if marker in source), None)
        if source is None:
            sys.exit(f"{notebook}: no cell holds {marker!r} ({name})")
        found.append((name, source))
    return found


def recorded_output(notebook: Path, marker: str) -> str:
    """What the notebook printed, as committed, for the cell holding `marker`."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code" and marker in ''.join(cell["source"]):
            return "".join("".join(output.get("text", [])) for output in cell.get("outputs", []))
    return ""


def table_without_highest(csv_path: Path, out: Path, excluded: int = 5) -> int:
    """Their rows as a simslm table: tokens = FLOP / 6N as their notebook computes them, and the `excluded` runs of
    highest loss left out as their notebook leaves them out (loss strictly below the `excluded`-th highest)."""
    rows = [row for row in csv.DictReader(csv_path.open(newline=""))
            if all(row.get(key) for key in ("Model Size", "Training FLOP", "loss"))]
    cut = sorted(float(row["loss"]) for row in rows)[-excluded]
    kept = [row for row in rows if float(row["loss"]) < cut]
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["parameters", "tokens", "loss"])
        for row in kept:
            parameters = float(row["Model Size"])
            writer.writerow([repr(parameters), repr(float(row["Training FLOP"]) / (6.0 * parameters)), row["loss"]])
    return len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch-repo", required=True, type=Path,
                        help="a checkout of epoch-research/analyzing-chinchilla")
    parser.add_argument("--epoch-python", required=True, help="the python of an environment with autograd and pandas")
    parser.add_argument("--bootstrap", action="store_true", help="also run their 4,000-resample bootstrap (minutes)")
    parser.add_argument("--num-resamples", type=int, default=1000)
    args = parser.parse_args()
    notebook = args.epoch_repo / "data_analysis.ipynb"
    commit = subprocess.run(["git", "-C", str(args.epoch_repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    print(f"Epoch AI's notebook at {commit.stdout.strip() or '(not a git checkout)'}")

    run = subprocess.run([args.epoch_python, "-c", EPOCH_SIDE, str(notebook),
                          json.dumps(notebook_cells(notebook, args.bootstrap))], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"Epoch AI's side failed:\n{run.stderr}")
    theirs = json.loads(run.stdout.splitlines()[-1])

    table = Path(tempfile.mkdtemp()) / "chinchilla_runs.csv"
    num_runs = table_without_highest(args.epoch_repo / "data" / "svg_extracted_data.csv", table)
    points = fit.read_table(table)
    logs = np.log(points.parameters), np.log(points.tokens), np.log(points.loss)
    print(f"runs fitted: Epoch {theirs['num_runs']}, simslm {num_runs}")
    worst, results = 0.0, {}
    for estimator, their_side, label in (("huber", theirs, "Epoch AI's grid fit (Huber loss)"),
                                         ("likelihood", theirs["likelihood"], "Epoch AI's Huber likelihood")):
        start = time.perf_counter()
        result = results[estimator] = fit.approach3(points, num_resamples=args.num_resamples, num_workers=2,
                                                    estimator=estimator)
        seconds = time.perf_counter() - start
        law = result["law"]
        ours = np.array([math.log(law["A"]), math.log(law["B"]), math.log(law["E"]), law["alpha"], law["beta"]]
                        + ([result["log_scale"]] if estimator == "likelihood" else []))
        other = np.array(their_side["theta"])
        if estimator == "huber":
            objective = {"simslm": fit._objective(ours, *logs, fit.HUBER_DELTA)[0],
                         "Epoch": fit._objective(other, *logs, fit.HUBER_DELTA)[0]}
        else:
            normaliser = fit._huber_log_normaliser(fit.HUBER_DELTA)
            objective = {"simslm": fit._likelihood(ours, *logs, fit.HUBER_DELTA, normaliser)[0],
                         "Epoch": fit._likelihood(other, *logs, fit.HUBER_DELTA, normaliser)[0]}
        mine, yours = named(ours), named(other)
        print(f"\n`--estimator {estimator}`\n\n| parameter | {label} | simslm | relative difference |\n"
              "| --- | --- | --- | --- |")
        for name in mine:
            difference = abs(mine[name] - yours[name]) / abs(yours[name])
            worst = max(worst, difference)
            print(f"| {name} | {yours[name]:.6g} | {mine[name]:.6g} | {difference:.1e} |")
        print(f"| objective (the same function) | {objective['Epoch']:.12g} | {objective['simslm']:.12g} | |")
        if objective["simslm"] > objective["Epoch"] + 1e-9 * abs(objective["Epoch"]):
            worst = max(worst, 1.0)  # simslm stopped short of an optimum Epoch's code found
        print(f"simslm's fit with {args.num_resamples} resamples: {seconds:.1f} s")
    print(f"\nlargest relative difference: {worst:.1e}; Epoch's grid of 4,500 starts took "
          f"{theirs['seconds']['grid fit']:.0f} s")

    print("\nBootstrap standard deviations (E, A, B, alpha, beta):")
    if "sd" in theirs:
        print(f"  Epoch, Huber loss, run here ({theirs['num_resamples']} resamples): "
              + ", ".join(f"{value:.4g}" for value in theirs["sd"]))
    for estimator, result in results.items():
        sd = np.asarray(result["samples"]).std(axis=0, ddof=1)
        print(f"  simslm, {estimator} ({args.num_resamples} resamples): " + ", ".join(f"{value:.4g}" for value in sd))
    print("  Epoch's notebook as committed (its likelihood estimates, with the Huber-loss bootstrap's standard "
          "deviations):\n    " + recorded_output(notebook, "parameter_labels =").strip().replace("\n", "\n    "))
    sys.exit(0 if worst < 1e-3 else 1)


def named(theta: np.ndarray) -> dict[str, float]:
    return {"E": math.exp(theta[2]), "A": math.exp(theta[0]), "B": math.exp(theta[1]), "alpha": theta[3],
            "beta": theta[4], "a = beta/(alpha+beta)": theta[4] / (theta[3] + theta[4]),
            **({"log scale": theta[5]} if len(theta) > 5 else {})}


if __name__ == "__main__":
    main()
