"""Corpora in other layouts as simslm manifests: `simslm manifest import`.

Importers register by name, each a generator of (id, audio, transcript, speaker) candidates
or of the reason an item was skipped:

- `folder`: audio files (.wav, .flac) with their transcript beside them (same stem, .txt or
  .lab), at any depth; the speaker is the audio's parent folder, or the one named by a
  Libri-Light JSON beside the file (Libri-Light's tree is SPEAKER/BOOK/FILE).
- `librispeech`: LibriSpeech's tree, `SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt` holding
  `UTTERANCE-ID TRANSCRIPT` lines, the audio `UTTERANCE-ID.flac` beside it, and word timings
  from `SPEAKER-CHAPTER.alignment.txt` where CorentinJ's alignments are merged into the tree.
- `kaldi`: a Kaldi data directory: `wav.scp` (id, path), `text` (id, transcript), optional
  `utt2spk`, and optional `segments` (utterance, recording, start, end), whose segments are
  cut into their own FLAC files under the output's folder (simslm stages read whole files).
- `lhotse`: a folder of lhotse manifests (`*recordings*.jsonl[.gz]` and
  `*supervisions*.jsonl[.gz]`, read with lhotse itself): one utterance per supervision, its
  word alignment kept when present; a supervision covering part of a recording is cut into
  its own FLAC, like a Kaldi segment.
- `jsonl`: another tool's JSONL manifest, its field names mapped (`--fields id=utt_id
  audio=audio transcript=text`), paths relative to its own folder; word timings from a field that holds
  them or names a word-timing JSON file (`words=word_alignment`).
- `hf`: a Hugging Face `datasets` audio dataset, by hub id (from the cache when offline) or
  local path (a `save_to_disk` folder, or data files), streamed row by row so a large set
  never has to fit in memory; the audio is taken undecoded (its bytes written as they are,
  no torchcodec needed), with optional word timings from a column of {word, start, end}.

Every candidate's audio header is read (sample rate, duration); missing or unreadable audio,
missing or empty transcripts, ids without audio and repeated ids are skipped and counted by
reason. With `--untranscribed`, audio with no transcript is kept as a speech-only utterance
(an empty transcript), as Libri-Light's recordings are and as slamkit's feature extraction
reads a folder of audio. An import that keeps nothing is an error, and the manifest is
written atomically.

LibriSpeech's transcripts are all in capitals; its tree's are lowercased (`--case`), as slamkit's
LibriSpeech helper reads them, so that a pretrained text LM sees its text as it learnt text.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Literal

from simslm import assets, jobs, storage
from simslm.config import Config, ConfigError, check_not_input, check_output_file
from simslm.speech import audio
from simslm.speech import text as text_lib
from simslm.speech.align import AlignmentError, librispeech_alignment_words, read_word_json
from simslm.speech.manifest import Utterance, Word, manifest_folder, write_manifest


@dataclass(frozen=True)
class Candidate:
    """An utterance as a layout describes it, before its audio is checked."""

    id: str
    audio: Path
    transcript: str
    speaker: str = "unknown"
    words: tuple[Word, ...] | None = None
    """Word timings in the audio's own time, when the source has them."""


@dataclass(frozen=True)
class Skip:
    """An item of the source that cannot become an utterance, and why."""

    id: str
    reason: str
    detail: str | None = None
    """A line naming the file, said for the first few skips of this reason (`REPEATS_NAMED`)."""


