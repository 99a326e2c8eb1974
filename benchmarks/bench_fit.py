"""Time to fit Approach 3 (parametric law) with 4,000 bootstrap resamples on a few hundred points.

    .venv/bin/python benchmarks/bench_fit.py --points 300 --resamples 4000

Points: an isoFLOP grid (12 budgets x 25 sizes) drawn from a known law with 0.5% noise.
Reported: the full-data fit (4,500-point start grid (Chinchilla's), then L-BFGS from the best 8), the
bootstrap with 1 and with 2 worker processes side by side, and whether the known
parameters fall inside the intervals.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from simslm.scaling.fit import Law, approach3, fit_law, synthetic_isoflop_points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=4000)
    args = parser.parse_args()
    law = Law(E=1.8, A=30.0, B=60.0, alpha=0.32, beta=0.28)
    points = synthetic_isoflop_points(law, np.logspace(12, 18, 12), np.logspace(-1.5, 1.5, 25),
                                              noise=0.005)
    started = time.perf_counter()
    fit_law(points)
    full_fit = time.perf_counter() - started
    rows = [("points", f"{len(points)}"), ("full-data fit (grid + 8 L-BFGS starts)", f"{full_fit:.2f} s")]
    for workers in (1, 2):
        started = time.perf_counter()
        fit = approach3(points, num_resamples=args.resamples, num_workers=workers)
        seconds = time.perf_counter() - started
        covered = [name for name in ("E", "A", "B", "alpha", "beta")
                   if fit["ci"][name][0] <= getattr(law, name) <= fit["ci"][name][1]]
        rows.append((f"approach 3 with {args.resamples} bootstrap resamples, {workers} worker(s)",
                     f"{seconds:.1f} s ({1000 * seconds / args.resamples:.1f} ms per resample); "
                     f"known parameters inside their 95% CI: {', '.join(covered)}"))
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
