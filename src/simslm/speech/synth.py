"""Synthetic speech: a text corpus to 16 kHz audio plus a manifest with word timings.

This is the offline counterpart of the paper's sTinyStories (TinyStories read by a TTS
system). Each line of the corpus becomes one utterance spoken by a voice drawn from a
named voice set; word timings come from the TTS engine's own events (`simslm.espeak`).
The job runs on all cores, resumes where it stopped, and skips and counts lines it
cannot speak. A line's audio depends on the line, the seed and the voice set alone, not on
the number of workers or the order they take lines in (`simslm.speech.espeak`).
"""

from __future__ import annotations

import collections
import enum
import operator
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import soxr

from simslm import assets, jobs, machine, storage
from simslm.config import Config, check_positive, registry_choices
from simslm.speech import audio
from simslm.speech import text as text_lib
from simslm.speech.corpus import read_corpus, split_corpus_spec
from simslm.speech.manifest import Utterance, Word, write_manifest


@dataclass(frozen=True, kw_only=True)
class VoicePreset:
    """One synthetic speaker: an engine voice and the ranges its pitch and rate are drawn from."""

    name: str
    voice: str
    pitch: tuple[int, int] = (40, 60)
    """espeak-ng base pitch, 0-100 (50 = the voice's default)."""
    rate_wpm: tuple[int, int] = (160, 185)
    """Speaking rate in words per minute (espeak-ng's default is 175)."""


def _male(name: str, voice: str) -> VoicePreset:
    return VoicePreset(name=name, voice=voice, pitch=(35, 55))


def _female(name: str, voice: str) -> VoicePreset:
    return VoicePreset(name=name, voice=voice, pitch=(55, 80))


# Speakers are espeak-ng accents (gmw voices; "en" is British English) crossed with its
# voice variants (+m1.. male, +f1.. female). `heldout` shares no accent-variant pair, and
# no variant, with `train`, so multi-speaker benchmarks built with it hear voices never
# used in training. The West
# Midlands accent (en-gb-x-gbcwmd) is left out: it drops /h/ and merges words in ways
# whose timings could not be recovered for 70 of ~75 stories (docs/LOG.md).
VOICE_SETS: dict[str, tuple[VoicePreset, ...]] = {
    "single": (VoicePreset(name="us", voice="en-us", pitch=(50, 50), rate_wpm=(175, 175)),),
    "train": (
        _male("us-m1", "en-us+m1"), _female("us-f2", "en-us+f2"),
        _male("gb-m3", "en+m3"), _female("gb-f1", "en+f1"),
        _male("rp-m2", "en-gb-x-rp+m2"), _female("rp-f3", "en-gb-x-rp+f3"),
        _male("nyc-m4", "en-us-nyc+m4"), _female("lancaster-f4", "en-gb-x-gbclan+f4"),
    ),
    "heldout": (
        _male("scotland-m5", "en-gb-scotland+m5"), _female("caribbean-f5", "en-029+f5"),
        _male("caribbean-m6", "en-029+m6"), _male("us-m7", "en-us+m7"),
    ),
}


class EspeakBackend:
    """espeak-ng through its C API; word timings from its mark and phoneme events."""

    name = "espeak-ng"

    def speak(self, transcript: str, voice: str, pitch: int, rate_wpm: int) -> tuple[np.ndarray, int, list]:
        from simslm.speech import espeak

        return espeak.speak(transcript, voice=voice, pitch=pitch, rate_wpm=rate_wpm)

    def speak_phonemes(self, mnemonics: str, voice: str, pitch: int, rate_wpm: int) -> tuple[np.ndarray, int]:
        from simslm.speech import espeak

        return espeak.speak_phonemes(mnemonics, voice=voice, pitch=pitch, rate_wpm=rate_wpm)


TTS_BACKENDS: dict[str, Callable[[], Any]] = {"espeak-ng": EspeakBackend}