Item = Candidate | Skip


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of a UTF-8 text file, blank lines left out."""
    for number, (line, problem) in enumerate(storage.text_lines(path), start=1):
        if problem:
            raise ValueError(f"{path}:{number}: {problem}")
        if line.strip():
            yield number, line.strip()


def _key_value(path: Path) -> dict[str, str]:
    """A Kaldi-style table: the first word of each line is the key, the rest its value."""
    table = {}
    for _, line in _read_lines(path):
        key, _, value = line.partition(" ")
        table[key] = value.strip()
    return table


def _transcript_beside(audio_path: Path) -> str | None:
    for suffix in (".txt", ".lab"):
        candidate = audio_path.with_suffix(suffix)
        if candidate.is_file():
            return storage.read_text(candidate).strip()
    return None


def _untranscribed(candidate: Candidate, reason: str, keep: bool) -> Item:
    """An item with no transcript: kept as a speech-only utterance (`--untranscribed`), else skipped for `reason`."""
    return replace(candidate, transcript="") if keep else Skip(candidate.id, reason)


def _librilight_speaker(audio_path: Path) -> str | None:
    """The speaker of the Libri-Light JSON beside a file (`speaker`, with its `voice_activity`), if there is one:
    Libri-Light's tree is SPEAKER/BOOK/FILE, so the audio's folder is the book."""
    meta = audio_path.with_suffix(".json")
    try:
        record = storage.read_json(meta) if meta.is_file() else None
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and "voice_activity" in record and isinstance(record.get("speaker"), (str, int)):
        return str(record["speaker"])
    return None


def import_folder(source: Path, *, untranscribed: bool = False, **_) -> Iterator[Item]:
    """Audio files with a .txt or .lab transcript of the same stem (or none, with `untranscribed`); the speaker is
    the audio's folder, or the one a Libri-Light JSON beside it names."""
    for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in audio.AUDIO_SUFFIXES):
        identifier = str(path.relative_to(source).with_suffix("")).replace("/", "_")
        try:
            transcript = _transcript_beside(path)
        except ValueError as error:  # one Latin-1 transcript ended the import of the whole folder
            yield Skip(identifier, "transcript not UTF-8 text", str(error))
            continue
        speaker = _librilight_speaker(path) or (path.parent.name if path.parent != source else "unknown")
        candidate = Candidate(identifier, path, transcript or "", speaker)
        yield candidate if transcript else _untranscribed(candidate, "no transcript (.txt or .lab) beside the audio"
                                                          if transcript is None else "empty transcript", untranscribed)


def import_librispeech(source: Path, **_) -> Iterator[Item]:
    """LibriSpeech: one *.trans.txt per chapter, the speaker the first part of each id; word timings from the
    chapter's .alignment.txt beside it when CorentinJ's alignments are merged into the tree (an utterance they
    leave out, one MFA could not align, comes without timings)."""
    listings = sorted(source.rglob("*.trans.txt"))
    if not listings:
        raise ValueError(f"{source}: no *.trans.txt file (not a LibriSpeech tree)")
    for listing in listings:
        alignments = listing.with_name(listing.name.removesuffix(".trans.txt") + ".alignment.txt")
        aligned = alignments.exists()  # once a chapter, not once a line
        for number, line in _read_lines(listing):
            identifier, _, transcript = line.partition(" ")
            if not transcript.strip():
                yield Skip(identifier or f"{listing}:{number}", "empty transcript")
                continue
            path = next((listing.parent / f"{identifier}{suffix}" for suffix in (".flac", ".wav")
                         if (listing.parent / f"{identifier}{suffix}").exists()), listing.parent / f"{identifier}.flac")
            words = None
            if aligned:
                try:
                    timed = librispeech_alignment_words(identifier, alignments)
                except AlignmentError as error:
                    yield Skip(identifier, "unreadable .alignment.txt", str(error))
                    continue
                words = None if timed is None else tuple(Word(word=word, start_sec=start, end_sec=end)
                                                         for word, start, end in timed)
            yield Candidate(identifier, path, transcript.strip(), identifier.split("-")[0], words)


