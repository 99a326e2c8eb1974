"""Benchmark audio -> units with a run's own encoder and codebook, cached per codebook."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from simslm import storage
from simslm.eval.layouts import Pair
from simslm.model import model_unit_source
from simslm.sequences.build import speech_units_folder
from simslm.units import kmeans
from simslm.units.encoders import EncoderSpec
from simslm.units.extract import ExtractConfig, codebook_encoder, extract_units
from simslm.units.folder import UnitSource, deduplicate, read_units, unit_source, units_complete


def run_unit_source(run_dir: Path, speech_units: str | None = None) -> UnitSource:
    """The encoder and codebook a model's speech tokens come from.

    From `speech_units` (a `simslm units extract` folder) when given; else what the model folder
    records (`simslm train` writes it there, codebook included); else, for a run folder whose
    model is not written yet, its training data's units.
    """
    run_dir = Path(run_dir)
    model_dir = run_dir / "model" if (run_dir / "plan.json").exists() else run_dir
    recorded = model_unit_source(model_dir)
    if speech_units:
        given = unit_source(speech_units)
        _check_speech_units(speech_units, given, run_dir, model_dir, recorded)
        return given
    if recorded is not None:
        _check_recorded_units(run_dir, model_dir, recorded)
        return recorded
    if (run_dir / "plan.json").exists():
        from simslm.train.plan import placed_input

        units = speech_units_folder(placed_input(run_dir, storage.read_json(run_dir / "config.json"), "data"))
        if not units:
            raise ValueError(f"{run_dir}: its training data has no speech units, so it cannot score speech")
        return unit_source(units)
    raise ValueError(f"{run_dir}: the model folder does not say which units it reads; pass --speech-units FOLDER "
                     f"(the `simslm units extract` folder of its codebook)")


def _model_num_units(run_dir: Path, model_dir: Path) -> int | None:
    """How many units the model reads: its folder's vocabulary's, else (a run whose model is not written yet) its
    training data's; None when neither is there."""
    from simslm.sequences.vocabulary import VOCAB_FILE

    vocabulary = model_dir / VOCAB_FILE if (model_dir / VOCAB_FILE).exists() else None
    if vocabulary is None and (run_dir / "plan.json").exists():
        from simslm.train.plan import placed_input

        data = placed_input(run_dir, storage.read_json(run_dir / "config.json"), "data")
        vocabulary = Path(data) / "tokenizer" / VOCAB_FILE
    return storage.read_json(vocabulary)["num_units"] if vocabulary is not None and vocabulary.exists() else None


def _check_recorded_units(run_dir: Path, model_dir: Path, recorded: UnitSource) -> None:
    """The units a model folder records must be as many as its vocabulary's: `model from-slamkit --num-units 16
    --speech-units` of a 200-unit codebook recorded them, and `eval` scored units 16 and up as other tokens."""
    if (num_units := _model_num_units(run_dir, model_dir)) is not None and recorded.k != num_units:
        raise ValueError(f"{model_dir}: records units of a {recorded.k}-unit codebook ({recorded.codebook}), but "
                         f"its vocabulary has {num_units} units; pass --speech-units FOLDER of its own codebook")


def _check_speech_units(folder: str, given: UnitSource, run_dir: Path, model_dir: Path,
                        recorded: UnitSource | None) -> None:
    """`--speech-units` must be the model's own units: a codebook of another size (its ids are other tokens, or
    past the model's units), or another codebook than the one the model records, scored or prompted the model with
    units it never read, without a word (or ended in an IndexError of the vocoder)."""
    if (num_units := _model_num_units(run_dir, model_dir)) is not None and given.k != num_units:
        raise ValueError(f"{folder}: units of a {given.k}-unit codebook, but the model reads {num_units} units "
                         f"(--speech-units names the units the model was trained on)")
    if recorded is not None and given.other_codebook(recorded):
        raise ValueError(f"{folder}: units of another codebook than the one {model_dir} records ({recorded.codebook}); "
                         f"leave --speech-units out to use the model's own")


