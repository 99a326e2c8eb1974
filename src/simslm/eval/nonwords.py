"""Non-words for an sWUGGY-style set, made as ZeroSpeech 2021 made sWUGGY's: Wuggy on phonetic forms, one of each
word's candidates chosen so that phone n-grams do not tell word from non-word, both spoken from their phonemes.

- **Phonetic forms.** The CMU Pronouncing Dictionary that pocketsphinx ships (ARPAbet, stress digits kept for
  speaking), syllabified by the maximal onset principle, an onset being legal where it begins at least
  `_ONSET_WORDS` dictionary words (so "S T R" is one and "T L" none); each syllable split into
  onset, nucleus and coda, Wuggy's sub-syllabic segments (its `copy_onc` plugins read "o:n:c-o:n:c").
- **Wuggy** (Keuleers & Brysbaert 2010; the `wuggy` package, 1.1.2, is the definition read): a bigram chain of
  segments by position and number of syllables over the lexicon's types, each transition counted once per entry
  (`BigramChain.load` sets every frequency to 1); a candidate is a path through it with every segment as long as
  the word's (`segment_length` filter), two thirds of its segments the word's (`overlap_ratio` 2/3, Wuggy's
  default) and no pronunciation of the lexicon (`lexicality` N). The search is Wuggy's concentric one: first the
  paths whose transitions are counted within +-2 of the word's at each position, then +-4, +-8, ..., in random
  order within a step; Wuggy bounds each word's search by wall-clock time (10 s), which makes its output depend on
  the machine, so here each step's search is bounded by the paths it tries (`_STEP_NODES`), seeded per word.
- **Balance.** ZeroSpeech chose among a word's candidates so that a phone unigram or bigram model scores words
  above non-words no more often than chance. Here the n-gram models are counted over the word tokens of the
  counting corpus (with word boundaries), and each word in turn takes the candidate that keeps the share of its
  frequency band's pairs the models score right nearest one half (the first of Wuggy's order on ties).
- **Speech.** Word and non-word are spoken from phonemes (espeak-ng mnemonics inside [[ ]], the word's stress on
  the same syllables of both), as ZeroSpeech synthesised the phonetic forms of both: a non-word read by a
  synthesiser's letter-to-sound rules and a word by its dictionary differ in more than the one being English.
"""

from __future__ import annotations

import collections
import functools
import math
import random
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})
# ARPAbet -> espeak-ng's English phoneme mnemonics (the inverse of `align`'s map); a vowel as (stressed,
# unstressed) where espeak-ng names the reduced vowel apart (AH: "V" in "but", "@" in "about").
_ESPEAK_CONSONANTS = {"B": "b", "CH": "tS", "D": "d", "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ", "K": "k",
                      "L": "l", "M": "m", "N": "n", "NG": "N", "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t",
                      "TH": "T", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "Z"}
_ESPEAK_VOWELS = {"AA": ("A:", "A:"), "AE": ("a", "a"), "AH": ("V", "@"), "AO": ("O:", "O:"), "AW": ("aU", "aU"),
                  "AY": ("aI", "aI"), "EH": ("E", "E"), "ER": ("3:", "3"), "EY": ("eI", "eI"), "IH": ("I", "I"),
                  "IY": ("i:", "i"), "OW": ("oU", "oU"), "OY": ("OI", "OI"), "UH": ("U", "U"), "UW": ("u:", "u:")}
_ONSET_WORDS = 20
_OVERLAP = 2 / 3
_CANDIDATES = 10  # per word, as ZeroSpeech's generation kept (`--num-candidates 10`)
_STEP_NODES = 20_000  # paths tried in one step of the concentric search, at most
_MAX_STEP = 20  # +-2**20: every transition of the lexicon is within it
_START, _END = ("^",), ("$",)

Segment = tuple[str, ...]


def stressless(phones: Iterable[str]) -> tuple[str, ...]:
    return tuple(phone.rstrip("012") for phone in phones)


def legal_onsets(pronunciations: Iterable[tuple[str, ...]]) -> frozenset[Segment]:
    """The consonant clusters that begin at least `_ONSET_WORDS` of these (stressless) pronunciations."""
    counts: collections.Counter[Segment] = collections.Counter()
    for phones in pronunciations:
        first_vowel = next((i for i, phone in enumerate(phones) if phone in VOWELS), len(phones))
        counts[phones[:first_vowel]] += 1
    return frozenset(onset for onset, count in counts.items() if count >= _ONSET_WORDS)


