"""Loading SmolLM2-135M from its GGUF (as `train --base-model X.gguf` does) against loading the folder `simslm model
from-gguf` writes from it, alternated in one process.

    .venv/bin/python benchmarks/bench_gguf_load.py [--repeats 2] [--out /tmp/smollm2-folder]

Each line is one load: the model (`model.load_base_model`) and the tokenizer (`load_base_tokenizer`), timed apart.
The folder is converted first (its time is printed too).
"""

import argparse
import time
from pathlib import Path

from simslm import model
from simslm.sequences.vocabulary import load_base_tokenizer


def timed(function, *arguments) -> float:
    started = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="/tmp/smollm2-folder")
    arguments = parser.parse_args()
    gguf = str(model.smollm2_gguf_path())
    seconds = timed(model.from_gguf, model.FromGgufConfig(gguf=gguf, out=arguments.out))
    print(f"model from-gguf: {seconds:.1f} s -> {arguments.out}")
    for _ in range(arguments.repeats):
        for name, source in (("GGUF", gguf), ("folder", str(Path(arguments.out)))):
            print(f"{name:7s} model {timed(model.load_base_model, source):6.2f} s  "
                  f"tokenizer {timed(load_base_tokenizer, source):5.2f} s")


if __name__ == "__main__":
    main()