def import_kaldi(source: Path, *, segments_dir: Path, untranscribed: bool = False, **_) -> Iterator[Item]:
    """A Kaldi data directory; segments are cut into files under `segments_dir`. With `untranscribed`, `text` may be
    missing or lack utterances: every utterance of `segments` (else of `wav.scp`) is imported."""
    for required in ("wav.scp",) + (() if untranscribed else ("text",)):
        if not (source / required).is_file():
            raise ValueError(f"{source}: no {required} (not a Kaldi data directory)")
    recordings = _key_value(source / "wav.scp")
    texts = _key_value(source / "text") if (source / "text").is_file() else {}
    speakers = _key_value(source / "utt2spk") if (source / "utt2spk").is_file() else {}
    segments = ({key: value.split() for key, value in _key_value(source / "segments").items()}
                if (source / "segments").is_file() else None)

    def recording_path(recording: str) -> Path | None:
        entry = recordings.get(recording)
        if entry is None or entry.endswith("|"):
            return None  # missing, or a command to pipe from (`sox ... |`): not a file simslm can read
        path = Path(entry)
        return path if path.is_absolute() else source / path

    # Untranscribed utterances too: the ids of segments (else of wav.scp) in their order, then any only in text.
    utterances = list(texts) if not untranscribed else \
        list(dict.fromkeys([*(segments if segments is not None else recordings), *texts]))
    for utterance in utterances:
        speaker, transcript = speakers.get(utterance, "unknown"), texts.get(utterance, "")
        if not transcript and not untranscribed:
            yield Skip(utterance, "empty transcript")
            continue
        if segments is None:
            path = recording_path(utterance)
            yield Candidate(utterance, path, transcript, speaker) if path else \
                Skip(utterance, "no file in wav.scp (missing, or a piped command)")
            continue
        if utterance not in segments or len(segments[utterance]) != 3:
            yield Skip(utterance, "no line in segments (recording start end)")
            continue
        recording, start, end = segments[utterance]
        path = recording_path(recording)
        if path is None:
            yield Skip(utterance, "its recording has no file in wav.scp (missing, or a piped command)")
            continue
        try:
            cut = _cut_segment(path, float(start), float(end), segments_dir / f"{utterance}.flac")
        except (ValueError, audio.AudioError) as error:
            yield Skip(utterance, f"segment not cut: {error}")
            continue
        yield Candidate(utterance, cut, transcript, speaker)


def _cut_segment(path: Path, start_sec: float, end_sec: float, target: Path) -> Path:
    """Samples [start, end) of a recording as their own FLAC (written once)."""
    import soundfile

    if not 0 <= start_sec < end_sec:
        raise ValueError(f"start {start_sec} and end {end_sec} are not an interval")
    if not target.exists():
        rate, duration = audio.audio_info(path)
        if end_sec > duration + 0.01:
            raise ValueError(f"ends at {end_sec} s, after the recording's {duration:.2f} s")
        samples, _ = soundfile.read(str(path), start=round(start_sec * rate), stop=round(end_sec * rate),
                                    dtype="float32")
        audio.write_audio(target, samples, rate)
    return target


def import_jsonl(source: Path, *, fields: dict[str, str], untranscribed: bool = False, **_) -> Iterator[Item]:
    """Another tool's JSONL manifest with its field names mapped to id, audio, transcript and speaker (the transcript
    may be missing, with `untranscribed`)."""
    names = {"id": "id", "audio": "audio", "transcript": "transcript", "speaker": "speaker", "words": "words",
             **fields}
    folder = manifest_folder(source)  # where its relative paths start, through a link to it
    for number, line in _read_lines(source):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            yield Skip(f"line {number}", "not valid JSON")
            continue
        if not isinstance(record, dict):
            yield Skip(f"line {number}", "not a JSON object")
            continue
        missing = [key for key in ("id", "audio") + (() if untranscribed else ("transcript",))
                   if names[key] not in record]
        if missing:
            # Named in full, so that the one line an import of nothing ends with says how to map them.
            quoted = [repr(names[key]) for key in missing]
            either = " or ".join(filter(None, (", ".join(quoted[:-1]), quoted[-1])))
            yield Skip(f"line {number}", f"no {either} field (its fields: {', '.join(record) or 'none'}; map with "
                                         f"--fields {' '.join(f'{key}=NAME' for key in missing)})")
            continue
        identifier, path, transcript = (record.get(names[key]) for key in ("id", "audio", "transcript"))
        if not isinstance(transcript, str) or not transcript.strip():
            if not untranscribed:
                yield Skip(str(identifier), "empty transcript")
                continue
            transcript = ""
        try:
            words = _jsonl_words(record.get(names["words"]), folder)
        except (KeyError, TypeError, ValueError, AlignmentError):
            if "words" not in fields:  # a field that happens to be called words, holding something else: no timings
                words = None
            else:
                yield Skip(str(identifier), f"field '{names['words']}' is neither a list of {{word, start, end}} nor "
                                            f"a readable word-timing JSON file")
                continue
        path = Path(str(path))
        yield Candidate(str(identifier), path if path.is_absolute() else folder / path, transcript.strip(),
                        str(record.get(names["speaker"], "unknown")), words)