def syllables(phones: tuple[str, ...], onsets: frozenset[Segment]) -> list[tuple[Segment, Segment, Segment]]:
    """(onset, nucleus, coda) of each syllable of stressless `phones` (maximal onset: of the consonants between
    two vowels, the longest legal cluster goes to the second); [] without a vowel."""
    nuclei = [i for i, phone in enumerate(phones) if phone in VOWELS]
    if not nuclei:
        return []
    starts = [0]
    for left, right in zip(nuclei, nuclei[1:]):
        split = left + 1
        while split < right and phones[split:right] not in onsets:
            split += 1
        starts.append(split)
    ends = starts[1:] + [len(phones)]
    return [(phones[start:nucleus], phones[nucleus:nucleus + 1], phones[nucleus + 1:end])
            for start, nucleus, end in zip(starts, nuclei, ends)]


@dataclass(frozen=True)
class Candidate:
    phones: tuple[str, ...]
    step: int  # the concentric search's step that found it (transitions within +-2**step of the word's)


class PhoneticWuggy:
    """Wuggy's bigram chain over a lexicon of stressless pronunciations, and its concentric search for non-words."""

    def __init__(self, lexicon: Iterable[tuple[str, ...]]) -> None:
        self.words = frozenset(lexicon)
        self.onsets = legal_onsets(self.words)
        # (syllables, position, segment) -> {next segment: entries with that transition}
        self.chain: dict[tuple[int, int, Segment], collections.Counter[Segment]] = collections.defaultdict(
            collections.Counter)
        for phones in self.words:
            sequence = self.sequence(phones)
            if sequence is None:
                continue
            size = (len(sequence) - 2) // 3
            for position, (segment, following) in enumerate(zip(sequence, sequence[1:])):
                self.chain[size, position, segment][following] += 1
        self.largest = max((max(nexts.values()) for nexts in self.chain.values()), default=0)

    def transitions(self, size: int, position: int, segment: Segment, following: Segment) -> int:
        """The lexicon's entries of `size` syllables with `segment` then `following` from `position` on."""
        return self.chain.get((size, position, segment), {}).get(following, 0)

    def sequence(self, phones: tuple[str, ...]) -> tuple[Segment, ...] | None:
        """^, each syllable's onset, nucleus and coda, $ (None without a vowel)."""
        parts = syllables(phones, self.onsets)
        return (_START, *(segment for syllable in parts for segment in syllable), _END) if parts else None

    def candidates(self, phones: tuple[str, ...], seed: int, count: int = _CANDIDATES) -> list[Candidate]:
        """Up to `count` non-words for the word `phones` in the order Wuggy's concentric search finds them."""
        reference = self.sequence(phones)
        if reference is None:
            return []
        size = (len(reference) - 2) // 3
        changes = round(len(reference[1:-1]) * (1 - _OVERLAP))
        counts = [self.transitions(size, position, segment, following)
                  for position, (segment, following) in enumerate(zip(reference, reference[1:]))]
        rng = random.Random(zlib.crc32(" ".join(phones).encode()) ^ seed)
        found: list[Candidate] = []
        seen: set[tuple[str, ...]] = set()
        for step in range(1, _MAX_STEP + 1):
            for path in self._paths(reference, counts, size, changes, 2 ** step, rng):
                flat = tuple(phone for segment in path[1:-1] for phone in segment)
                if flat not in seen and flat not in self.words:
                    seen.add(flat)
                    found.append(Candidate(flat, step))
                    if len(found) == count:
                        return found
            if 2 ** step >= self.largest:
                break  # every transition is within this step's bounds: a further step finds nothing new
        return found

    def _paths(self, reference: tuple[Segment, ...], counts: list[int], size: int, changes: int, bound: int,
               rng: random.Random) -> Iterator[tuple[Segment, ...]]:
        """Paths through the chain as long as `reference`, segment by segment as long as its, with exactly
        `changes` segments other than its and every transition counted within +-`bound` of its, in random order,
        at most `_STEP_NODES` tried."""
        last = len(reference) - 1
        budget = [_STEP_NODES]

        def extend(path: tuple[Segment, ...], changed: int) -> Iterator[tuple[Segment, ...]]:
            position = len(path) - 1
            if budget[0] <= 0:
                return
            budget[0] -= 1
            nexts = self.chain.get((size, position, path[-1]), {})
            if position + 1 == last:
                if changed == changes and _END in nexts and abs(nexts[_END] - counts[position]) <= bound:
                    yield path + (_END,)
                return
            target = reference[position + 1]
            left = last - 1 - position  # segments still to choose, this one included
            options = [segment for segment, number in sorted(nexts.items())  # sorted: not in the hash's order
                       if len(segment) == len(target) and abs(number - counts[position]) <= bound
                       and (segment == target and changes - changed < left
                            or segment != target and changed < changes)]
            rng.shuffle(options)
            for segment in options:
                yield from extend(path + (segment,), changed + (segment != target))

        yield from extend((_START,), 0)