def units_for_audio(paths: list[str], source: UnitSource, cache: Path, num_workers: int = 0, device: str = "cpu"
                    ) -> dict[str, np.ndarray]:
    """Deduplicated units of each audio file with the encoder and codebook of `source`, encoded on `device`.

    Extraction goes through `units.extract_units` (parallel, resumable shard by shard) into
    a cache folder named by the codebook and the file list, so evaluating another run with
    the same codebook (every run of a sweep) does no work. Files that cannot be read are
    missing from the result.
    """
    from simslm.speech import audio

    unique = sorted(set(paths))
    # The encoder as extraction runs it (below): two codebooks of the same centroids recorded with other settings
    # (slamkit's edge padding or none, say) give other units. On a GPU (as slamkit encodes a benchmark, on the
    # model's device) its own folder: its float32 units need not be the CPU's to the last frame (cuDNN's TF32
    # convolutions), and a CPU's evaluation keeps reading the units it read before.
    encoder = _encoder(source)
    on_gpu = ["cuda"] if device.startswith("cuda") else []
    key = hashlib.sha256("\n".join([source.codebook_sha256, json.dumps(asdict(encoder), sort_keys=True), *on_gpu,
                                     *map(_identity, unique)]).encode()).hexdigest()[:16]
    # The folder is named by the codebook and the files: once complete, every later run (a sweep's 48) reads it
    # without opening each file's header again (0.22 s against 0.035 s a demo run, warm; docs/LOG.md 2026-12-03).
    # A file is its path, size and modification time (a stat, not an open): a benchmark built again into the same
    # folder gets new units, not those of the audio it replaced.
    folder = cache / key
    if not units_complete(folder):
        # One process extracts, the others wait for it: a sweep's runs that finish together evaluate together, and
        # each extracted the same folder, the work done once a run; worse, each read the others' live attempts in
        # the shards' journals as processes that had died there (`units.journal.ShardJournal`), encoded their
        # utterances one at a time, and a third skipped an utterance "that ended the process twice", writing the
        # shard without it for every later evaluation to read.
        with storage.exclusive_lock_waiting(folder.with_name(f".{key}.lock"),
                                            f"units of {len(unique)} audio files are being extracted into {folder} by "
                                            f"another process; waiting for it"):
            if not units_complete(folder):
                records = []
                for number, path in enumerate(unique):
                    try:
                        duration = audio.audio_info(path)[1]
                    except audio.AudioError:
                        duration = 0.0  # extraction reports the problem and skips the file
                    records.append({"id": f"{number:07d}", "path": str(Path(path).resolve()),
                                    "duration_sec": duration})
                config = ExtractConfig(manifest=f"benchmark audio ({len(unique)} files)",
                                       codebook=str(source.codebook), out=str(folder),
                                       model_path=source.encoder.get("model_path"), num_workers=num_workers,
                                       device=device)
                extract_units(config, records=records)
    return {unique[int(u.id)]: u.units for u in read_units(folder)}


def _encoder(source: UnitSource) -> EncoderSpec:
    """The encoder as extraction runs it for `source`'s codebook (with its checkpoint where the source has it)."""
    if source.codebook is None:
        raise ValueError("the units were imported without a codebook, so audio cannot be encoded the same way; "
                         "pass pre-extracted units (--units) or a codebook when importing")
    return codebook_encoder(kmeans.Codebook.load(source.codebook), source.codebook, source.encoder.get("model_path"))


def _identity(path: str) -> str:
    """A file as the caches name it: its path, size and modification time (the path alone for a missing one)."""
    try:
        status = os.stat(path)
    except OSError:
        return path
    return f"{path}\t{status.st_size}\t{status.st_mtime_ns}"


def joined_recordings(pairs: list[Pair]) -> list[tuple[str, ...]]:
    """The runs of consecutive speech parts in the pairs' sides: each is one recording cut in parts
    (a spoken context and its ending), which slamkit joins into one waveform before encoding it."""
    joined = set()
    for pair in pairs:
        for side in (pair.positive, pair.negative):
            run: list[str] = []
            for part in (*side, None):
                if part is not None and part.modality == "speech":
                    run.append(part.audio)
                    continue
                if len(run) > 1:
                    joined.add(tuple(run))
                run = []
    return sorted(joined)


