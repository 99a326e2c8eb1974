"""Word timings for a manifest whose audio has only transcripts.

Sources (registry `ALIGNERS`): import from CTM, Praat TextGrid (Montreal Forced Aligner
output), word-level JSON, slamkit's alignment JSON or CorentinJ's LibriSpeech alignments
(`.alignment.txt`, a chapter a file); or force-align offline with pocketsphinx and its bundled US
English model. Words outside pocketsphinx's dictionary get a pronunciation from
espeak-ng's g2p, mapped to ARPAbet. Timed words must be the transcript's words
(`simslm.text`) and lie inside the audio; utterances that fail are skipped and counted.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import functools
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from simslm import jobs, machine, storage
from simslm.config import Config, ConfigError, check_not_input, check_output_file, check_positive, registry_choices
from simslm.speech import audio
from simslm.speech import text as text_lib
from simslm.speech.manifest import Utterance, Word, iter_utterances, manifest_folder

TimedWords = list[tuple[str, float, float]]


class AlignmentError(ValueError):
    """Word timings could not be produced for an utterance; the message says why."""


# --- importers -----------------------------------------------------------------------

def _ctm_word(path: str | os.PathLike, line_number: int, line: str) -> tuple[str, tuple[str, float, float]] | None:
    """(utterance, (word, start, end)) of one CTM line; None for a blank or comment line."""
    fields = line.split()
    if not fields or line.startswith(";;"):
        return None
    if len(fields) < 5:
        raise AlignmentError(f"{path}:{line_number}: a CTM line needs 5 fields, found {len(fields)}")
    try:
        start, duration = float(fields[2]), float(fields[3])
    except ValueError:
        raise AlignmentError(f"{path}:{line_number}: start/duration are not numbers") from None
    return fields[0], (fields[4], start, round(start + duration, 6))


def read_ctm(path: str | os.PathLike) -> dict[str, TimedWords]:
    """CTM lines `utterance channel start duration word [confidence]`, grouped by utterance."""
    grouped: dict[str, TimedWords] = collections.defaultdict(list)
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if parsed := _ctm_word(path, line_number, line):
                grouped[parsed[0]].append(parsed[1])
    return {key: sorted(words, key=lambda w: w[1]) for key, words in grouped.items()}


class _CtmIndex:
    """Where each utterance's lines lie in a CTM file, so that `align --method ctm` reads one utterance's words at a
    time: a CTM of Libri-Light's 21M segments grouped in memory (`read_ctm`) would hold some 140 GB of words, its
    index a few GB of byte ranges. Every line is checked while indexing, so a malformed one is named as before."""

    def __init__(self, path: str):
        self.path = path
        self.ranges: dict[str, list[list[int]]] = {}  # utterance -> [[start, end], ...] byte ranges of its lines
        with open(path, "rb") as handle:
            offset = 0
            for line_number, raw in enumerate(handle, start=1):
                text = (raw.removeprefix(codecs.BOM_UTF8) if line_number == 1 else raw).decode("utf-8", "replace")
                if parsed := _ctm_word(path, line_number, text):
                    spans = self.ranges.setdefault(parsed[0], [])
                    if spans and spans[-1][1] == offset:  # the utterance's lines go on: one range grows
                        spans[-1][1] = offset + len(raw)
                    else:
                        spans.append([offset, offset + len(raw)])
                offset += len(raw)

    def words(self, utterance_id: str) -> TimedWords | None:
        """The utterance's timed words in time order; None when the CTM has no line for it."""
        spans = self.ranges.get(utterance_id)
        if spans is None:
            return None
        words = []
        with open(self.path, "rb") as handle:
            for start, end in spans:
                handle.seek(start)
                for raw in handle.read(end - start).splitlines():
                    parsed = _ctm_word(self.path, 0, raw.removeprefix(codecs.BOM_UTF8).decode("utf-8", "replace"))
                    if parsed is not None:
                        words.append(parsed[1])
        return sorted(words, key=lambda w: w[1])


# Labels that aligners write for silence and noise rather than for a word.
_NON_WORDS = {"", "sil", "sp", "spn", "<eps>", "<sil>", "<s>", "</s>"}


