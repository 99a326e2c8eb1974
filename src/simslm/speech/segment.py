"""Long recordings cut into utterances at pauses: `simslm segment`.

Libri-Light-style recordings last hours; every later stage reads one utterance as one
file. A recording is cut into segments of at most `--max-sec` seconds, always between two
stretches of speech, never inside one:

- with word timings (from an importer or `simslm align`), the stretches are the words: every
  word lies whole inside one segment, and its timings are shifted to the segment's start;
- without them, a voice-activity detector finds the stretches: Silero VAD (the `silero-vad`
  package, MIT, maintained, its model inside the wheel, needing only torch), whose own
  `max_speech_duration_s` splits speech longer than a segment at its longest inner pause.

`--by librilight-vad` cuts as Libri-Light's own `data_preparation/cut_by_vad.py` does, the
segmenting step its data preparation prescribes (slamkit's data preparation keys its Libri-Light
files by a `librilight-vad` folder; which target it cut to is not said there): the `voice_activity` of the
JSON beside each recording (Libri-Light ships one per file) is taken in order, and its stretches
are joined, the silence between them dropped, until the next would take a piece past `--max-sec`
of speech (a stretch longer than that alone is a piece of its own); each stretch's samples run from
`int(onset * 16000)` to `int(offset * 16000)`, as there. `--min-sec` and `--margin-sec` do not apply.

Between stretches the cut goes at the longest pause that still leaves the segment at least
`--min-sec` long (so segments are long and cuts fall in real pauses, not the first breath);
a segment keeps at most `--margin-sec` of the silence on either side of its speech, and
longer silences are dropped.

A recording cut into several segments without word timings cannot divide its transcript:
its segments are written untranscribed (transcript "", as speech-only corpora such as
Libri-Light are) and counted, so the report says how many; align such recordings first to
keep their text.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from simslm import jobs, machine, storage
from simslm.config import Config, ConfigError, check_not_input, check_output_file, check_positive
from simslm.speech import audio
from simslm.speech.manifest import Utterance, Word, iter_utterances, manifest_folder, write_manifest

TRANSCRIPT_DROPPED = "transcript dropped (cut without word timings; align it first to keep it)"


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(Config):
    """What `simslm segment` does."""

    manifest: str
    """Manifest of the long recordings."""
    out: str
    """The segments' manifest; their audio goes to <OUT's folder>/<OUT's stem>-segments/, a folder per recording."""
    max_sec: float = 20.0
    """Longest segment, in seconds."""
    min_sec: float | None = None
    """Prefer cuts leaving segments at least this long (default: half of --max-sec)."""
    margin_sec: float = 0.2
    """Silence kept before and after a segment's speech, at most (and at most half the pause)."""
    by: Literal["auto", "words", "vad", "librilight-vad"] = "auto"
    """What finds the pauses: words (word timings), vad (Silero VAD), auto (words when a recording has them), or
    librilight-vad (the voice activity in the Libri-Light JSON beside each recording, its stretches joined with the
    silence between them dropped, as Libri-Light's cut_by_vad.py cuts: use --max-sec 60, its default, for its
    cut)."""
    vad_threshold: float = 0.5
    """vad: speech probability above which a frame is speech (Silero's default)."""
    vad_min_silence_sec: float = 0.3
    """vad: a pause shorter than this does not end a stretch of speech."""
    num_workers: int = 0
    """Worker processes; 0 = one per core."""

    def check(self) -> None:
        check_output_file(self, "out", "the segments' manifest (a file)")
        # `align` adds to a manifest in place; this cuts it.
        check_not_input(self, "out", "manifest", "the manifest being cut, where --out names the segments' manifest: "
                                                 "the recordings' would be replaced by it")
        check_positive(self, "max_sec", "vad_min_silence_sec")
        check_positive(self, "margin_sec", "num_workers", allow_zero=True)
        if not 0 < self.vad_threshold < 1:
            raise ConfigError(f"--vad-threshold must be between 0 and 1, not {self.vad_threshold}")
        if self.by != "librilight-vad" and self.max_sec <= 2 * self.margin_sec:  # it keeps no margins
            raise ConfigError(f"--max-sec {self.max_sec} leaves no room for speech between margins of "
                              f"--margin-sec {self.margin_sec}")
        if self.min_sec is not None and not 0 <= self.min_sec <= self.max_sec:
            raise ConfigError(f"--min-sec must be between 0 and --max-sec ({self.max_sec}), not {self.min_sec}")


