"""sWUGGY's non-words by Wuggy on phonetic forms: how far the n-gram balance moves phone models to chance.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/swuggy_nonwords.py
    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/swuggy_nonwords.py --num-items 5000 --counted-in ""

Makes the items `simslm bench build --kind swuggy` would (no synthesis) and prints: the time; the share of pairs
phone unigram and bigram models of the counting corpus score right with the balanced choice (what bench.json
records) and with Wuggy's first candidate of each word instead; the concentric search's step each chosen non-word
came from; the words' syllable counts; and how many of the corpus's eligible words the CMU dictionary lacks.
"""

from __future__ import annotations

import argparse
import collections
import time

from simslm.eval import nonwords
from simslm.eval.benchbuild import _WORD_LETTERS, _counted_words, phonetic_lexical_items
from simslm.speech.align import cmu_pronunciations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="tinystories-sample")
    parser.add_argument("--counted-in", default="tinystories-sample[:2000]", help="'' for --source itself")
    parser.add_argument("--num-items", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counted_in = args.counted_in or None
    started = time.perf_counter()
    items, balanced = phonetic_lexical_items(args.source, args.num_items, args.seed, counted_in)
    print(f"{len(items)} items in {time.perf_counter() - started:.1f} s")
    print("balanced: " + ", ".join(f"{name} {value:.4f}" for name, value in balanced.items()))

    dictionary = cmu_pronunciations()
    counts, written_lower, frequency = _counted_words(args.source, counted_in)
    tokens: collections.Counter[tuple[str, ...]] = collections.Counter()
    for word, count in frequency.items():
        if word in dictionary:
            tokens[nonwords.stressless(dictionary[word][0])] += count
    ngrams, wuggy = nonwords.PhoneNgrams(tokens), nonwords.dictionary_wuggy()
    first, steps, sizes = [0.0, 0.0], collections.Counter(), collections.Counter()
    for item in items:
        word, made = tuple(item["word_phones"].split()), tuple(item["nonword_phones"].split())
        candidates = wuggy.candidates(word, args.seed)
        for index, (w, n) in enumerate(zip(ngrams.scores(word), ngrams.scores(candidates[0].phones))):
            first[index] += nonwords._right(w, n) / len(items)
        steps[next(c.step for c in candidates if c.phones == made)] += 1
        sizes[len(nonwords.syllables(word, wuggy.onsets))] += 1
    print(f"Wuggy's first candidate: unigram {first[0]:.4f}, bigram {first[1]:.4f}")
    print("steps of the chosen: " + ", ".join(f"{step}: {n}" for step, n in sorted(steps.items())))
    print("syllables: " + ", ".join(f"{size}: {n}" for size, n in sorted(sizes.items())))
    eligible = [word for word in written_lower if _WORD_LETTERS.fullmatch(word)]
    lacking = sorted(word for word in eligible if word not in dictionary)
    print(f"the dictionary lacks {len(lacking)} of the source's {len(eligible)} eligible words: {', '.join(lacking[:8])}")


if __name__ == "__main__":
    main()
