"""Words of a transcript: one tokenization shared by synthesis, alignment and validation.

Every stage that pairs words with times (espeak-ng events, forced alignment, imported
CTM/TextGrid/JSON, the manifest validator) splits text with `words_with_spans` and compares
words with `normalize_word`, so "the transcript matches the timings" means one thing.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# A word is a run of letters/digits, optionally joined by apostrophes or hyphens
# ("Timmy's", "well-known", "three-year-old"). Other punctuation separates words.
_WORD_RE = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")

_SPEAKABLE_REPLACEMENTS = {
    "\u2018": "'", "\u2019": "'", "\u02bc": "'",          # curly apostrophes
    "\u201c": '"', "\u201d": '"', "\u201e": '"',          # curly quotes
    "\u2014": ", ", "\u2013": ", ", "\u2015": ", ",       # dashes are pauses, not words
    "\u2026": "...",
    "\u00a0": " ",
}


def speakable(text: str) -> str:
    """Return `text` as it is handed to a TTS engine and stored as the transcript.

    Unicode dashes and quotes are mapped to ASCII so the engine neither reads them as
    words nor glues the neighbouring words together; whitespace (including newlines
    between paragraphs) collapses to single spaces.
    """
    text = unicodedata.normalize("NFKC", text)
    for old, new in _SPEAKABLE_REPLACEMENTS.items():
        text = text.replace(old, new)
    text = re.sub(r"\s+-+\s+", ", ", text)  # a free-standing hyphen is a dash
    return re.sub(r"\s+", " ", text).strip()


def letter_case(text: str) -> str | None:
    """"upper" for text written in capitals only (LibriSpeech's transcripts), "lower", "mixed", or None for text
    with no letter that has a case (digits, Chinese)."""
    upper, lower = text == text.upper(), text == text.lower()
    return None if upper and lower else "upper" if upper else "lower" if lower else "mixed"


@functools.lru_cache(maxsize=16384)
def words_with_spans(text: str) -> tuple[tuple[str, int, int], ...]:
    """Split `text` into words with their [start, end) character offsets.

    Cached: every stage splits the same transcripts again (validation, interleaving in
    every epoch), and splitting dominated sequence building before the cache.
    """
    return tuple((match.group(), match.start(), match.end()) for match in _WORD_RE.finditer(text))


def has_words(text: str) -> bool:
    """True when `text` contains at least one word."""
    return _WORD_RE.search(text) is not None


def words(text: str) -> list[str]:
    """Split `text` into words (see `words_with_spans`)."""
    return [word for word, _, _ in words_with_spans(text)]


def normalize_word(word: str) -> str:
    """Case- and punctuation-insensitive form of a word, for comparing transcripts."""
    word = unicodedata.normalize("NFKC", word).replace("\u2019", "'").lower()
    return "".join(_WORD_RE.findall(word))


def same_words(transcript: str, timed_words: list[str]) -> bool:
    """True when `timed_words` are exactly the words of `transcript`, up to normalisation."""
    expected = [normalize_word(word) for word in words(transcript)]
    return expected == [normalize_word(word) for word in timed_words]
