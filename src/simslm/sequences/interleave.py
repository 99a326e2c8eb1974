"""Interleaving, the paper's core mechanism: which words of an utterance are spoken, and its tokens.

An interleaved sample switches between text tokens and speech units at word boundaries,
as in the paper (slamkit's SIMS recipe): spans of words are drawn to be spoken, a speech
span carries the units whose midpoints fall inside its words' time range, and a marker
(`<speech>` / `<text>`) opens every run of one modality. Randomness comes from a
generator seeded by (seed, sample id, epoch), so any sample can be rebuilt alone and each
epoch draws new spans.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from simslm.sequences.vocabulary import Vocabulary
from simslm.speech import text as text_lib
from simslm.speech.manifest import TimingKind, Utterance
from simslm.units.extract import UtteranceUnits


@dataclass(frozen=True)
class InterleaveMethod:
    """A registered way to choose the spoken words: `draw(num_words, rng, **parameters)` -> speech mask.

    `parameters` are the keyword-only arguments of `draw`; `simslm sequences build` fills
    them from its options of the same names, so a method declares its options where it
    registers and nothing else lists them.
    """

    name: str
    draw: Callable[..., np.ndarray]
    parameters: tuple[str, ...]

    def arguments(self, options: Any) -> dict[str, Any]:
        """The method's keyword arguments, read from an object with attributes of the same names."""
        return {name: getattr(options, name) for name in self.parameters}


INTERLEAVERS: dict[str, InterleaveMethod] = {}