@dataclass(frozen=True, kw_only=True)
class SynthConfig(Config):
    """What `simslm synth` does."""

    renamed: ClassVar[dict[str, str]] = {"out_dir": "out"}

    out: str
    """Output folder: audio/ (a folder per 10,000 lines of the corpus), manifest.jsonl, synth_report.json,
    synth_settings.json."""
    corpus: str = "tinystories-sample"
    """Asset name or path of a .jsonl (one object per line) or .txt (one text per line) file;
    name[start:stop] takes a slice of its lines."""
    text_field: str = "text"
    """Field holding the text in a .jsonl corpus."""
    voice_set: str = field(default="train", metadata=registry_choices(VOICE_SETS))
    """Named voice set to draw a speaker from for each line."""
    seed: int = 0
    """Seed of the per-line speaker, pitch and rate choice."""
    offset: int = 0
    """First corpus line to speak (0-based)."""
    limit: int | None = None
    """Speak at most this many lines (all when unset)."""
    id_prefix: str = ""
    """Utterance ids are <prefix>-<line:06d>; default: the corpus file's stem."""
    audio_format: Literal["flac", "wav"] = "flac"
    """Audio files to write (16-bit PCM, 16 kHz mono either way)."""
    backend: str = field(default="espeak-ng", metadata=registry_choices(TTS_BACKENDS))
    """TTS backend."""
    num_workers: int = 0
    """Worker processes; 0 = one per core."""

    def check(self) -> None:
        check_positive(self, "offset", "limit", "num_workers", allow_zero=True)


@dataclass(frozen=True)
class SynthReport:
    """What a synthesis run did (also written to synth_report.json)."""

    manifest: str
    num_lines: int
    num_synthesized: int
    num_reused: int
    num_skipped: int
    skipped_by_reason: dict[str, int]
    audio_sec: float
    wall_sec: float

    @property
    def realtime_factor(self) -> float:
        """Seconds of new audio per wall-clock second."""
        return self.audio_sec / self.wall_sec if self.wall_sec > 0 else float("inf")


def choose_speaker(voice_set: tuple[VoicePreset, ...], seed: int, line_index: int) -> tuple[VoicePreset, int, int]:
    """Speaker, pitch and rate for one line: a pure function of (seed, line index)."""
    rng = np.random.default_rng([seed, line_index])
    preset = voice_set[int(rng.integers(len(voice_set)))]
    pitch = int(rng.integers(preset.pitch[0], preset.pitch[1] + 1))
    rate = int(rng.integers(preset.rate_wpm[0], preset.rate_wpm[1] + 1))
    return preset, pitch, rate


# Lines whose audio shares a folder of audio/: a corpus of millions of lines (TinyStories' 2.1M stories) in one folder
# is slow to list on any file system, and past about 10M entries ext4 refuses more (its index is two levels deep).
FILES_PER_FOLDER = 10_000


def synth_task(utterance_id: str, text: str, voice_set: str, seed: int, line: int, out_dir: str | os.PathLike, *,
               backend: str = "espeak-ng", audio_format: str = "flac", folder: str = "audio",
               phonemes: str = "") -> dict[str, Any]:
    """One line to speak, with the speaker that (seed, line) picks from the voice set: a `synthesize_one` task
    writing `out_dir/folder/<id>.<audio_format>`. With `phonemes` (the backend's own phoneme names), those are
    spoken, and `text` is only the transcript: one word, timed over the whole audio."""
    preset, pitch, rate = choose_speaker(VOICE_SETS[voice_set], seed, line)
    return {"id": utterance_id, "line": line, "text": text, "voice": preset.voice,
            "speaker": f"{voice_set}/{preset.name}", "pitch": pitch, "rate_wpm": rate, "backend": backend,
            "audio_format": audio_format, "out_dir": str(out_dir), "folder": folder, "phonemes": phonemes}


class SynthSkip(str, enum.Enum):
    """Why a corpus line gives no utterance (the report counts skips by these)."""

    NO_WORDS = "no words to speak"
    NO_AUDIO = "the TTS engine produced no audio"
    ENGINE_FAILED = "the TTS engine failed"


