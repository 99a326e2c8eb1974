"""Interleaving, the paper's core mechanism: which words of an utterance are spoken, and its tokens.

An interleaved sample switches between text and speech units at word boundaries, as the
paper's code (slamkit's `InterleavingTokeniser`, SIMS setting) does it: spans of words are
drawn to be spoken (`poisson_spans`), a spoken span carries the units whose end times fall
inside its words' time range, a text run is the transcript's own text (its spaces and
punctuation kept), and a marker (`<speech>` / `<text>`) opens the sample and every switch.
The sample is written out as one string and tokenised whole, with the special tokens the
tokenizer adds itself. Randomness comes from a generator seeded by (seed, sample id,
epoch), so any sample can be rebuilt alone and each epoch draws new spans (or, with
`sequences build --span-draws once`, every epoch takes the first epoch's, as slamkit's `repetitions` do).
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from simslm.sequences.vocabulary import SPEECH_MARKER, TEXT_MARKER, Vocabulary
from simslm.speech import text as text_lib
from simslm.speech.manifest import TimingKind, Utterance
from simslm.units.folder import UtteranceUnits


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
        """The method's keyword arguments, read from an object with attributes of the same names; one left unset
        (None) takes the method's own default."""
        return {name: getattr(options, name) for name in self.parameters if getattr(options, name) is not None}


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
    """slamkit's `select_spans_poisson` (SIMS: λ = 10, η = 0.3): spoken spans of Poisson(λ) words.

    A start is drawn uniformly from the eligible words and a length from Poisson(λ) (cut at
    the end of the utterance). A draw that overlaps a chosen span is rejected; a chosen span
    makes its words and the word right after it ineligible as starts, so no span starts
    where another ends. Draws go on until ⌈η·n⌉ words are spoken or no start is left. A
    span may still end right before another one, and the two then read as one run.
    """
    mask = np.zeros(num_words, dtype=bool)
    eligible = np.ones(num_words, dtype=bool)
    target, selected = math.ceil(speech_ratio * num_words), 0
    while selected < target and eligible.any():
        start = int(rng.choice(np.flatnonzero(eligible)))
        end = min(start + int(rng.poisson(poisson_lambda)), num_words)
        if mask[start:end].any():
            continue  # overlaps a chosen span: drawn again
        mask[start:end] = True
        selected += end - start
        eligible[start:end] = False
        if end < num_words:
            eligible[end] = False  # a length-0 draw makes its own start ineligible this way too
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
def random_words(num_words: int, rng: np.random.Generator, *, speech_ratio: float = 0.5) -> np.ndarray:
    """Each word is speech with probability η, independently: 0.5 by default, as slamkit's `random`
    (`InterleavingTokeniser._assign_interleaved_modality`: text when `torch.rand(1) < 0.5`, whatever η is)."""
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
    OTHER_LENGTH = "units of another length than the recording (another recording's units under its id?)"
    SPAN_WITHOUT_UNITS = "speech span with no units under its words"


_SKIP_FOR_TIMING = {TimingKind.WORDS_MISMATCH: SkipReason.WORDS_MISMATCH,
                    TimingKind.DISORDERED: SkipReason.TIMINGS_DISORDERED,
                    TimingKind.PAST_AUDIO_END: SkipReason.PAST_AUDIO_END}


class SkipSample(ValueError):
    """A sample that cannot be built, with the reason it is counted under."""

    def __init__(self, reason: SkipReason):
        self.reason = reason
        super().__init__(reason.value)

    def __reduce__(self):  # by its reason: unpickled from its message, `reason.value` failed on a str
        return type(self), (self.reason,)


# How far an utterance's units may fall short of (or run past) its recording's duration: logmel's last partial frame
# (up to 0.055 s over the demo's 800 recordings), a HuBERT's convolutions (under two frames at 50 Hz).
UNITS_LENGTH_SLACK_SEC = 0.25


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
        if abs(audio_end - utterance.duration_sec) > max(UNITS_LENGTH_SLACK_SEC, 0.02 * utterance.duration_sec):
            # Units extracted from another manifest whose ids name other recordings: their words would be laid
            # over another recording's units, a sample no check below sees when the words end early enough.
            raise SkipSample(SkipReason.OTHER_LENGTH)
        if utterance.words[-1].end_sec > audio_end + 0.05:
            raise SkipSample(SkipReason.PAST_UNITS_END)


# Which units a spoken span of words carries: `end` is slamkit's rule (`_create_interleaved_text`:
# bisect over the units' cumulative end times), `midpoint` keeps a unit with the word it is
# mostly inside (simslm's first rule; 132 of 253 spans differed by one unit, docs/LOG.md).
UnitRule = Literal["end", "midpoint"]


def span_units(units: UtteranceUnits, start_sec: float, end_sec: float, rule: str = "end") -> np.ndarray:
    """The units of a spoken span from `start_sec` to `end_sec`.

    `end`: the units whose end time lies in [start, end] (slamkit: `bisect_left` of the start
    and `bisect_right` of the end over `cumsum(durations) * unit duration`); `midpoint`: the
    units whose midpoint lies in [start, end).
    """
    ends = np.cumsum(units.durations) * (1.0 / units.frame_rate_hz)
    if rule == "end":
        first, last = np.searchsorted(ends, start_sec, "left"), np.searchsorted(ends, end_sec, "right")
        return units.units[first:last]
    midpoints = ends - units.durations * (0.5 / units.frame_rate_hz)
    return units.units[(midpoints >= start_sec) & (midpoints < end_sec)]