def _join_audio(paths: tuple[str, ...], folder: Path, resampler: str, seconds: float | None = None) -> str:
    """A WAV of the recordings one after another, each brought to 16 kHz by `resampler` first, as slamkit's
    cross-modal metric loads each part; with `seconds`, their first seconds only, as slamkit's generation cuts a
    prompt's waveform (`samples[:int(seconds * 16000)]`). Written once, named by the files it joins
    (`_identity`), the resampler and the cut."""
    from simslm.speech import audio

    cut = [f"seconds={seconds!r}"] if seconds is not None else []
    name = "\n".join([*map(_identity, paths), f"resampler={resampler}", *cut])
    target = folder / f"{hashlib.sha256(name.encode()).hexdigest()[:20]}.wav"
    if not target.exists():
        try:
            samples = np.concatenate([audio.load_audio(path, resampler=resampler) for path in paths])
        except audio.AudioError:
            return str(target)  # missing: extraction skips it and the pair is counted as skipped
        audio.write_audio(target, samples if seconds is None else samples[:int(seconds * audio.TARGET_SAMPLE_RATE)])
    return str(target)


def cut_prompt(path: str, source: UnitSource, seconds: float) -> str:
    """A WAV in the benchmark cache of the recording's first `seconds`, brought to 16 kHz by the resampler of
    `source`'s codebook: a spoken prompt as slamkit's generation cuts its waveform (`_join_audio`)."""
    return _join_audio((path,), bench_units_cache() / "joined", _encoder(source).resampler, seconds)


def units_lookup(pairs: list[Pair], run_dir: Path, pre_extracted: str | None, num_workers: int = 0, *,
                 join: bool = False, speech_units: str | None = None, device: str = "cpu"
                 ) -> Callable[[str | tuple[str, ...]], np.ndarray]:
    """Audio -> units: from a pre-extracted folder (keyed by file stem), else extracted now.

    With `join`, a tuple of paths (a recording cut in parts, see `joined_recordings`) gets
    the units of the parts' audio joined and encoded as one, as slamkit's S mode does; from
    pre-extracted units it gets the parts' units one after another, a unit repeated across
    the cut merged (the nearest that units alone allow).
    """
    if pre_extracted:
        by_stem = {u.id: u.units for u in read_units(pre_extracted)}
        k = unit_source(pre_extracted).k
        beyond = next((key for key, units in by_stem.items() if len(units) and (units.max() >= k or units.min() < 0)),
                      None)
        if beyond is not None:
            raise ValueError(f"{pre_extracted}: {beyond} has unit ids outside 0..{k - 1}, the codebook's range")

        def from_folder(key):
            if isinstance(key, tuple):
                parts = [by_stem[Path(path).stem] for path in key]
                return deduplicate(np.concatenate(parts))[0] if parts else np.empty(0, np.int32)
            return by_stem[Path(key).stem]
        return from_folder
    paths = [part.audio for pair in pairs for part in pair.positive + pair.negative if part.audio]
    if not paths:
        return lambda path: np.empty(0, dtype=np.int32)
    source = run_unit_source(run_dir, speech_units)
    joined = {}
    if join and (recordings := joined_recordings(pairs)):
        resampler = _encoder(source).resampler
        joined = {key: _join_audio(key, bench_units_cache() / "joined", resampler) for key in recordings}
    table = units_for_audio(paths + list(joined.values()), source, bench_units_cache(), num_workers, device)

    def extracted(key):
        try:
            return table[joined[key] if isinstance(key, tuple) else key]
        except KeyError:  # named by the benchmark's own files, not by the cache's joined recording
            raise KeyError(key) from None
    return extracted


def bench_units_cache() -> Path:
    """Where benchmark units are cached: shared by every run that uses the same codebook."""
    from simslm import assets

    return assets.cache_dir() / "bench-units"