def _jsonl_words(value, folder: Path) -> tuple[Word, ...] | None:
    """A JSONL record's word timings: none, a list of {word, start, end}, or the path (relative to the manifest's
    folder) of a word-timing JSON that `simslm align --method json` reads."""
    if value is None or value == []:
        return None
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else folder / value
        return tuple(Word(word=word, start_sec=start, end_sec=end) for word, start, end in read_word_json(path))
    return _timed_words(value)


def import_lhotse(source: Path, *, segments_dir: Path, untranscribed: bool = False, **_) -> Iterator[Item]:
    """lhotse recordings and supervisions: one utterance per supervision, words from its alignment."""
    try:
        from lhotse import load_manifest_lazy
    except ImportError:
        raise ValueError("reading lhotse manifests needs lhotse: pip install 'simslm[lhotse]'") from None

    def manifest(kind: str) -> Path:
        found = sorted(source.glob(f"*{kind}*.jsonl*"))
        if not found:
            raise ValueError(f"{source}: no *{kind}*.jsonl[.gz] (not a folder of lhotse manifests)")
        return found[0]

    recordings = {}  # id -> (file, duration): kept small, so a large corpus is read lazily line by line
    for recording in load_manifest_lazy(manifest("recordings")):
        files = [s.source for s in recording.sources if s.type == "file"]
        recordings[recording.id] = (Path(files[0]) if len(files) == 1 else None, recording.duration)
    for supervision in load_manifest_lazy(manifest("supervisions")):
        if not (supervision.text or "").strip() and not untranscribed:
            yield Skip(supervision.id, "empty transcript")
            continue
        path, duration = recordings.get(supervision.recording_id, (None, 0.0))
        if path is None:
            yield Skip(supervision.id, "its recording is missing or not one plain file (URL, command, several)")
            continue
        whole = supervision.start <= 1e-3 and abs(supervision.duration - duration) <= 1e-2
        if not whole:
            try:
                path = _cut_segment(path, supervision.start, supervision.end, segments_dir / f"{supervision.id}.flac")
            except (ValueError, audio.AudioError) as error:
                yield Skip(supervision.id, f"segment not cut: {error}")
                continue
        offset = 0.0 if whole else supervision.start  # lhotse's alignments are in the recording's time
        items = (supervision.alignment or {}).get("word")
        words = tuple(Word(word=item.symbol, start_sec=round(item.start - offset, 3),
                           end_sec=round(item.start + item.duration - offset, 3)) for item in items) if items else None
        yield Candidate(supervision.id, path, (supervision.text or "").strip(), supervision.speaker or "unknown", words)


def _audio_suffix(data: bytes, path: str | None) -> str:
    """The file name ending for a dataset's undecoded audio bytes, by what they are (Common Voice on the hub holds
    MP3 bytes, which were written as .flac), else the source's own ending (a format simslm cannot read then fails
    as itself)."""
    if data[:4] == b"fLaC":
        return ".flac"
    if data[:4] == b"RIFF":
        return ".wav"
    if data[:4] == b"OggS":
        return ".ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):  # a tag, or frame sync
        return ".mp3"
    return (Path(path).suffix.lower() if path else "") or ".audio"


