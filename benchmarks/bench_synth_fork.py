"""Synthesis with each line in a fork of an untouched espeak-ng (now) against in the worker (before).

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_synth_fork.py [--stories 60] [--repeats 3]

Each contender synthesises the same first `--stories` TinyStories lines with one worker, in its own spawned
process, alternating. "before" has no keeper (`espeak.keeper`), so `espeak.speak` synthesises in the process,
as it did before 2026-12-03. Reports the median wall time of each, their ratio, and how many
files differ between two runs of the same contender (the reproducibility the fork buys).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import soundfile

from simslm.speech import espeak
from simslm.speech.manifest import read_manifest
from simslm.speech.synth import SynthConfig, synthesize_corpus


def _synthesise(out: str, stories: int, in_process: bool) -> float:
    if in_process:  # with no keeper, `speak` synthesises in the process, as it always did before
        espeak.keeper = lambda: None
    started = time.perf_counter()
    synthesize_corpus(SynthConfig(out=out, limit=stories, num_workers=1))
    return time.perf_counter() - started


def _audio(out: Path) -> dict[str, bytes]:
    return {u.id: soundfile.read(u.audio_path(out), dtype="int16")[0].tobytes()
            for u in read_manifest(out / "manifest.jsonl")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    times: dict[str, list[float]] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory() as scratch, context.Pool(1, maxtasksperchild=1) as pool:
        audio: dict[str, list[dict[str, bytes]]] = {name: [] for name in times}
        for repeat in range(args.repeats):
            for name in times:
                out = Path(scratch) / f"{name}{repeat}"
                times[name].append(pool.apply(_synthesise, (str(out), args.stories, name == "before")))
                audio[name].append(_audio(out))
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
        # Line order within one worker is fixed, so "before" differs run to run only across workers or
        # resumes; comparing to "now" shows what each line's history changed.
        differing = sum(audio["before"][0][key] != audio["now"][0][key] for key in audio["now"][0])
        stable = all(run == audio["now"][0] for run in audio["now"])
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"\n| {args.stories} stories, 1 worker | median of {args.repeats}, alternated (s) | runs (s) |\n"
          f"| --- | --- | --- |\n"
          f"| before: in the worker | {before:.2f} | {', '.join(f'{t:.2f}' for t in times['before'])} |\n"
          f"| now: each line in a fork | {now:.2f} | {', '.join(f'{t:.2f}' for t in times['now'])} |\n"
          f"\nnow / before: {now / before:.2f}x the time; files differing from before's: {differing} of "
          f"{len(audio['now'][0])}; now identical across its runs: {stable}")


if __name__ == "__main__":
    main()
