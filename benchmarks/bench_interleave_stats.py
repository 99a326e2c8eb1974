"""Span statistics of the poisson interleaving on the default corpus: slamkit's rule against merged spans.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_interleave_stats.py --stories 800

Word counts come from the demo's training stories (the first `--stories` TinyStories
lines, spoken as a whole); each story draws its speech words with the seed of sample
(0, id, 0), λ = 10, η = 0.3. `reference` is `sequences.interleave.poisson_spans` (slamkit's
`select_spans_poisson`: overlapping draws rejected, no span starting where one ends);
`merged` is the rule simslm used before (draws merged into the mask until ⌈η·n⌉ words).
Reported: the share of words spoken, the mean length of a spoken run, and the modality
switches per utterance.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from simslm.sequences.interleave import poisson_spans, sample_rng
from simslm.speech import text as text_lib
from simslm.speech.corpus import read_corpus


def merged_spans(num_words: int, rng: np.random.Generator, poisson_lambda: float = 10.0,
                 speech_ratio: float = 0.3) -> np.ndarray:
    mask = np.zeros(num_words, dtype=bool)
    while mask.sum() < math.ceil(speech_ratio * num_words):
        start = int(rng.integers(num_words))
        mask[start:start + max(1, int(rng.poisson(poisson_lambda)))] = True
    return mask


def statistics(masks: list[np.ndarray]) -> tuple[float, float, float]:
    runs, switches = [], []
    for mask in masks:
        edges = np.diff(np.concatenate(([0], mask.astype(int), [0])))
        runs.extend(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
        switches.append(int(np.count_nonzero(np.diff(mask.astype(int)))))
    share = sum(int(m.sum()) for m in masks) / sum(len(m) for m in masks)
    return share, float(np.mean(runs)), float(np.mean(switches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=800)
    args = parser.parse_args()
    stories = [(index, len(text_lib.words(text_lib.speakable(value))))
               for index, value, _ in read_corpus(f"tinystories-sample[:{args.stories}]") if value]
    masks = {"reference (slamkit)": [], "merged (simslm before)": []}
    for index, num_words in stories:
        sample_id = f"tinystories_2316-{index:06d}"
        masks["reference (slamkit)"].append(poisson_spans(num_words, sample_rng(0, sample_id, 0)))
        masks["merged (simslm before)"].append(merged_spans(num_words, sample_rng(0, sample_id, 0)))
    print(f"{len(stories)} stories, {np.mean([n for _, n in stories]):.0f} words on average\n")
    print("| rule | words spoken | mean spoken run (words) | switches per utterance |\n| --- | --- | --- | --- |")
    for name, drawn in masks.items():
        share, run, switches = statistics(drawn)
        print(f"| {name} | {100 * share:.1f}% | {run:.2f} | {switches:.2f} |")


if __name__ == "__main__":
    main()