def import_hf(source: Path, *, fields: dict[str, str], segments_dir: Path, split: str = "train",
              untranscribed: bool = False, **_) -> Iterator[Item]:
    """A `datasets` audio dataset, streamed; audio bytes written under `segments_dir`."""
    try:
        from datasets import Audio, load_dataset, load_from_disk
    except ImportError:
        raise ValueError("reading Hugging Face datasets needs datasets: pip install 'simslm[hf]'") from None
    names = {"id": "id", "audio": "audio", "transcript": "text", "speaker": "speaker_id", "words": "words",
             **fields}
    try:
        if (source / "dataset_info.json").is_file() or (source / "state.json").is_file():
            dataset = load_from_disk(str(source))  # memory-mapped Arrow: rows are read as they are used
            dataset = dataset[split] if hasattr(dataset, "keys") else dataset
        else:
            dataset = load_dataset(str(source), split=split, streaming=True)
    except (FileNotFoundError, ValueError, KeyError, OSError, ConnectionError) as error:
        raise ValueError(f"{source}: cannot open as a Hugging Face dataset (split {split}): {error}; offline, "
                         f"download it where a network exists (it is then read from the cache) or give a local "
                         f"path") from None
    if names["audio"] not in (dataset.features or {}):
        raise ValueError(f"{source}: no audio column '{names['audio']}' (columns: "
                         f"{', '.join(dataset.features or [])}); map it with --fields audio=NAME")
    dataset = dataset.cast_column(names["audio"], Audio(decode=False))
    for number, row in enumerate(dataset):
        identifier = str(row.get(names["id"], f"{split}-{number:08d}"))
        transcript = row.get(names["transcript"])
        if not isinstance(transcript, str) or not transcript.strip():
            if not untranscribed:
                yield Skip(identifier, f"no text in column '{names['transcript']}'")
                continue
            transcript = ""
        stored = row[names["audio"]] or {}
        if stored.get("bytes"):
            suffix = _audio_suffix(stored["bytes"], stored.get("path"))
            path = segments_dir / f"{storage.safe_file_name(identifier)}{suffix}"
            if not path.exists():
                segments_dir.mkdir(parents=True, exist_ok=True)
                storage.write_bytes(path, stored["bytes"])
        elif stored.get("path") and Path(stored["path"]).is_file():
            path = Path(stored["path"])
        else:
            yield Skip(identifier, "no audio bytes and no local audio file")
            continue
        timings = row.get(names["words"])
        words = None
        if isinstance(timings, list) and timings:
            try:
                words = _timed_words(timings)
            except (KeyError, TypeError, ValueError):
                yield Skip(identifier, f"column '{names['words']}' is not a list of {{word, start, end}}")
                continue
        yield Candidate(identifier, path, transcript.strip(), str(row.get(names["speaker"], "unknown")), words)


def _timed_words(items: list) -> tuple[Word, ...]:
    """A list of {word, start, end} (or start_sec, end_sec) as manifest words; KeyError, TypeError or ValueError
    when it is not one."""
    return tuple(Word(word=item["word"], start_sec=float(item.get("start", item.get("start_sec"))),
                      end_sec=float(item.get("end", item.get("end_sec")))) for item in items)


IMPORTERS: dict[str, Callable[..., Iterator[Item]]] = {
    "folder": import_folder, "librispeech": import_librispeech, "kaldi": import_kaldi, "lhotse": import_lhotse,
    "hf": import_hf, "jsonl": import_jsonl}