class PhoneNgrams:
    """Phone unigram and bigram models of a corpus's word tokens (each word's phones between boundaries '_'), as
    ZeroSpeech scored words and candidates: the log of the product of the n-grams' probabilities."""

    def __init__(self, tokens: Mapping[tuple[str, ...], int]) -> None:
        unigrams: collections.Counter[str] = collections.Counter()
        bigrams: collections.Counter[tuple[str, str]] = collections.Counter()
        for phones, count in tokens.items():
            bounded = ("_", *phones, "_")
            for phone in bounded:
                unigrams[phone] += count
            for pair in zip(bounded, bounded[1:]):
                bigrams[pair] += count
        total = sum(unigrams.values())
        self.unigram = {phone: number / total for phone, number in unigrams.items()}
        self.bigram = {pair: number / unigrams[pair[0]] for pair, number in bigrams.items()}

    def scores(self, phones: tuple[str, ...]) -> tuple[float, float]:
        bounded = ("_", *phones, "_")
        return (_log_product(self.unigram.get(phone, 0.0) for phone in bounded),
                _log_product(self.bigram.get(pair, 0.0) for pair in zip(bounded, bounded[1:])))


def _log_product(probabilities: Iterable[float]) -> float:
    return sum(math.log(p) if p > 0 else -math.inf for p in probabilities)


def _right(word: float, nonword: float) -> float:
    """An n-gram model's score of a pair: 1 when it prefers the word, 0.5 on a tie (ZeroSpeech's), else 0."""
    return 1.0 if word > nonword else 0.5 if word == nonword else 0.0


class Balancer:
    """Each word's non-word chosen among its candidates so that, within its group, the share of pairs the phone
    unigram and bigram models score right stays nearest one half."""

    def __init__(self, ngrams: PhoneNgrams) -> None:
        self.ngrams = ngrams
        self.totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])

    def choose(self, group: str, word: tuple[str, ...], candidates: list[tuple[str, ...]]) -> tuple[str, ...]:
        right_uni, right_bi, pairs = self.totals[group]
        word_scores = self.ngrams.scores(word)

        def after(candidate: tuple[str, ...]) -> tuple[float, float]:  # (unigram, bigram): 1 right, 0 wrong
            uni, bi = (_right(w, n) for w, n in zip(word_scores, self.ngrams.scores(candidate)))
            return uni, bi

        def distance(candidate: tuple[str, ...]) -> float:
            uni, bi = after(candidate)
            return abs((right_uni + uni) / (pairs + 1) - 0.5) + abs((right_bi + bi) / (pairs + 1) - 0.5)

        chosen = min(candidates, key=distance)  # min keeps the first of equals: Wuggy's order
        uni, bi = after(chosen)
        self.totals[group] = [right_uni + uni, right_bi + bi, pairs + 1]
        return chosen

    def accuracies(self) -> dict[str, float]:
        """The share of all pairs that the unigram and the bigram model score right (0.5: chance)."""
        uni, bi, pairs = (sum(values) for values in zip(*self.totals.values())) if self.totals else (0, 0, 0)
        return {"unigram": uni / pairs, "bigram": bi / pairs} if pairs else {}


def espeak_mnemonics(phones: tuple[str, ...], stresses: tuple[int, ...]) -> str:
    """espeak-ng phoneme input for stressless ARPAbet `phones` with one stress digit per vowel (1 primary, 2
    secondary, 0 none): "'" or "," before a stressed vowel, as espeak-ng writes its own."""
    out, vowel = [], 0
    for phone in phones:
        if phone in VOWELS:
            stress = stresses[vowel] if vowel < len(stresses) else 0
            out.append({1: "'", 2: ","}.get(stress, "") + _ESPEAK_VOWELS[phone][0 if stress else 1])
            vowel += 1
        else:
            out.append(_ESPEAK_CONSONANTS[phone])
    return "".join(out)


def stress_digits(phones: Iterable[str]) -> tuple[int, ...]:
    """The stress digit of each vowel of an ARPAbet pronunciation (0 where it has none)."""
    return tuple(int(phone[-1]) if phone[-1].isdigit() else 0 for phone in phones if phone.rstrip("012") in VOWELS)


@functools.lru_cache(maxsize=1)
def dictionary_wuggy() -> PhoneticWuggy:
    """Wuggy's chain over every pronunciation of the CMU Pronouncing Dictionary pocketsphinx ships."""
    from simslm.speech.align import cmu_pronunciations

    return PhoneticWuggy(stressless(variant) for variants in cmu_pronunciations().values() for variant in variants)
