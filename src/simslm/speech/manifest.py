"""Speech corpus manifests: one JSONL format read and written by every stage.

One line per utterance:

    {"id": "ts-000012", "audio": "audio/0000/ts-000012.flac", "sample_rate": 16000,
     "duration_sec": 41.2, "transcript": "Once upon a time ...", "speaker": "train/us-m1",
     "words": [{"word": "Once", "start_sec": 0.03, "end_sec": 0.31}, ...],
     "meta": {...}}

`audio` is relative to the manifest's folder (or absolute). `words` is null until the
utterance has word timings (from synthesis or `simslm align`). `meta` is free-form. An
untranscribed utterance (speech-only data, as Libri-Light; `simslm segment` writes them) has
the transcript "" and no words: stages that need text skip it and count it.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from simslm import storage
from simslm.config import Config
from simslm.speech import audio, text

# Word timings may overrun the audio by this much before we call them wrong: aligners
# round to 10 ms frames and durations are stored rounded to the millisecond.
TIMING_TOLERANCE_SEC = 0.02


class TimingKind(str, enum.Enum):
    """The kinds of word-timing problem; stages count skipped utterances by them."""

    WORDS_MISMATCH = "word timings do not match the transcript"
    DISORDERED = "word timings out of order or negative"
    PAST_AUDIO_END = "word timings past the end of the audio"


@dataclass(frozen=True)
class TimingProblem:
    """One word-timing problem: its kind, and a message with the numbers."""

    kind: TimingKind
    message: str

    def __str__(self) -> str:
        return self.message


# Slots: a manifest of millions of utterances (Libri-Light's hours) holds tens of millions of words in memory.
@dataclass(frozen=True, kw_only=True, slots=True)
class Word:
    """One word and where it is spoken."""

    word: str
    start_sec: float
    end_sec: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Utterance:
    """One line of a manifest."""

    id: str
    audio: str
    sample_rate: int
    duration_sec: float
    transcript: str
    speaker: str = "unknown"
    words: tuple[Word, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON object for one manifest line."""
        # Written out, not `dataclasses.asdict`, which deep-copies field by field: 0.2 ms an utterance of 30 words,
        # most of the time of writing a manifest.
        words = None if self.words is None else [{"word": w.word, "start_sec": w.start_sec, "end_sec": w.end_sec}
                                                 for w in self.words]
        return {"id": self.id, "audio": self.audio, "sample_rate": self.sample_rate,
                "duration_sec": self.duration_sec, "transcript": self.transcript, "speaker": self.speaker,
                "words": words, "meta": copy.deepcopy(self.meta)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "Utterance":
        """Parse one manifest line; raise ValueError naming the bad field."""
        missing = [name for name in ("id", "audio", "sample_rate", "duration_sec", "transcript")
                   if name not in record]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        unknown = set(record) - _UTTERANCE_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        words = record.get("words")
        if words is not None:
            if not isinstance(words, list):
                raise ValueError("'words' must be a list or null")
            try:
                words = tuple(Word(word=str(w["word"]), start_sec=float(w["start_sec"]),
                                   end_sec=float(w["end_sec"])) for w in words)
            except (KeyError, TypeError, ValueError):
                raise ValueError("each word needs 'word', 'start_sec' and 'end_sec'") from None
        _expect_type(record, "id", str)
        _expect_type(record, "audio", str)
        _expect_type(record, "transcript", str)
        _expect_type(record, "sample_rate", int)
        _expect_type(record, "duration_sec", (int, float))
        # JSON may escape a lone surrogate ("caf\udce9.flac"): what Python's json.dumps writes of a file name that is
        # not UTF-8, as os.listdir gives it. No file can be opened by it, nor a line written with it.
        odd = next((name for name in ("id", "audio", "transcript", "speaker")
                    if isinstance(record.get(name), str) and storage.undecodable_name(record[name])), None)
        if odd:
            raise ValueError(f"field '{odd}' is not UTF-8 text (a lone surrogate: json's escape of a file name that "
                             f"is not UTF-8; rename the file)")
        # JSON allows NaN and Infinity; no time or rate can be either.
        numbers = [("duration_sec", record["duration_sec"]), ("sample_rate", record["sample_rate"])] + [
            (f"word {index} time", value) for index, w in enumerate(words or ()) for value in (w.start_sec, w.end_sec)]
        bad = next((name for name, value in numbers if not math.isfinite(value)), None)
        if bad:
            raise ValueError(f"{bad} is not a finite number")
        return cls(id=record["id"], audio=record["audio"], sample_rate=record["sample_rate"],
                   duration_sec=float(record["duration_sec"]), transcript=record["transcript"],
                   speaker=str(record.get("speaker", "unknown")), words=words,
                   meta=dict(record.get("meta") or {}))

    def audio_path(self, manifest_dir: str | os.PathLike) -> Path:
        """Absolute path of the audio file, resolving a relative path against the manifest (a URL is left as it is,
        for the reader to say so, not joined to the manifest's folder)."""
        path = Path(self.audio)
        return path if path.is_absolute() or audio.is_url(self.audio) else Path(manifest_dir) / path

    def timing_problems(self) -> list[TimingProblem]:
        """Problems with the word timings of this utterance (empty when fine or absent)."""
        if self.words is None:
            return []
        problems = []
        if not text.same_words(self.transcript, [w.word for w in self.words]):
            expected = len(text.words(self.transcript))
            problems.append(TimingProblem(TimingKind.WORDS_MISMATCH, f"word timings do not match the transcript "
                                          f"({len(self.words)} timed words, transcript has {expected})"))
        previous_start = 0.0
        for index, word in enumerate(self.words):
            if word.start_sec < 0 or word.end_sec < word.start_sec:
                problems.append(TimingProblem(TimingKind.DISORDERED, f"word {index} '{word.word}' has start "
                                              f"{word.start_sec} / end {word.end_sec}"))
            if word.start_sec < previous_start:
                problems.append(TimingProblem(TimingKind.DISORDERED,
                                              f"word {index} '{word.word}' starts before the previous word"))
            previous_start = word.start_sec
        if self.words and self.words[-1].end_sec > self.duration_sec + TIMING_TOLERANCE_SEC:
            problems.append(TimingProblem(TimingKind.PAST_AUDIO_END,
                                          f"word timings end at {self.words[-1].end_sec:.3f} s, "
                                          f"past the end of the audio ({self.duration_sec:.3f} s)"))
        return problems


_UTTERANCE_FIELDS = frozenset(f.name for f in dataclasses.fields(Utterance))


def manifest_folder(path: str | os.PathLike) -> Path:
    """The folder a manifest's relative audio paths start from: its own, found through a link to it (a manifest
    linked into a working folder keeps the paths it was written with)."""
    return Path(os.path.realpath(path)).parent


def _expect_type(record: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> None:
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field '{name}' has type {type(value).__name__}")


@dataclass(frozen=True)
class Problem:
    """One problem found in a manifest, located by file and line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:  # line 0: the file as a whole
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class ManifestError(ValueError):
    """A manifest that cannot be read: `problems` holds every problem found, the message the first few (a FLAC given
    as the manifest made a message of 44 KB, one problem per line of its bytes, printed as one line)."""

    SHOWN = 5

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = [str(problem) for problem in problems[:self.SHOWN]]
        if len(problems) > self.SHOWN:
            files = sorted({problem.file for problem in problems})
            shown.append(f"... and {len(problems) - self.SHOWN} more problem(s) (`simslm manifest validate "
                         f"{' '.join(files)}` lists every one)")
        super().__init__("\n".join(shown))

    def __reduce__(self):  # across processes by its problems, not its message (which `__init__` does not take)
        return type(self), (self.problems,)


def iter_manifest(path: str | os.PathLike) -> Iterator[tuple[int, Utterance | Problem]]:
    """Yield (line number, utterance or the problem that stopped it from parsing)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a manifest (.jsonl)")
    for line_number, (line, problem) in enumerate(storage.text_lines(path), start=1):
        if problem:
            yield line_number, Problem(str(path), line_number, problem)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:  # said as the other readers say it, not as the parser does alone
            yield line_number, Problem(str(path), line_number, f"not valid JSON ({error})")
            continue
        try:
            if not isinstance(record, dict):
                raise ValueError("a manifest line must be a JSON object")
            yield line_number, Utterance.from_json(record)
        except ValueError as error:
            yield line_number, Problem(str(path), line_number, str(error))


def _one_json_document(path: Path, problems: list[Problem], count: int) -> list[Problem]:
    """`problems`, or one in their place when no line parsed because the file is a single JSON document (a report or
    a config given by mistake), rather than a complaint about each of its lines."""
    if count or len(problems) < 2:
        return problems
    try:
        json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, OSError):
        return problems
    return [Problem(str(path), 0, "a single JSON document, not a manifest (JSON Lines: one utterance object per "
                                  "line)")]


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a manifest; raise `ManifestError` listing every line that does not parse."""
    return list(iter_utterances(path))


def iter_utterances(path: str | os.PathLike) -> Iterator[Utterance]:
    """A manifest's utterances one by one, for a stage that keeps only a little of each (ids and paths, say), so
    that a manifest of millions of lines is never whole in memory; after the last, `ManifestError` listing every
    line that does not parse, as `read_manifest` raises it."""
    problems, seen, count = [], {}, 0
    for line, item in iter_manifest(path):
        if isinstance(item, Problem):
            problems.append(item)
        elif item.id in seen:  # stages key utterances by id: a second one would silently replace the first
            problems.append(Problem(str(path), line, f"{item.id}: duplicate id (first on line {seen[item.id]})"))
        else:
            seen[item.id] = line
            count += 1
            yield item
    if problems:
        raise ManifestError(_one_json_document(Path(path), problems, count))


def write_manifest(path: str | os.PathLike, utterances: Iterable[Utterance]) -> None:
    """Write a manifest atomically (temporary file, then rename)."""
    with storage.atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for utterance in utterances:
            handle.write(json.dumps(utterance.to_json(), ensure_ascii=False) + "\n")


def validate_manifest(path: str | os.PathLike, check_audio: bool = True) -> list[Problem]:
    """Every problem in a manifest: syntax, fields, duplicate ids, timings, and the audio files.

    With `check_audio`, each audio file's header is read and its sample rate and duration
    compared with the manifest (decoding is left to the stages that need the samples).
    """
    path = Path(path)
    if not path.exists():
        return [Problem(str(path), 0, "manifest file does not exist")]
    folder = manifest_folder(path)
    problems: list[Problem] = []
    first_line_of_id: dict[str, int] = {}
    count = 0
    for line_number, item in iter_manifest(path):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        count += 1
        where = lambda message: Problem(str(path), line_number, f"{item.id}: {message}")  # noqa: E731
        if item.id in first_line_of_id:
            problems.append(where(f"duplicate id (first on line {first_line_of_id[item.id]})"))
        first_line_of_id.setdefault(item.id, line_number)
        if item.duration_sec <= 0:
            problems.append(where(f"duration_sec is {item.duration_sec}"))
        if item.words is not None and not text.has_words(item.transcript):
            problems.append(where("transcript has no words"))
        problems.extend(where(problem.message) for problem in item.timing_problems())
        if check_audio:
            try:
                sample_rate, duration_sec = audio.audio_info(item.audio_path(folder))
            except audio.AudioError as error:
                problems.append(where(str(error)))
                continue
            if sample_rate != item.sample_rate:
                problems.append(where(f"sample_rate is {item.sample_rate}, the file has {sample_rate}"))
            if abs(duration_sec - item.duration_sec) > TIMING_TOLERANCE_SEC:
                problems.append(where(f"duration_sec is {item.duration_sec}, the file lasts {duration_sec:.3f} s"))
    if count == 0 and not problems:
        problems.append(Problem(str(path), 0, "manifest has no utterances"))
    return _one_json_document(path, problems, count)


@dataclass(frozen=True, kw_only=True)
class ValidateConfig(Config):
    """What `simslm manifest validate` does."""

    manifests: tuple[str, ...]
    """Manifest JSONL files."""
    audio: bool = True
    """Read each audio file's header too (sample rate, duration, readability)."""