def plan_segments(stretches: list[tuple[float, float]], duration: float, *, max_sec: float, min_sec: float,
                  margin_sec: float) -> list[tuple[float, float, int, int]]:
    """Cut sorted speech stretches (start, end) into segments: (start, end, first stretch, stretch after the last).

    No stretch is ever split. A single stretch longer than `max_sec` becomes a segment of its own, longer than
    asked; the caller counts it.
    """
    segments, first = [], 0
    while first < len(stretches):
        start = stretches[first][0]
        # The stretches that fit after `first` with a margin on either side (at least one, whatever its length).
        last = first
        while last + 1 < len(stretches) and stretches[last + 1][1] - start + 2 * margin_sec <= max_sec:
            last += 1
        if last + 1 < len(stretches):
            # Cut after the stretch followed by the longest pause, among those leaving a segment of min_sec or more
            # (all of them when none does); a later cut wins a tie, for longer segments. Pauses are compared to the
            # microsecond: two pauses of 0.1 s between times of 10 ms steps differ by 1e-16 as floats.
            candidates = [k for k in range(first, last + 1) if stretches[k][1] - start + 2 * margin_sec >= min_sec]
            candidates = candidates or list(range(first, last + 1))
            last = max(candidates, key=lambda k: (round(stretches[k + 1][0] - stretches[k][1], 6), k))
        segments.append((first, last + 1))
        first = last + 1
    # Margins: at most margin_sec of silence, and at most half the pause shared with a neighbour.
    planned = []
    for first, stop in segments:
        before = stretches[first][0] - (stretches[first - 1][1] if first else 0.0)
        after = (stretches[stop][0] if stop < len(stretches) else duration) - stretches[stop - 1][1]
        before = before / 2 if first else before
        after = after / 2 if stop < len(stretches) else after
        start = stretches[first][0] - min(margin_sec, max(0.0, before))
        end = stretches[stop - 1][1] + min(margin_sec, max(0.0, after))
        planned.append((max(0.0, start), min(duration, end), first, stop))
    return planned


_vad_model: Any = None


def speech_stretches(samples: np.ndarray, config: SegmentConfig) -> list[tuple[float, float]]:
    """Silero VAD's speech stretches (seconds) of 16 kHz samples, none longer than a segment's speech."""
    global _vad_model
    import torch

    threads = torch.get_num_threads()
    try:
        import silero_vad
    except ImportError:
        raise ValueError("cutting without word timings needs the Silero VAD: pip install 'simslm[vad]' "
                         "(or use --by words on recordings with word timings)") from None
    torch.set_num_threads(threads)  # importing silero_vad sets torch to one thread for the whole process
    if _vad_model is None:
        with warnings.catch_warnings():  # silero-vad 6.2 loads with torch.jit and importlib's path(), both deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            _vad_model = silero_vad.load_silero_vad()  # the model file inside the installed package, no download
    stretches = silero_vad.get_speech_timestamps(
        torch.from_numpy(samples), _vad_model, sampling_rate=audio.TARGET_SAMPLE_RATE, threshold=config.vad_threshold,
        min_silence_duration_ms=round(config.vad_min_silence_sec * 1000),
        max_speech_duration_s=config.max_sec - 2 * config.margin_sec)
    return [(s["start"] / audio.TARGET_SAMPLE_RATE, s["end"] / audio.TARGET_SAMPLE_RATE) for s in stretches]