def word_boundaries(transcript: str) -> list[int]:
    """Where each word's text starts in the transcript, and where the last one ends.

    A word owns the whitespace before it and the punctuation after it, as the Whisper word
    timestamps that slamkit joins with '' do (" girl", " room."), so a run of words cut out
    of the transcript is the transcript's own text: under a byte-level BPE " girl" is one
    token, "girl" another, and a TWIST model must see text as it saw it in pretraining.
    """
    spans = text_lib.words_with_spans(transcript)
    bounds = [0]
    for (_, _, previous_end), (_, start, _) in zip(spans, spans[1:]):
        gap = transcript[previous_end:start]
        bounds.append(previous_end + next((i for i, char in enumerate(gap) if char.isspace()), len(gap)))
    bounds.append(len(transcript.rstrip()))
    return bounds


def modality_runs(speech_mask: np.ndarray) -> list[tuple[bool, int, int]]:
    """(spoken, first word, end word) of each run of one modality."""
    boundaries = np.flatnonzero(np.diff(speech_mask.astype(np.int8))) + 1
    edges = [0, *boundaries.tolist(), len(speech_mask)]
    return [(bool(speech_mask[a]), a, b) for a, b in zip(edges[:-1], edges[1:])]


def interleaved_string(utterance: Utterance, units: UtteranceUnits, vocabulary: Vocabulary, speech_mask: np.ndarray,
                       unit_rule: str = "end") -> str:
    """One interleaved sample written out as slamkit writes it: a marker opens the sample and every switch."""
    words, bounds = utterance.words, word_boundaries(utterance.transcript)
    parts = []
    for speech, a, b in modality_runs(speech_mask):
        parts.append(SPEECH_MARKER if speech else TEXT_MARKER)
        if speech:
            chosen = span_units(units, words[a].start_sec, words[b - 1].end_sec, unit_rule)
            if not len(chosen):
                # slamkit would write an empty span (a marker right after a marker); simslm skips
                # the utterance instead (docs/LOG.md).
                raise SkipSample(SkipReason.SPAN_WITHOUT_UNITS)
            parts.append(vocabulary.unit_string(chosen))
        else:
            parts.append(utterance.transcript[bounds[a]:bounds[b]])
    return "".join(parts)


def token_kinds(tokens: np.ndarray, vocabulary: Vocabulary) -> np.ndarray:
    """TEXT, SPEECH or MARKER (modality markers and the tokenizer's own special tokens) for each token."""
    specials = [vocabulary.speech_id, vocabulary.text_id, vocabulary.pad_id, *vocabulary.tokenizer.all_special_ids]
    kinds = np.where(vocabulary.is_unit(tokens), SPEECH, TEXT).astype(np.uint8)
    kinds[np.isin(tokens, specials)] = MARKER
    return kinds


def interleaved_sample(sample_id: str, ids: list[int], utterance: Utterance, speech_mask: np.ndarray,
                       vocabulary: Vocabulary) -> Sample:
    """A Sample from the ids of an interleaved string, with its runs located by their markers."""
    tokens = np.asarray(ids, dtype=np.uint32)
    kinds = token_kinds(tokens, vocabulary)
    markers = np.flatnonzero((tokens == vocabulary.speech_id) | (tokens == vocabulary.text_id)).tolist()
    runs = modality_runs(speech_mask)
    content_end = int(np.flatnonzero(kinds != MARKER)[-1]) + 1 if (kinds != MARKER).any() else len(tokens)
    words = utterance.words
    runs_out = [Run(SPEECH if speech else TEXT, [w.word for w in words[a:b]], a, b, first,
                    markers[number + 1] if number + 1 < len(markers) else content_end)
                for number, ((speech, a, b), first) in enumerate(zip(runs, markers))]
    return Sample(id=sample_id, tokens=tokens, kinds=kinds, runs=runs_out, num_words=len(words),
                  num_speech_words=int(speech_mask.sum()))


def build_interleaved(utterance: Utterance, units: UtteranceUnits, vocabulary: Vocabulary, speech_mask: np.ndarray,
                      unit_rule: str = "end") -> Sample:
    """The tokens of one utterance, switching modality where `speech_mask` changes (slamkit's SIMS recipe)."""
    text = interleaved_string(utterance, units, vocabulary, speech_mask, unit_rule)
    return interleaved_sample(utterance.id, vocabulary.encode_samples([text])[0], utterance, speech_mask, vocabulary)


def single_modality_sample(sample_id: str, ids: list[int], modality: int, vocabulary: Vocabulary,
                           words: list[str]) -> Sample:
    """A speech-only or text-only sample from the ids of its string: no marker, the tokenizer's own specials
    (slamkit's unit tokeniser writes units alone; text-only data is the text as it is)."""
    tokens = np.asarray(ids, dtype=np.uint32)
    kinds = token_kinds(tokens, vocabulary)
    content = np.flatnonzero(kinds == modality)
    first, end = (int(content[0]), int(content[-1]) + 1) if len(content) else (0, 0)
    return Sample(id=sample_id, tokens=tokens, kinds=kinds, runs=[Run(modality, words, 0, len(words), first, end)],
                  num_words=len(words), num_speech_words=len(words) if modality == SPEECH else 0)
