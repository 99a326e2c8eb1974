"""A CPU run in bf16 with its bf16 peak given, as a sweep now gives it (`SIMSLM_PEAK_FLOPS_BF16`), against the
same run measuring the peak itself, as each run of a sweep did before: whole `train` calls in one process,
alternated, after one warm-up call (imports, first kernels).

    .venv/bin/python benchmarks/bench_peak_given.py SEQUENCES [--rounds 3] [--steps 4]

SEQUENCES: a sequences folder built with the stories260K tokenizer (`simslm sequences build`). Each line is one
contender's `train` wall times in seconds, round by round.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from simslm.train.loop import train
from simslm.train.peak import PEAK_FLOPS_BF16_VARIABLE, PEAK_FLOPS_VARIABLE
from simslm.train.plan import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sequences")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    arguments = parser.parse_args()
    os.environ[PEAK_FLOPS_VARIABLE] = "1e11"  # fp32's, given in both: a sweep gave it before too
    times: dict[str, list[float]] = {"given": [], "measured": []}
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"

        def one_run(given: bool) -> float:
            if given:
                os.environ[PEAK_FLOPS_BF16_VARIABLE] = "1e10"
            else:
                os.environ.pop(PEAK_FLOPS_BF16_VARIABLE, None)
            shutil.rmtree(run_dir, ignore_errors=True)
            started = time.perf_counter()
            train(TrainConfig(run_dir=str(run_dir), data=arguments.sequences, base_model="stories260K",
                              budget_tokens=arguments.steps * 4 * 64, batch_size=4, precision="bf16-weights"))
            return time.perf_counter() - started

        one_run(True)  # warm-up, not counted
        for _ in range(arguments.rounds):
            for name in times:
                times[name].append(one_run(name == "given"))
    for name, values in times.items():
        print(f"{name:<9} " + " ".join(f"{value:.2f}" for value in values))


if __name__ == "__main__":
    main()