def interleaving_method(name: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register a speech-mask function under `name`; its keyword-only arguments are its parameters."""
    def register(draw: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        parameters = tuple(parameter.name for parameter in inspect.signature(draw).parameters.values()
                           if parameter.kind is inspect.Parameter.KEYWORD_ONLY)
        INTERLEAVERS[name] = InterleaveMethod(name, draw, parameters)
        return draw
    return register


@interleaving_method("poisson")
def poisson_spans(num_words: int, rng: np.random.Generator, *, poisson_lambda: float = 10.0,
                  speech_ratio: float = 0.3) -> np.ndarray:
    """Speech spans with Poisson(λ) lengths at random starts until ⌈η·n⌉ words are covered.

    slamkit's SIMS setting is λ = 10, η = 0.3. Spans may overlap and run past the end, so
    short utterances overshoot η (one 10-word span covers 30% of a 33-word utterance).
    """
    mask = np.zeros(num_words, dtype=bool)
    target = math.ceil(speech_ratio * num_words)
    while mask.sum() < target:
        start = int(rng.integers(num_words))
        mask[start:start + max(1, int(rng.poisson(poisson_lambda)))] = True
    return mask


@interleaving_method("span")
def fixed_spans(num_words: int, rng: np.random.Generator, *, span_length: int = 10,
                span_start_probability: float = 0.05) -> np.ndarray:
    """Each word starts a speech span of `span_length` words with probability `span_start_probability`."""
    mask = np.zeros(num_words, dtype=bool)
    for start in np.flatnonzero(rng.random(num_words) < span_start_probability):
        mask[start:start + span_length] = True
    return mask


@interleaving_method("random")
def random_words(num_words: int, rng: np.random.Generator, *, speech_ratio: float = 0.3) -> np.ndarray:
    """Each word is speech with probability η, independently."""
    return rng.random(num_words) < speech_ratio


@interleaving_method("utterance")
def whole_utterance(num_words: int, rng: np.random.Generator, *, speech_ratio: float = 0.5) -> np.ndarray:
    """The whole utterance in one modality: speech with probability η."""
    return np.full(num_words, rng.random() < speech_ratio)


def sample_rng(seed: int, sample_id: str, epoch: int) -> np.random.Generator:
    """The generator for one sample in one epoch: a pure function of (seed, id, epoch)."""
    id_hash = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, id_hash, epoch])


TEXT, SPEECH, MARKER = 0, 1, 2  # what each token is, for counts and display


@dataclass(frozen=True)
class Run:
    """A stretch of one modality in a sample: its words and its tokens (marker included)."""

    modality: int
    words: list[str]
    first_word: int
    end_word: int
    first_token: int
    end_token: int


@dataclass
class Sample:
    """One sample's tokens, what each token is (TEXT/SPEECH/MARKER), and its runs."""

    id: str
    tokens: np.ndarray
    kinds: np.ndarray
    runs: list[Run] = field(default_factory=list)
    num_words: int = 0
    num_speech_words: int = 0


class SkipReason(str, enum.Enum):
    """Why an utterance gives no interleaved sample (the counts in index.json are keyed by these)."""

    NO_TIMINGS = "no word timings"
    EMPTY = "empty utterance"
    NO_UNITS = "no units extracted"
    WORDS_MISMATCH = TimingKind.WORDS_MISMATCH.value
    TIMINGS_DISORDERED = TimingKind.DISORDERED.value
    PAST_AUDIO_END = TimingKind.PAST_AUDIO_END.value
    PAST_UNITS_END = "word timings past the end of the units"
    SPAN_WITHOUT_UNITS = "speech span with no units under its words"


_SKIP_FOR_TIMING = {TimingKind.WORDS_MISMATCH: SkipReason.WORDS_MISMATCH,
                    TimingKind.DISORDERED: SkipReason.TIMINGS_DISORDERED,
                    TimingKind.PAST_AUDIO_END: SkipReason.PAST_AUDIO_END}


class SkipSample(ValueError):
    """A sample that cannot be built, with the reason it is counted under."""

    def __init__(self, reason: SkipReason):
        self.reason = reason
        super().__init__(reason.value)


def check_utterance(utterance: Utterance, units: UtteranceUnits | None) -> None:
    """Raise SkipSample when an utterance's words, timings or units cannot be interleaved."""
    if not utterance.words:
        raise SkipSample(SkipReason.NO_TIMINGS if utterance.words is None else SkipReason.EMPTY)
    problems = utterance.timing_problems()
    if problems:
        # Counted by kind: the messages carry numbers that would split the counts.
        raise SkipSample(_SKIP_FOR_TIMING[problems[0].kind])
    if units is not None:
        audio_end = units.num_frames / units.frame_rate_hz
        if utterance.words[-1].end_sec > audio_end + 0.05:
            raise SkipSample(SkipReason.PAST_UNITS_END)


def build_interleaved(utterance: Utterance, units: UtteranceUnits, vocabulary: Vocabulary, speech_mask: np.ndarray,
                      text_ids: Callable[[list[str]], list[list[int]]]) -> Sample:
    """Tokens of one utterance, switching modality where `speech_mask` changes."""
    words = utterance.words
    starts = units.start_times_sec()
    midpoints = starts + units.durations / (2 * units.frame_rate_hz)
    boundaries = np.flatnonzero(np.diff(speech_mask.astype(np.int8))) + 1
    edges = [0, *boundaries.tolist(), len(words)]
    runs = [(bool(speech_mask[a]), a, b) for a, b in zip(edges[:-1], edges[1:])]
    # A text run is the transcript from its first word to the next run's first word, so it
    # keeps its punctuation ("room." rather than "room").
    spans = text_lib.words_with_spans(utterance.transcript)
    run_text = lambda a, b: utterance.transcript[spans[a][1]:spans[b][1] if b < len(spans) else None].strip()  # noqa: E731
    encoded_text = iter(text_ids([run_text(a, b) for speech, a, b in runs if not speech]))
    pieces, kinds, runs_out = [], [], []
    if vocabulary.bos_id is not None:
        pieces.append([vocabulary.bos_id])
        kinds.append(np.full(1, MARKER, np.uint8))
    for speech, a, b in runs:
        if speech:
            inside = (midpoints >= words[a].start_sec) & (midpoints < words[b - 1].end_sec)
            if not inside.any():
                raise SkipSample(SkipReason.SPAN_WITHOUT_UNITS)
            ids = (units.units[inside] + vocabulary.unit_offset).tolist()
        else:
            ids = next(encoded_text)
        first = sum(len(p) for p in pieces)
        pieces.append([vocabulary.speech_id if speech else vocabulary.text_id])
        pieces.append(ids)
        kinds.append(np.full(1, MARKER, np.uint8))
        kinds.append(np.full(len(ids), SPEECH if speech else TEXT, np.uint8))
        runs_out.append(Run(SPEECH if speech else TEXT, [w.word for w in words[a:b]], a, b, first,
                            first + 1 + len(ids)))
    return Sample(id=utterance.id, tokens=np.fromiter((t for p in pieces for t in p), dtype=np.uint32),
                  kinds=np.concatenate(kinds), runs=runs_out, num_words=len(words),
                  num_speech_words=int(speech_mask.sum()))


def single_modality_sample(sample_id: str, ids: list[int], modality: int, vocabulary: Vocabulary,
                     words: list[str]) -> Sample:
    prefix = ([vocabulary.bos_id] if vocabulary.bos_id is not None else [])
    marker = vocabulary.speech_id if modality == SPEECH else vocabulary.text_id
    tokens = np.array(prefix + [marker] + list(ids), dtype=np.uint32)
    kinds = np.concatenate([np.full(len(prefix) + 1, MARKER, np.uint8), np.full(len(ids), modality, np.uint8)])
    return Sample(id=sample_id, tokens=tokens, kinds=kinds,
                  runs=[Run(modality, words, 0, len(words), len(prefix), len(tokens))],
                  num_words=len(words), num_speech_words=len(words) if modality == SPEECH else 0)