def read_textgrid(path: str | os.PathLike, tier: str = "words") -> TimedWords:
    """The word tier of a Praat TextGrid (long or short format), silences dropped."""
    from praatio import textgrid

    try:
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    except Exception as error:  # praatio raises several types for malformed files
        raise AlignmentError(f"{path}: not a readable TextGrid ({error})") from None
    names = grid.tierNames
    chosen = tier if tier in names else next((n for n in names if "word" in n.lower()), None)
    if chosen is None:
        raise AlignmentError(f"{path}: no '{tier}' tier (tiers: {', '.join(names)})")
    return [(label, float(start), float(end)) for start, end, label in grid.getTier(chosen).entries
            if label.strip().lower() not in _NON_WORDS]


def read_word_json(path: str | os.PathLike) -> TimedWords:
    """Word-level JSON: a list (or {"words": [...]}) of {word|text, start|start_sec, end|end_sec}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as error:
        raise AlignmentError(f"{path}: not readable JSON ({error})") from None
    items = data.get("words") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise AlignmentError(f"{path}: expected a list of words or an object with 'words'")
    timed = []
    for index, item in enumerate(items):
        try:
            word = item.get("word", item.get("text"))
            start = float(item["start_sec"] if "start_sec" in item else item["start"])
            end = float(item["end_sec"] if "end_sec" in item else item["end"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise AlignmentError(f"{path}: word {index} needs word/start/end") from None
        if word is not None and str(word).strip().lower() not in _NON_WORDS:
            timed.append((str(word), start, end))
    return timed


def read_slamkit_alignment(path: str | os.PathLike) -> TimedWords:
    """slamkit's per-file alignment JSON (`utils/data_prep.parse_transcriptions`): {"aligned_text": [[word, start, end],
    ...]}, the words as Whisper gives them (" girl", " room.")."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        items = data["aligned_text"]
        timed = [(str(word).strip(), float(start), float(end)) for word, start, end in items]
    except (OSError, json.JSONDecodeError) as error:
        raise AlignmentError(f"{path}: not readable JSON ({error})") from None
    except (KeyError, TypeError, ValueError):
        raise AlignmentError(f"{path}: expected {{\"aligned_text\": [[word, start, end], ...]}}") from None
    return [(word, start, end) for word, start, end in timed if word.lower() not in _NON_WORDS]