def detect_format(source: Path) -> str:
    """The layout of `source`: a JSONL file, a Kaldi directory, a LibriSpeech tree, or a folder of audio."""
    if not source.exists():
        return "hf"  # a hub id
    if source.is_file():
        return "jsonl"
    if (source / "dataset_info.json").is_file() or (source / "state.json").is_file() or \
            next(source.glob("*.parquet"), None) is not None:
        return "hf"
    if (source / "wav.scp").is_file():
        return "kaldi"
    if next(source.glob("*supervisions*.jsonl*"), None) is not None:
        return "lhotse"
    if next(source.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    return "folder"


# Repeated ids and names that are not UTF-8, the first few named on the terminal (each is counted in the report).
REPEATS_NAMED = 5
UNDECODABLE = "its file name is not UTF-8 (rename it)"


@dataclass(frozen=True, kw_only=True)
class ImportManifestConfig(Config):
    """What `simslm manifest import` does."""

    source: str
    """The corpus: a folder of audio with .txt/.lab transcripts, a LibriSpeech tree, a Kaldi data directory, or a
    JSONL manifest of another tool."""
    out: str
    """The manifest to write (audio paths relative to its folder; Kaldi segments cut into OUT's folder)."""
    format: Literal["auto", "folder", "librispeech", "kaldi", "lhotse", "hf", "jsonl"] = "auto"
    """The layout (auto: detected; a SOURCE that is no path is a Hugging Face hub id)."""
    fields: tuple[str, ...] = ()
    """jsonl, hf: column names as simslm=theirs, e.g. id=utt_id transcript=text words=word_alignment (words: a
    list of {word, start, end}, or in jsonl also the path of a word-timing JSON file)."""
    split: str = "train"
    """hf: the split to import."""
    untranscribed: bool = False
    """Keep audio that has no transcript as speech-only utterances (an empty transcript: Libri-Light's recordings,
    a folder of audio as slamkit's feature extraction reads it), for units and speech-only sequences; the stages
    that need words skip them. Default: skip and count them."""
    case: Literal["auto", "keep", "lower"] = "auto"
    """Transcripts' letter case (and their timed words'): lower, as slamkit's LibriSpeech helper
    (`utils/data_prep.py`, `parse_ls_text`) reads LibriSpeech's transcripts, which are all in capitals; keep, as
    written; auto: a LibriSpeech tree lowercased, any other layout kept (said when all its transcripts are in
    capitals). A text LM reads "THE" apart from "the": in capitals SmolLM2 takes twice the tokens a word and finds
    the words far less likely, so a TWIST model would not see its text as it learnt text."""

    def check(self) -> None:
        check_output_file(self, "out", "the manifest (a file)")
        check_not_input(self, "out", "source", "the file being imported, which the manifest would replace (with only "
                        "the lines it could import)")
        for item in self.fields:
            key, _, value = item.partition("=")
            if key not in ("id", "audio", "transcript", "speaker", "words") or not value:
                raise ConfigError(f"--fields takes id=, audio=, transcript=, speaker= or words= followed by a name, "
                                  f"not '{item}'")


@dataclass(frozen=True)
class ImportReport:
    """What an import kept and skipped."""

    manifest: str
    num_imported: int
    num_skipped: int
    skipped_by_reason: dict[str, int]
    audio_sec: float
    wall_sec: float
    case: str = "kept"  # what became of the transcripts' letter case: kept, lowercased, or kept in capitals
    num_timed: int = 0  # utterances imported with word timings


# The layouts whose import writes audio into a folder beside the manifest (Kaldi segments cut, hub bytes), and the
# record there of what they were imported from.
WRITES_AUDIO = ("kaldi", "hf")
IMPORT_SETTINGS = "settings.json"


def import_manifest(config: ImportManifestConfig) -> ImportReport:
    """Write a simslm manifest for a corpus in another layout; skip and count what cannot be used."""
    started = time.perf_counter()
    source, out = Path(config.source), Path(config.out)
    layout = detect_format(source) if config.format == "auto" else config.format
    if (layout != "hf" and not source.exists()) or (layout == "hf" and assets.missing_local_path(config.source)):
        raise ValueError(f"{source}: no such file or folder")
    segments_dir = out.parent / f"{out.stem}-{'audio' if layout == 'hf' else 'segments'}"
    new_folder = not out.parent.exists()
    if layout in WRITES_AUDIO:
        # Audio written by an earlier import is kept as it is (by utterance id): from another corpus or split it
        # would be another utterance's.
        held = segments_dir.is_dir() and any(p.name != IMPORT_SETTINGS for p in segments_dir.iterdir())
        storage.keep_settings(segments_dir / IMPORT_SETTINGS, {
            "source": config.source if layout == "hf" and not source.exists() else str(source.resolve()),
            "format": layout, "split": config.split}, made="imported",
            advice="import into another --out, or remove the folder", earlier_work=held)
    items = IMPORTERS[layout](source, fields=dict(item.split("=", 1) for item in config.fields),
                             segments_dir=segments_dir, split=config.split, untranscribed=config.untranscribed)
    skipped, seen, audio_sec = collections.Counter(), set(), 0.0
    lower = config.case == "lower" or (config.case == "auto" and layout == "librispeech")
    cases: set[str | None] = set()  # the letter cases of the transcripts imported (`text.letter_case`)
    timed = 0  # utterances imported with word timings

    def skip(item: Skip) -> None:
        """Counted by its reason, and the first few of each reason named when the item says what it was."""
        skipped[item.reason] += 1
        if item.detail and skipped[item.reason] <= REPEATS_NAMED:
            print(f"simslm manifest import: skipped {item.detail}", file=sys.stderr)

    def utterances() -> Iterator[Utterance]:
        """Streamed into the manifest (an import of Libri-Light's timed words would not fit in memory whole)."""
        nonlocal audio_sec, timed
        for item in jobs.progress(items, f"manifest import ({layout})", unit="item"):
            if isinstance(item, Candidate) and (storage.undecodable_name(item.audio)
                                                or storage.undecodable_name(item.id)):
                # One such name ended the whole import ("'utf-8' codec can't encode character '\udce9'").
                item = Skip(item.id, UNDECODABLE, f"{storage.shown_path(item.audio)}: {UNDECODABLE}")
            if isinstance(item, Skip):
                skip(item)
                continue
            if item.id in seen:
                skipped["repeated id"] += 1
                # Named, the first few: a.flac beside a.wav repeats an utterance, but a_b/c.flac and a/b_c.flac
                # are two that a folder's ids (the path, "/" made "_") cannot tell apart.
                if skipped["repeated id"] <= REPEATS_NAMED:
                    more = "; further ones are counted, not named" if skipped["repeated id"] == REPEATS_NAMED else ""
                    print(f"simslm manifest import: skipped {item.audio}: its id {item.id} is an earlier "
                          f"utterance's{more}", file=sys.stderr)
                continue
            try:
                sample_rate, duration = audio.audio_info(item.audio)
            except audio.AudioError as error:
                skipped[error.kind.value] += 1
                continue
            if lower:
                item = replace(item, transcript=item.transcript.lower(), words=item.words and tuple(
                    replace(word, word=word.word.lower()) for word in item.words))
            utterance = Utterance(id=item.id, audio=storage.portable_path(item.audio, out.parent)["relative"],
                                  sample_rate=sample_rate, duration_sec=round(duration, 3),
                                  transcript=item.transcript, speaker=item.speaker, words=item.words)
            # Timings that are not the transcript's words, or run past the audio, would make a manifest that
            # `manifest validate` refuses and every later stage skips: skipped here, where they are read.
            if problems := utterance.timing_problems():
                skip(Skip(item.id, problems[0].kind.value, f"{item.id}: {problems[0].message}"))
                continue
            seen.add(item.id)
            audio_sec += round(duration, 3)
            cases.add(text_lib.letter_case(item.transcript))
            timed += utterance.words is not None
            yield utterance
        if not seen:
            hint = "; --untranscribed keeps audio with none, as speech-only utterances" if any(
                "transcript" in reason or "no text" in reason for reason in skipped) else ""
            raise ValueError(f"{source}: nothing to import as {layout} ({dict(skipped) or 'no items found'}){hint}")

    stream = utterances()
    try:
        first = next(stream)  # an import of nothing ends here, before the manifest is written
    except ValueError:
        if segments_dir.is_dir() and {p.name for p in segments_dir.iterdir()} <= {IMPORT_SETTINGS}:
            shutil.rmtree(segments_dir)
            if new_folder:
                with contextlib.suppress(OSError):
                    out.parent.rmdir()
        raise
    write_manifest(out, itertools.chain([first], stream))
    in_capitals = cases - {None} == {"upper"}
    if in_capitals and config.case == "auto" and not lower:
        print(f"simslm manifest import: warning: {out}: every transcript is in capitals (LibriSpeech's are), which a "
              f"text LM reads apart from lower-case text; import with --case lower for a TWIST model's text",
              file=sys.stderr)
    return ImportReport(manifest=str(out), num_imported=len(seen), num_skipped=sum(skipped.values()),
                        skipped_by_reason=dict(skipped), audio_sec=round(audio_sec, 3),
                        wall_sec=round(time.perf_counter() - started, 3),
                        case="lowercased" if lower else "kept in capitals" if in_capitals else "kept",
                        num_timed=timed)