def librilight_voice_activity(audio_path: str | os.PathLike) -> list[tuple[float, float]]:
    """The `voice_activity` (onset, offset in seconds) of the Libri-Light JSON beside a recording's audio (same
    stem); a ValueError saying what is missing or wrong."""
    meta = Path(audio_path).with_suffix(".json")
    if not meta.is_file():
        raise ValueError("no Libri-Light JSON (voice_activity) beside the audio")
    try:
        stretches = [(float(onset), float(offset)) for onset, offset in storage.read_json(meta)["voice_activity"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError("its JSON has no voice_activity of [onset, offset] pairs") from None
    if any(not 0 <= onset < offset for onset, offset in stretches):
        raise ValueError("its JSON's voice_activity has a stretch that is not an interval")
    return stretches


def stitch_voice_activity(stretches: list[tuple[float, float]], max_sec: float) -> list[tuple[int, int]]:
    """Libri-Light's `cut_by_vad.py` grouping: (first, stop) of the stretches each piece joins. A piece closes when
    the next stretch would take its speech (the sum of its stretches' lengths, in seconds as the JSON gives them)
    past `max_sec`; a piece holding nothing yet takes the next stretch however long."""
    pieces, first, speech_sec = [], 0, 0.0
    for index, (onset, offset) in enumerate(stretches):
        if speech_sec > 0 and speech_sec + (offset - onset) > max_sec:
            pieces.append((first, index))
            first, speech_sec = index, 0.0
        speech_sec += offset - onset
    if first < len(stretches):
        pieces.append((first, len(stretches)))
    return pieces


def _librilight_pieces(samples: np.ndarray, stretches: list[tuple[float, float]], max_sec: float
                       ) -> Iterator[tuple[np.ndarray, list[tuple[float, float]]]]:
    """Each piece's samples (its stretches' samples joined) and the stretches it joins."""
    rate = audio.TARGET_SAMPLE_RATE
    for first, stop in stitch_voice_activity(stretches, max_sec):
        joined = stretches[first:stop]
        # int(), not round(): where Libri-Light's script starts and ends each stretch.
        yield np.concatenate([samples[int(onset * rate):int(offset * rate)] for onset, offset in joined]), joined


def _segment_recording(task: tuple[Utterance, str, str, SegmentConfig, int]) -> dict[str, Any]:
    """Cut one recording into its folder (written whole or not at all): its segments as manifest lines, or a skip."""
    utterance, audio_path, folder, config, num_workers = task
    machine.share_cores(num_workers)
    folder = Path(folder)
    done = folder / "segments.json"
    if done.exists():  # cut by an earlier, interrupted run
        return storage.read_json(done)
    by = config.by if config.by != "auto" else ("words" if utterance.words else "vad")
    if by == "librilight-vad":
        return _librilight_recording(utterance, audio_path, folder, config)
    if by == "words" and not utterance.words:
        return {"id": utterance.id, "skipped": "no word timings (--by words)"}
    if by == "words" and utterance.timing_problems():
        return {"id": utterance.id, "skipped": utterance.timing_problems()[0].kind.value}
    try:
        samples = audio.load_audio(audio_path)
        duration = len(samples) / audio.TARGET_SAMPLE_RATE
        stretches = ([(w.start_sec, w.end_sec) for w in utterance.words] if by == "words"
                     else speech_stretches(samples, config))
    except audio.AudioError as error:
        return {"id": utterance.id, "skipped": error.kind.value}
    if not stretches:
        return {"id": utterance.id, "skipped": "no speech found"}
    min_sec = config.max_sec / 2 if config.min_sec is None else config.min_sec
    planned = plan_segments(stretches, duration, max_sec=config.max_sec, min_sec=min_sec,
                            margin_sec=config.margin_sec)
    pieces = []
    for start, end, first, stop in planned:
        words = None
        if by == "words":
            words = tuple(Word(word=w.word, start_sec=round(w.start_sec - start, 3),
                               end_sec=round(w.end_sec - start, 3)) for w in utterance.words[first:stop])
            transcript = " ".join(w.word for w in words)
        else:
            transcript = utterance.transcript if len(planned) == 1 else ""
        piece = samples[round(start * audio.TARGET_SAMPLE_RATE):round(end * audio.TARGET_SAMPLE_RATE)]  # a view
        pieces.append((piece, end - start, {
            "transcript": transcript, "words": words,
            "meta": {**utterance.meta, "recording": utterance.id, "start_sec": round(start, 3),
                     "end_sec": round(end, 3), "cut_by": "word timings" if by == "words" else "silero-vad"}}))
    # Word timings give each segment its own words; a VAD cut of a transcribed recording into several cannot.
    return _write_recording(utterance, folder, pieces, duration, config.max_sec,
                            transcript_dropped=by == "vad" and len(planned) > 1 and bool(utterance.transcript))


def _librilight_recording(utterance: Utterance, audio_path: str, folder: Path, config: SegmentConfig
                          ) -> dict[str, Any]:
    """`_segment_recording` by the recording's Libri-Light voice activity (`stitch_voice_activity`)."""
    try:
        stretches = librilight_voice_activity(audio_path)
        samples = audio.load_audio(audio_path)
    except ValueError as error:  # AudioError is one
        return {"id": utterance.id, "skipped": error.kind.value if isinstance(error, audio.AudioError) else str(error)}
    if not stretches:
        return {"id": utterance.id, "skipped": "no speech found"}
    if int(max(onset for onset, _ in stretches) * audio.TARGET_SAMPLE_RATE) >= len(samples):
        # Another file's JSON (a renamed or re-encoded file): the script would write its stretches past the end as
        # empty or cut pieces without a word. One that only runs a little past the end is cut there, as it is.
        return {"id": utterance.id, "skipped": "its JSON's voice_activity starts past the end of the audio"}
    joined_pieces = list(_librilight_pieces(samples, stretches, config.max_sec))
    # The silence between its stretches is gone, so word timings would not fit a piece: a single piece keeps the
    # transcript, as the other cuts do, and no timings.
    pieces = [(piece, sum(offset - onset for onset, offset in joined), {
        "transcript": utterance.transcript if len(joined_pieces) == 1 else "", "words": None,
        "meta": {**utterance.meta, "recording": utterance.id, "start_sec": joined[0][0], "end_sec": joined[-1][1],
                 "cut_by": "librilight-vad", "voice_activity": joined}}) for piece, joined in joined_pieces]
    return _write_recording(utterance, folder, pieces, len(samples) / audio.TARGET_SAMPLE_RATE, config.max_sec,
                            transcript_dropped=len(pieces) > 1 and bool(utterance.transcript))


def _write_recording(utterance: Utterance, folder: Path, pieces: list[tuple[np.ndarray, float, dict[str, Any]]],
                     audio_sec: float, max_sec: float, *, transcript_dropped: bool) -> dict[str, Any]:
    """A recording's segments written into its folder, whole or not at all, segments.json (read back at the end)
    last. Each piece is (its samples, written as `NNNN.flac`; the seconds of speech it holds, checked against
    --max-sec; its manifest line's transcript, words and meta)."""
    lines, notes = [], collections.Counter()
    with storage.atomic_path(folder) as building:
        building.mkdir(parents=True)
        for number, (piece, speech_sec, fields) in enumerate(pieces):
            name = f"{number:04d}.flac"  # inside the recording's own folder
            audio.write_audio(building / name, piece)
            if speech_sec > max_sec + 1e-6:
                notes["segments over --max-sec (one word or stretch alone is longer)"] += 1
            lines.append(Utterance(
                id=f"{utterance.id}-{number:04d}", audio=f"{folder.name}/{name}", sample_rate=audio.TARGET_SAMPLE_RATE,
                duration_sec=round(len(piece) / audio.TARGET_SAMPLE_RATE, 3), speaker=utterance.speaker,
                **fields).to_json())
        if transcript_dropped:
            notes[TRANSCRIPT_DROPPED] += 1
        result = {"id": utterance.id, "segments": lines, "notes": dict(notes), "audio_sec": audio_sec}
        storage.write_json(building / "segments.json", result)
    return result


@dataclass(frozen=True)
class SegmentReport:
    """What `simslm segment` wrote and skipped."""

    manifest: str
    num_recordings: int
    num_segments: int
    num_skipped: int
    skipped_by_reason: dict[str, int]
    notes: dict[str, int]
    audio_sec: float
    wall_sec: float


# What decides where a recording is cut: a folder of segments cut with other values is not reused.
CUT_SETTINGS = ("max_sec", "min_sec", "margin_sec", "by", "vad_threshold", "vad_min_silence_sec")


def _check_settings(segments_dir: Path, config: SegmentConfig) -> None:
    """The cut's settings, recorded in the segments folder: a folder cut with others is refused, since its
    recordings, done, would be taken as they are, and the manifest would keep the old cut."""
    settings = {name: getattr(config, name) for name in CUT_SETTINGS}
    settings["min_sec"] = config.max_sec / 2 if config.min_sec is None else config.min_sec
    if config.by == "librilight-vad":  # its cut reads --max-sec alone: the others would refuse a resume for nothing
        settings = {"max_sec": config.max_sec, "by": config.by}
    storage.keep_settings(segments_dir / "settings.json", settings, made="cut",
                          advice="cut into another --out, or remove the folder",
                          earlier_work=any(segments_dir.glob("*/segments.json")))


def segment_manifest(config: SegmentConfig) -> SegmentReport:
    """Cut every recording of a manifest; resumable recording by recording, the manifest written last.

    The manifest is streamed and each recording's segments are read back from its folder at the end, so memory
    holds the ids of the recordings cut, not the corpus."""
    started = time.perf_counter()
    source, out = Path(config.manifest), Path(config.out)
    num_recordings = sum(1 for _ in iter_utterances(source))  # a malformed line is named before any cutting
    segments_dir = out.parent / f"{out.stem}-segments"
    # Two runs into one folder would cut the same recordings at once and both write the manifest: the second is
    # refused.
    with storage.exclusive_lock(segments_dir / ".segment.lock", f"{out}: another `simslm segment` is writing it"):
        return _segment_all(config, source, out, segments_dir, num_recordings, started)


def _remove_if_empty(segments_dir: Path, deaths: Path) -> None:
    """The segments folder of a run that cut nothing, unless it holds recordings cut before or what the task
    journal keeps against a recording (removed, a recording that ended its process twice would end two runs
    more)."""
    if not any(segments_dir.glob("*/segments.json")) and not deaths.exists():
        shutil.rmtree(segments_dir, ignore_errors=True)


def _segment_all(config: SegmentConfig, source: Path, out: Path, segments_dir: Path, num_recordings: int,
                 started: float) -> SegmentReport:
    """`segment_manifest`'s work, under its lock."""
    _check_settings(segments_dir, config)
    workers = min(config.num_workers or machine.default_workers(), max(1, num_recordings))
    folder = manifest_folder(source)
    tasks = ((u, str(u.audio_path(folder)), str(segments_dir / storage.safe_file_name(u.id)), config, workers)
             for u in iter_utterances(source))
    cut, skipped, notes, audio_sec = set(), collections.Counter(), collections.Counter(), 0.0
    try:
        # A recording whose cutting ends the process (an hour of audio under a job's memory limit) is named by the
        # next run, then skipped.
        ended = jobs.TaskJournal(segments_dir / ".segment.running", key=lambda task: task[0].id,
                                 skipped=lambda task, reason: {"id": task[0].id, "skipped": reason})
        for result in jobs.parallel_map(_segment_recording, tasks, num_workers=workers, total=num_recordings,
                                        description="segment", journal=ended):
            if "skipped" in result:
                skipped[result["skipped"]] += 1
            else:
                cut.add(result["id"])
                notes.update(result["notes"])
                audio_sec += result["audio_sec"]
    except ValueError:
        _remove_if_empty(segments_dir, ended.path)
        raise
    if not cut:
        _remove_if_empty(segments_dir, ended.path)
        raise ValueError(f"{source}: no recording could be cut ({dict(skipped)})")
    # Audio paths in segments.json are relative to the segments folder; in the manifest, to its own folder.
    prefix = storage.portable_path(segments_dir, out.parent)["relative"]
    num_segments = 0

    def segments() -> Iterator[Utterance]:
        nonlocal num_segments
        for recording in iter_utterances(source):
            if recording.id in cut:
                for line in storage.read_json(segments_dir / storage.safe_file_name(recording.id) / "segments.json")[
                        "segments"]:
                    num_segments += 1
                    yield Utterance.from_json({**line, "audio": f"{prefix}/{line['audio']}"})

    write_manifest(out, segments())
    if notes.get(TRANSCRIPT_DROPPED):
        print(f"[segment] {notes[TRANSCRIPT_DROPPED]} recording(s) cut without word timings are written "
              f"untranscribed; run `simslm align` on them first to keep their text", file=sys.stderr)
    return SegmentReport(manifest=str(out), num_recordings=num_recordings, num_segments=num_segments,
                         num_skipped=sum(skipped.values()), skipped_by_reason=dict(skipped), notes=dict(notes),
                         audio_sec=round(audio_sec, 3), wall_sec=round(time.perf_counter() - started, 3))