def _skipped(utterance_id: str, reason: SynthSkip, detail: str = "") -> dict[str, Any]:
    return {"id": utterance_id, "skipped": reason.value + (f": {detail}" if detail else ""), "reason": reason.value}


def synthesize_one(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: speak one line, write its audio atomically, return its manifest record.

    A line the engine fails on is skipped and counted; a failure to write its audio (a full disk, a quota, a file
    size limit) stops the job, naming the file: counted as the engine's, it skipped every line after it, and the
    job ended as if done, its manifest short of them."""
    utterance_id = task["id"]
    try:
        transcript = text_lib.speakable(task["text"])
        if not text_lib.has_words(transcript):
            return _skipped(utterance_id, SynthSkip.NO_WORDS)
        backend = TTS_BACKENDS[task["backend"]]()
        if task.get("phonemes"):
            samples, sample_rate = backend.speak_phonemes(task["phonemes"], task["voice"], task["pitch"],
                                                          task["rate_wpm"])
            timings = [(transcript, 0.0, len(samples) / sample_rate)]
        else:
            samples, sample_rate, timings = backend.speak(transcript, task["voice"], task["pitch"], task["rate_wpm"])
    except Exception as error:  # one bad line must not stop a corpus-sized job
        return _skipped(utterance_id, SynthSkip.ENGINE_FAILED, f"{type(error).__name__}: {error}"[:300])
    if len(samples) == 0:
        return _skipped(utterance_id, SynthSkip.NO_AUDIO)
    waveform = samples.astype(np.float32) / 32768.0
    if sample_rate != audio.TARGET_SAMPLE_RATE:
        waveform = soxr.resample(waveform, sample_rate, audio.TARGET_SAMPLE_RATE, quality="HQ")
    relative = f"{task['folder']}/{utterance_id}.{task['audio_format']}"
    audio.write_audio(Path(task["out_dir"]) / relative, waveform)
    duration = len(waveform) / audio.TARGET_SAMPLE_RATE
    words = tuple(Word(word=w, start_sec=round(s, 4), end_sec=round(min(e, duration), 4)) for w, s, e in timings)
    utterance = Utterance(id=utterance_id, audio=relative, sample_rate=audio.TARGET_SAMPLE_RATE,
                          duration_sec=round(duration, 4), transcript=transcript, speaker=task["speaker"],
                          words=words, meta={"tts": task["backend"], "voice": task["voice"],
                                             "pitch": task["pitch"], "rate_wpm": task["rate_wpm"],
                                             "source_line": task["line"],
                                             **({"phonemes": task["phonemes"]} if task.get("phonemes") else {})})
    return utterance.to_json()


LOCK_FILE = ".synth.lock"
SETTINGS_FILE = "synth_settings.json"


def synthesize_corpus(config: SynthConfig) -> SynthReport:
    """Speak a text corpus into `config.out`; resumable, parallel, skips bad lines."""
    if config.voice_set not in VOICE_SETS:
        raise ValueError(f"unknown voice set '{config.voice_set}'; known: {', '.join(VOICE_SETS)}")
    if config.backend not in TTS_BACKENDS:
        raise ValueError(f"unknown TTS backend '{config.backend}'; known: {', '.join(TTS_BACKENDS)}")
    if config.audio_format not in ("flac", "wav"):
        raise ValueError(f"audio_format must be flac or wav, not '{config.audio_format}'")
    named = split_corpus_spec(config.corpus)[0]
    corpus = assets.resolve_file(named)
    out_dir = Path(config.out)
    prefix = config.id_prefix or corpus.stem
    journal = jobs.Journal(out_dir / "manifest.partial.jsonl")
    done = {key: record for key, record in journal.read().items() if "skipped" not in record}
    # What decides a line's audio, beside its text: the lines spoken before are reused, so other values are refused.
    # (--offset and --limit only choose lines: a larger --limit speaks the new ones.)
    # A file by its absolute path (not by one from where this runs), an asset by its name.
    settings = {"corpus": str(Path(named).resolve()) if Path(named).exists() else named, "text_field": config.text_field,
                "voice_set": config.voice_set, "seed": config.seed, "backend": config.backend,
                "audio_format": config.audio_format}
    if done or (out_dir / SETTINGS_FILE).exists():
        storage.keep_settings(out_dir / SETTINGS_FILE, settings, made="spoken",
                              advice="synthesise into another --out, or remove it", earlier_work=bool(done))

    started = time.perf_counter()
    skipped: collections.Counter[str] = collections.Counter()
    order: list[str] = []
    num_reused = 0
    tasks = []
    stop = None if config.limit is None else config.offset + config.limit
    for index, value, problem in read_corpus(config.corpus, config.text_field):
        if index < config.offset:
            continue
        if stop is not None and index >= stop:
            break
        utterance_id = f"{prefix}-{index:06d}"
        order.append(utterance_id)
        if value is None:
            skipped[problem] += 1
            continue
        if utterance_id in done and (out_dir / done[utterance_id]["audio"]).exists():
            num_reused += 1
            continue
        done.pop(utterance_id, None)  # recorded, but its audio is gone: speak it again
        tasks.append(synth_task(utterance_id, value, config.voice_set, config.seed, index, out_dir,
                                backend=config.backend, audio_format=config.audio_format,
                                folder=f"audio/{index // FILES_PER_FOLDER:04d}"))
    if not tasks and not any(key in done for key in order):
        asked = f" in {config.corpus}" if str(corpus) != config.corpus else ""  # an asset's name, a slice
        raise ValueError(f"{corpus}: no text to synthesise{asked} ({dict(skipped) or 'no lines in the range asked for'})")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Two runs into one folder would both speak the lines left and append to one journal: the second is refused.
    with storage.exclusive_lock(out_dir / LOCK_FILE, f"{out_dir}: another `simslm synth` is writing it"):
        storage.write_json(out_dir / SETTINGS_FILE, settings)
        audio_sec = 0.0
        num_workers = config.num_workers or machine.default_workers()
        # A line whose speaking ends the process (a crash inside espeak-ng) is named by the next run, then skipped.
        ended = jobs.TaskJournal(out_dir / ".synth.running", key=operator.itemgetter("id"),
                                 skipped=lambda task, reason: {"id": task["id"], "skipped": reason, "reason": reason})
        for record in jobs.parallel_map(synthesize_one, tasks, num_workers=min(num_workers, max(1, len(tasks))),
                                        total=len(tasks), description="synth", journal=ended):
            journal.append(record)
            if "skipped" in record:
                skipped[record.get("reason", SynthSkip.ENGINE_FAILED.value)] += 1
            else:
                done[record["id"]] = record
                audio_sec += record["duration_sec"]
        if not any(key in done for key in order):
            raise ValueError(f"{corpus}: no line could be synthesised ({dict(skipped)}); see "
                             f"{journal.path} for each reason")
        manifest_path = out_dir / "manifest.jsonl"
        write_manifest(manifest_path, (Utterance.from_json(done[key]) for key in order if key in done))
        # The manifest lists the lines asked for; a folder spoken in ranges (--offset 0, then --offset 1000) held
        # the first range's utterances, which it silently dropped.
        asked = set(order)
        outside = sum(1 for key in done if key not in asked)
        if outside:
            print(f"simslm synth: warning: {manifest_path} lists the {len(order)} line(s) asked for (--offset "
                  f"{config.offset}, --limit {config.limit}); {outside} other utterance(s) spoken into {out_dir} "
                  f"before are not in it (their audio is kept: a range holding them lists them again)",
                  file=sys.stderr)
        report = SynthReport(manifest=str(manifest_path), num_lines=len(order),
                             num_synthesized=sum(1 for task in tasks if task["id"] in done),
                             num_reused=num_reused, num_skipped=sum(skipped.values()),
                             skipped_by_reason=dict(skipped), audio_sec=round(audio_sec, 3),
                             wall_sec=round(time.perf_counter() - started, 3))
        storage.write_json(out_dir / "synth_report.json", {**asdict(report), "config": asdict(config),
                                                           "realtime_factor": round(report.realtime_factor, 1)})
        return report
