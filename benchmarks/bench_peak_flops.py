"""The MFU denominator's measurement (`train.peak.measure_peak_flops`): today's against an earlier commit's, alternated.

    .venv/bin/python benchmarks/bench_peak_flops.py [--before e97ea67^] [--repeats 2] [--fp32]

The earlier function is read from git history and run in this process beside today's, each on the CPU in bf16 (or
fp32 with `--fp32`), alternating; each line is one measurement: its wall time and the peak it gives. Before
e97ea67 the CPU was timed in rounds of 10 products, as a GPU is; a CPU without native bf16 takes seconds a product.
"""

import argparse
import ast
import subprocess
import time

from simslm.train.peak import measure_peak_flops


def earlier(commit: str):
    """`measure_peak_flops` as it was at `commit`."""
    source = subprocess.run(["git", "show", f"{commit}:src/simslm/train.py"], capture_output=True, text=True,
                            check=True).stdout
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "measure_peak_flops")
    namespace = {"time": time}
    exec(compile(ast.Module([node], []), f"{commit}:src/simslm/train.py", "exec"), namespace)
    return namespace["measure_peak_flops"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="e97ea67^")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fp32", action="store_true")
    args = parser.parse_args()
    contenders = (("before", earlier(args.before)), ("now", measure_peak_flops))
    for _ in range(args.repeats):
        for name, function in contenders:
            started = time.perf_counter()
            peak = function("cpu", bf16=not args.fp32)
            print(f"{name:<7} {time.perf_counter() - started:6.1f} s  {peak / 1e9:8.2f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