def read_librispeech_alignment(path: str | os.PathLike) -> dict[str, TimedWords]:
    """A chapter's `SPEAKER-CHAPTER.alignment.txt` of CorentinJ's LibriSpeech alignments (Montreal Forced Aligner,
    every word of LibriSpeech's transcripts): one line per aligned utterance, `ID ",W1,,W2," "E0,E1,E2,E3,E4"`, each
    item ending at its time and starting where the one before it ends (the first at 0), an empty item a silence."""
    timed: dict[str, TimedWords] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AlignmentError(f"{path}: not readable ({error})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        identifier, _, rest = line.strip().partition(" ")
        fields = rest.split('"')  # '', words, ' ', ends, '' (a word holds no quote: LibriSpeech's are letters and ')
        try:
            if len(fields) != 5 or fields[0] or fields[2].strip() or fields[4].strip():
                raise ValueError("expected ID \"WORDS\" \"END TIMES\"")
            items, ends = fields[1].split(","), [float(end) for end in fields[3].split(",")]
            if len(items) != len(ends):
                raise ValueError(f"{len(items)} words and {len(ends)} end times")
        except ValueError as error:
            raise AlignmentError(f"{path}:{number}: not a line of LibriSpeech alignments ({error})") from None
        starts = [0.0, *ends[:-1]]
        timed[identifier] = [(word, start, end) for word, start, end in zip(items, starts, ends) if word.strip()]
    return timed


@functools.lru_cache(maxsize=64)
def _librispeech_chapter(path: str, mtime_ns: int) -> dict[str, TimedWords] | str:
    """One chapter's alignments, read once per file and version (a chapter's utterances are aligned one by one);
    for a malformed file what is wrong with it."""
    try:
        return read_librispeech_alignment(path)
    except AlignmentError as error:
        return str(error)


@functools.lru_cache(maxsize=4)
def _librispeech_chapters(folder: str) -> dict[str, Path]:
    """The `.alignment.txt` files under a folder (LibriSpeech's tree, the alignments merged into it), by chapter."""
    return {path.name.removesuffix(".alignment.txt"): path for path in Path(folder).rglob("*.alignment.txt")}


def librispeech_alignment_words(utterance_id: str, path: Path) -> TimedWords | None:
    """The utterance's timed words in a chapter's alignment file; None when it has no line (CorentinJ leaves out
    the 127 utterances MFA could not align)."""
    chapter = _librispeech_chapter(str(path), path.stat().st_mtime_ns)
    if isinstance(chapter, str):
        raise AlignmentError(chapter)
    return chapter.get(utterance_id)


def _librispeech_timings(utterance: Utterance, source: Path) -> TimedWords:
    if source.is_file():
        path = source
    else:  # the utterance SPEAKER-CHAPTER-NUMBER is in its chapter's SPEAKER-CHAPTER.alignment.txt
        chapter = utterance.id.rsplit("-", 1)[0]
        path = _librispeech_chapters(str(source)).get(chapter)
        if path is None:
            raise AlignmentError(f"no {chapter}.alignment.txt under {source}")
    words = librispeech_alignment_words(utterance.id, path)
    if words is None:
        raise AlignmentError(f"{path} has no line for {utterance.id} (not aligned)")
    return words


# --- pocketsphinx ----------------------------------------------------------------------

# espeak-ng English phoneme mnemonics -> CMU ARPAbet (pocketsphinx's phone set).
_ESPEAK_TO_ARPABET = {
    "p": "P", "b": "B", "t": "T", "t#": "T", "d": "D", "d#": "D", "k": "K", "g": "G", "f": "F", "v": "V",
    "T": "TH", "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "x": "HH", "m": "M",
    "n": "N", "n-": "N", "N": "NG", "l": "L", "l-": "L", "r": "R", "r-": "R", "w": "W", "j": "Y",
    "tS": "CH", "dZ": "JH",
    "@": "AH", "@2": "AH", "@5": "AH", "@L": "AH L", "3": "ER", "3:": "ER", "@r": "ER", "a": "AE",
    "aa": "AE", "a#": "AH", "A:": "AA", "A@": "AA R", "A#": "AA", "E": "EH", "e": "EH", "e@": "EH R",
    "eI": "EY", "I": "IH", "I2": "IH", "I#": "IH", "i": "IY", "i:": "IY", "i@": "IY R", "i@3": "IY R",
    "0": "AA", "0#": "AA", "O": "AO", "O:": "AO", "O@": "AO R", "o@": "AO R", "OI": "OY", "oU": "OW",
    "u:": "UW", "U": "UH", "U@": "UH R", "V": "AH", "VR": "AH R", "IR": "IH R", "aI": "AY",
    "aI@": "AY ER", "aI3": "AY ER", "aU": "AW", "aU@": "AW ER",
}


def espeak_arpabet(word: str) -> str:
    """A pronunciation for `word` in ARPAbet from espeak-ng's g2p ('' when it has none)."""
    from simslm.speech.espeak import Espeak

    phones = (_ESPEAK_TO_ARPABET.get(name, "") for name in Espeak.instance().phonemes(word))
    return " ".join(phone for phone in phones if phone)


@functools.lru_cache(maxsize=1)
def cmu_pronunciations() -> dict[str, tuple[tuple[str, ...], ...]]:
    """The CMU Pronouncing Dictionary that pocketsphinx ships (cmudict-en-us, 134,000 entries): each word (lower
    case) with its pronunciations in the dictionary's order, ARPAbet phones with their stress digits (AH0, AH1)."""
    from pocketsphinx import get_model_path

    pronunciations: dict[str, list[tuple[str, ...]]] = {}
    with open(Path(get_model_path()) / "en-us" / "cmudict-en-us.dict", encoding="utf-8") as lines:
        for line in lines:
            spelled, _, phones = line.strip().partition(" ")
            if phones:
                pronunciations.setdefault(spelled.split("(")[0].lower(), []).append(tuple(phones.split()))
    return {word: tuple(variants) for word, variants in pronunciations.items()}


@functools.lru_cache(maxsize=1)
def pocketsphinx_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """The words of the CMU Pronouncing Dictionary that pocketsphinx ships and their pronunciations (ARPAbet, as
    `espeak_arpabet` writes them: no stress digits), every variant's."""
    dictionary = cmu_pronunciations()
    sounds = {" ".join(phone.rstrip("012") for phone in variant) for variants in dictionary.values()
              for variant in variants}
    return frozenset(dictionary), frozenset(sounds)


class PocketsphinxAligner:
    """Forced alignment with pocketsphinx's bundled US English acoustic model (10 ms frames)."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        # Default beams lose the path on utterances longer than ~20 s (alignment then ends
        # with no segmentation); the widest beams aligned every story tried, at ~30x real
        # time per core instead of ~50x (docs/LOG.md, 2026-11-25).
        self._decoder = Decoder(samprate=audio.TARGET_SAMPLE_RATE, bestpath=False, loglevel="FATAL",
                                beam=1e-300, wbeam=1e-300, pbeam=1e-300)

    def _dictionary_word(self, word: str) -> str:
        key = text_lib.normalize_word(word)
        if self._decoder.lookup_word(key) is None:
            parts = [part for part in key.split("-") if part]
            if len(parts) > 1 and all(self._decoder.lookup_word(part) for part in parts):
                phones = " ".join(self._decoder.lookup_word(part) for part in parts)
            else:
                phones = espeak_arpabet(key)
            if not phones:
                raise AlignmentError(f"no pronunciation for {word!r}")
            self._decoder.add_word(key, phones, True)
        return key

    def _decode(self, pcm: bytes) -> None:
        try:
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
        except RuntimeError as error:
            raise AlignmentError(f"pocketsphinx failed ({error})") from None

    def align(self, samples, transcript: str) -> TimedWords:
        """Timed words of `transcript` in 16 kHz mono float samples."""
        import numpy as np

        words = text_lib.words(transcript)
        if not words:
            raise AlignmentError("transcript has no words")
        keys = [self._dictionary_word(word) for word in words]
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        try:
            self._decoder.set_align_text(" ".join(keys))
        except RuntimeError as error:
            raise AlignmentError(f"pocketsphinx refused the transcript ({error})") from None
        self._decode(pcm)
        segmentation = self._decoder.seg()
        if segmentation is None:
            raise AlignmentError("pocketsphinx found no alignment (audio and transcript probably disagree)")
        segments = [s for s in segmentation if s.word.split("(")[0].lower() not in _NON_WORDS
                    and not s.word.startswith("[")]
        if len(segments) != len(words):
            raise AlignmentError(f"pocketsphinx aligned {len(segments)} of {len(words)} words "
                                 f"(audio and transcript probably disagree)")
        # Frames are 10 ms; a segment's end frame is inclusive.
        return [(word, s.start_frame / 100, (s.end_frame + 1) / 100) for word, s in zip(words, segments)]

    def phones(self, samples, transcript: str) -> TimedWords:
        """Timed ARPAbet phones of `transcript` (silence as 'SIL'), from a second, phone-level pass."""
        import numpy as np

        self.align(samples, transcript)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        self._decoder.set_alignment()
        self._decode(pcm)
        alignment = self._decoder.get_alignment()
        if alignment is None:
            raise AlignmentError("pocketsphinx produced no phone alignment")
        return [(phone.name, phone.start / 100, (phone.start + phone.duration) / 100)
                for word in alignment for phone in word]


_worker_aligner: PocketsphinxAligner | None = None


def _pocketsphinx_timings(utterance: Utterance, audio_path: Path) -> TimedWords:
    global _worker_aligner  # one decoder per worker process: it takes ~0.4 s to load
    if _worker_aligner is None:
        _worker_aligner = PocketsphinxAligner()
    return _worker_aligner.align(audio.load_audio(audio_path), utterance.transcript)


def _import_timings(reader: Callable[[Path], TimedWords], suffixes: tuple[str, ...]):
    def timings(utterance: Utterance, source: Path) -> TimedWords:
        if source.is_file():
            return reader(source)
        for suffix in suffixes:
            candidate = source / f"{utterance.id}{suffix}"
            if candidate.exists():
                return reader(candidate)
        raise AlignmentError(f"no {'/'.join(suffixes)} file for {utterance.id} in {source}")
    return timings


def _ctm_timings(utterance: Utterance, source: Path) -> TimedWords:
    path = source if source.is_file() else source / f"{utterance.id}.ctm"
    if not path.exists():
        raise AlignmentError(f"no CTM at {path}")
    index = _ctm_index(str(path), path.stat().st_mtime_ns)
    if isinstance(index, str):
        raise AlignmentError(index)
    words = index.words(utterance.id)
    if words is None:
        raise AlignmentError(f"{path} has no lines for {utterance.id}")
    return words


_ctm_indexes: dict[tuple[str, int], _CtmIndex | str] = {}


def _ctm_index(path: str, mtime_ns: int) -> _CtmIndex | str:
    """A CTM's index, made once per file and version; for a malformed file, what is wrong with it, kept so that
    each of a corpus's utterances is skipped with it, not after reading the whole file again."""
    if (path, mtime_ns) not in _ctm_indexes:
        try:
            _ctm_indexes[(path, mtime_ns)] = _CtmIndex(path)
        except AlignmentError as error:
            _ctm_indexes[(path, mtime_ns)] = str(error)
    return _ctm_indexes[(path, mtime_ns)]


# name -> function(utterance, path) -> timed words. For importers the path is a file
# holding the timings or a folder of <utterance id><suffix> files; for pocketsphinx it is
# the audio file.
ALIGNERS: dict[str, Callable[[Utterance, Path], TimedWords]] = {
    "pocketsphinx": _pocketsphinx_timings,
    "ctm": _ctm_timings,
    "textgrid": _import_timings(read_textgrid, (".TextGrid", ".textgrid")),
    "json": _import_timings(read_word_json, (".json", ".words.json")),
    "slamkit": _import_timings(read_slamkit_alignment, (".json",)),
    "librispeech-alignments": _librispeech_timings,
}


@dataclass(frozen=True, kw_only=True)
class AlignConfig(Config):
    """What `simslm align` does."""

    manifest: str
    """Input manifest (utterances with transcripts)."""
    out: str
    """Output manifest: the utterances that got word timings."""
    method: str = field(default="pocketsphinx", metadata=registry_choices(ALIGNERS))
    """Where timings come from: forced alignment (pocketsphinx) or a file to import."""
    source: str | None = None
    """For ctm/textgrid/json/slamkit: a file, or a folder of <utterance id>.<ext> files; for
    librispeech-alignments: a chapter's .alignment.txt, or a folder (LibriSpeech's tree) holding them."""
    keep_existing: bool = False
    """Keep word timings an utterance already has instead of replacing them."""
    num_workers: int = 0
    """Worker processes for pocketsphinx; 0 = one per core."""

    def check(self) -> None:
        check_positive(self, "num_workers", allow_zero=True)
        check_output_file(self, "out", "the aligned manifest (a file)")
        check_not_input(self, "out", "source", "the timings being imported, which the aligned manifest would replace")
        if self.method != "pocketsphinx" and not self.source:
            raise ConfigError(f"--method {self.method} imports timings: give --source FILE or FOLDER")


def _align_one(task: tuple[int, dict[str, Any], str | None, str | None]) -> tuple[int, dict[str, Any]]:
    """(number, journal entry) of one utterance: {"id", "aligned": record}, {"id", "kept": record} when there is
    no method (its timings are kept), or {"id", "skipped": reason}."""
    number, record, method, path = task
    if method is None:
        return number, {"id": record["id"], "kept": record}
    utterance = Utterance.from_json(record)
    try:
        timed = ALIGNERS[method](utterance, Path(path))
        aligned = replace(utterance, words=tuple(Word(word=w, start_sec=round(s, 4), end_sec=round(e, 4))
                                                 for w, s, e in timed),
                          meta={**utterance.meta, "alignment": method})
        problems = aligned.timing_problems()
        if problems:
            return number, {"id": utterance.id, "skipped": problems[0].message}
        return number, {"id": utterance.id, "aligned": aligned.to_json()}
    except (AlignmentError, audio.AudioError, OSError, RuntimeError) as error:
        # RuntimeError: pocketsphinx or espeak-ng (g2p) refusing this utterance's input.
        return number, {"id": utterance.id, "skipped": str(error)}


@dataclass(frozen=True)
class AlignReport:
    """What an alignment run did (also written next to the output manifest)."""

    manifest: str
    num_utterances: int
    num_aligned: int
    num_kept: int
    num_skipped: int
    skipped: dict[str, str]
    audio_sec: float
    wall_sec: float
    num_resumed: int = 0
    """Utterances an interrupted earlier run had done (its journal), not done again."""


class _OrderedJournal:
    """What an alignment has done so far, beside its output (`<out>.aligning`): a header naming the input and the
    method, then one line per input utterance in the manifest's order. A run that is killed (a time limit,
    pocketsphinx over thousands of hours) goes on after the last whole line; the output manifest is written from
    the journal once every utterance is in it. Lines are flushed, not fsynced one by one: after a crash the torn or
    lost tail is done again. The journal is locked while a run appends to it: a second run into the same output
    (a job submitted twice) is refused rather than interleaving its lines."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path, self.header = path, header

    def done_before(self, ids: Iterator[str]) -> tuple[int, int]:
        """How many leading utterances (whose ids `ids` gives in order) the journal holds, and the bytes up to the
        end of their lines (0: none, or a journal of another input or method, to start anew). Reads only."""
        whole, offset = 0, 0
        if self.path.exists():
            with open(self.path, "rb") as handle:
                for number, line in enumerate(handle):
                    try:
                        entry = json.loads(line) if line.endswith(b"\n") else None
                    except ValueError:
                        entry = None
                    if number == 0:
                        if entry != {"journal": self.header}:
                            break
                    elif not isinstance(entry, dict) or entry.get("id") != next(ids, None):
                        break
                    else:
                        whole += 1
                    offset += len(line)
        return whole, offset

    @contextlib.contextmanager
    def appending(self, offset: int, busy: str) -> Iterator[Callable[[dict[str, Any]], None]]:
        """Lock the journal, keep its first `offset` bytes (or start it with the header) and append entries."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:  # made when missing; cut only once it is locked
            storage.lock_file(handle, busy)
            if os.fstat(handle.fileno()).st_size < offset:  # another run ended (and removed it) since it was read
                raise ValueError(f"{self.path}: changed while this run read it; run again")
            handle.truncate(offset)
            if not offset:
                handle.write(json.dumps({"journal": self.header}, ensure_ascii=False).encode() + b"\n")

            def append(entry: dict[str, Any]) -> None:
                handle.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
                handle.flush()
            try:
                yield append
            finally:
                handle.flush()
                os.fsync(handle.fileno())

    def entries(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as handle:
            next(handle)  # the header
            for line in handle:
                yield json.loads(line)


def align_manifest(config: AlignConfig) -> AlignReport:
    """Add word timings to every utterance of a manifest; skip and count the failures.

    The manifest is streamed (never whole in memory) and the work journaled, so an interrupted run resumes."""
    started = time.perf_counter()
    manifest = Path(config.manifest)
    manifest_dir = manifest_folder(manifest)
    if config.method != "pocketsphinx" and not (config.source and Path(config.source).exists()):
        raise ValueError(f"{config.source}: no such file or folder (--source, the {config.method} timings to "
                         f"import)")
    out_path = Path(config.out)
    in_place = out_path.resolve() == manifest.resolve()
    new_folder = not out_path.parent.exists()
    stat = manifest.stat()
    # A timings file edited since (a CTM) is another source; a folder's files are not followed one by one.
    source_stat = Path(config.source).stat() if config.source and Path(config.source).is_file() else None
    journal = _OrderedJournal(out_path.with_name(f"{out_path.name}.aligning"), {
        "manifest": str(manifest.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "method": config.method, "source": str(Path(config.source).resolve()) if config.source else None,
        "source_size": source_stat and source_stat.st_size, "source_mtime_ns": source_stat and source_stat.st_mtime_ns,
        "keep_existing": config.keep_existing})
    busy = f"{out_path}: another `simslm align` is writing it (its journal {journal.path.name} is locked)"
    if journal.path.exists():  # said before the first pass, which takes minutes at Libri-Light's size
        with open(journal.path, "rb") as handle:
            storage.lock_file(handle, busy)
    # A first pass names a malformed line before any work, finds where a journal left off, and counts the
    # utterances for the progress line and those that need an aligner (kept ones, though they pass through the
    # workers to keep their place, start none).
    num_utterances, num_to_align = 0, 0

    def ids() -> Iterator[str]:
        nonlocal num_utterances, num_to_align
        for utterance in iter_utterances(manifest):
            num_utterances += 1
            num_to_align += not (config.keep_existing and utterance.words is not None)
            yield utterance.id

    out_folder = out_path.parent.resolve()
    first_pass = ids()
    num_resumed, offset = journal.done_before(first_pass)
    collections.deque(first_pass, maxlen=0)  # the rest of the manifest, counted and checked

    def tasks() -> Iterator[tuple[int, dict[str, Any], str | None, str | None]]:
        for number, utterance in enumerate(itertools.islice(iter_utterances(manifest), num_resumed, None),
                                           start=num_resumed):
            # Audio paths must keep pointing at the same files from the output's folder, in the input's form: a
            # relative path stays relative (the manifest moves with its corpus), an absolute one absolute.
            located = storage.located_path(utterance.audio_path(manifest_dir))
            recorded = str(located) if Path(utterance.audio).is_absolute() else os.path.relpath(located, out_folder)
            record = replace(utterance, audio=recorded).to_json()
            if config.keep_existing and utterance.words is not None:
                yield number, record, None, None
            else:
                yield number, record, config.method, str(located) if config.method == "pocketsphinx" \
                    else config.source

    workers = (config.num_workers or machine.default_workers()) if config.method == "pocketsphinx" else 1
    remaining = num_utterances - num_resumed
    workers = min(workers, max(1, num_to_align))
    # Workers finish out of order; entries wait here until those before them are in, so the journal (and the
    # output) keeps the manifest's order.
    waiting: dict[int, dict[str, Any]] = {}
    next_number = num_resumed
    # An utterance whose alignment ends the process (pocketsphinx's memory on a recording of an hour, a crash in
    # it) is named by the next run, then skipped: the journal above resumes at it, so it would end every run.
    ended = jobs.TaskJournal(out_path.with_name(f".{out_path.name}.running"), key=lambda task: task[1]["id"],
                             skipped=lambda task, reason: (task[0], {"id": task[1]["id"], "skipped": reason}))
    with journal.appending(offset, busy) as append:
        for number, entry in jobs.parallel_map(_align_one, tasks(), num_workers=workers, total=remaining,
                                               description=f"align ({config.method})", journal=ended):
            waiting[number] = entry
            while next_number in waiting:
                append(waiting.pop(next_number))
                next_number += 1
    try:
        return _write_aligned(config, journal, out_path, in_place, num_utterances, num_resumed, started)
    except ValueError:
        journal.path.unlink()  # a run again with the same options would end the same way
        if new_folder:
            with contextlib.suppress(OSError):  # a folder of the user's own, not empty
                out_path.parent.rmdir()
        raise


def _write_aligned(config: AlignConfig, journal: _OrderedJournal, out_path: Path, in_place: bool,
                   num_utterances: int, num_resumed: int, started: float) -> AlignReport:
    """The output manifest from a complete journal, which is then removed."""
    counts, skipped, audio_sec = collections.Counter(), {}, 0.0
    source = config.source if config.method != "pocketsphinx" else config.manifest
    folder = out_path.parent.resolve()
    with storage.atomic_path(out_path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for entry in journal.entries():
            if "skipped" in entry:
                skipped[entry["id"]] = entry["skipped"]
                continue
            kind = "aligned" if "aligned" in entry else "kept"
            counts[kind] += 1
            record = {**entry[kind], "audio": _relative_to(entry[kind]["audio"], folder)}
            audio_sec += record["duration_sec"]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")  # as write_manifest writes a line
        if skipped and not counts["aligned"]:
            examples = "; ".join(f"{key}: {reason}" for key, reason in list(skipped.items())[:3])
            raise ValueError(f"{source}: no utterance could be aligned ({len(skipped)} skipped; {examples})")
        if in_place and skipped:
            # The output drops what could not be aligned: over the input, that would lose utterances.
            raise ValueError(f"{config.manifest}: {len(skipped)} utterance(s) could not be aligned, and writing "
                             f"in place would drop them; write to another --out")
    journal.path.unlink()
    report = AlignReport(manifest=str(out_path), num_utterances=num_utterances, num_aligned=counts["aligned"],
                         num_kept=counts["kept"], num_skipped=len(skipped), skipped=skipped,
                         audio_sec=round(audio_sec, 3), wall_sec=round(time.perf_counter() - started, 3),
                         num_resumed=num_resumed)
    storage.write_json(out_path.with_suffix(".report.json"), {**asdict(report), "config": asdict(config)})
    return report


def _relative_to(path: str, folder: Path) -> str:
    """An absolute audio path relative to `folder` (resolved) when it lies below it."""
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path
