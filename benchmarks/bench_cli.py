"""The start of a `simslm` command: a parser of every command's options against one of the named command's only.

    .venv/bin/python benchmarks/bench_cli.py [--repeats 5]

Each contender parses the same command lines in a fresh interpreter (what every `simslm` call and every run of a
local sweep pays), alternating:

- every command: `build_parser()`, the parser simslm built for each call before 2026-12-04;
- named command: `parse_arguments(argv)`, which builds the options of the command `argv` names only.

Reports the median wall time of each, import of simslm.cli included, and checks both parse alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMAND_LINES = (["--help"], ["sweep", "run-one", "some/sweep", "a-run"], ["sweep", "status", "some/sweep"],
                 ["train", "--config", "run.json", "lr=0.001"])

CONTENDERS = {
    "every command": "from simslm.cli import build_parser\nargs, _ = build_parser().parse_known_args(ARGV)",
    "named command": "from simslm.cli import parse_arguments\nargs = parse_arguments(ARGV)",
}


def _timed(program: str, argv: list[str]) -> tuple[float, str]:
    code = (f"ARGV = {argv!r}\n{program}\n"
            "print(sorted((k, str(v)) for k, v in vars(args).items() if k not in ('handler', 'config_class')))")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    return elapsed, done.stdout if done.returncode == 0 else f"exit {done.returncode}: {done.stdout[-200:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| command line | every command (s) | named command (s) | ratio |\n| --- | --- | --- | --- |")
    for argv in COMMAND_LINES:
        times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        parsed: dict[str, set[str]] = {name: set() for name in CONTENDERS}
        for _ in range(args.repeats):
            for name, program in CONTENDERS.items():
                elapsed, output = _timed(program, argv)
                times[name].append(elapsed)
                parsed[name].add(output)
        # The parsed arguments, or for --help the help text printed (it exits before the print).
        assert parsed["every command"] == parsed["named command"], (argv, parsed)
        every, named = (statistics.median(times[name]) for name in CONTENDERS)
        print(f"| `simslm {' '.join(argv)}` | {every:.2f} | {named:.2f} | {every / named:.1f}x |")


if __name__ == "__main__":
    main()
