"""Speech units: audio -> encoder features -> k-means ids -> deduplicated units with durations.

As in the paper (mHuBERT-25Hz, layer 11, 500 k-means units, consecutive duplicates
removed), with an offline `logmel` encoder at the same 25 Hz. Each utterance's units are
stored with their run lengths, so the frame sequence (and so the time of every unit) can
be rebuilt exactly: later stages map word timings onto units with it.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Container, Iterable, Iterator, Literal

import numpy as np

from simslm import jobs
from simslm.config import (
    Config,
    ConfigError,
    check_device,
    check_not_input,
    check_output_file,
    check_positive,
    registry_choices,
)
from simslm.speech import audio
from simslm.speech.audio import RESAMPLERS
from simslm.speech.manifest import iter_utterances, manifest_folder
from simslm.units import kmeans
from simslm.units.encoders import ENCODERS, SLAMKIT_EDGE_PAD, SLAMKIT_RESAMPLER, EncoderSpec, build_encoder

# --- deduplication --------------------------------------------------------------------------


def deduplicate(frame_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length encode a frame sequence: (units with consecutive repeats removed, run lengths)."""
    frame_units = np.asarray(frame_units)
    if len(frame_units) == 0:
        return frame_units[:0], np.zeros(0, dtype=np.int32)
    starts = np.flatnonzero(np.concatenate(([True], frame_units[1:] != frame_units[:-1])))
    durations = np.diff(np.append(starts, len(frame_units))).astype(np.int32)
    return frame_units[starts], durations


def expand(units: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Inverse of `deduplicate`: the frame sequence."""
    return np.repeat(np.asarray(units), np.asarray(durations))


# --- jobs -----------------------------------------------------------------------------------

_worker_cache: dict[str, Any] = {}


def _cached(key: str, build: Callable[[], Any]) -> Any:
    """One encoder / codebook per worker process (a HuBERT load takes seconds)."""
    if key not in _worker_cache:
        _worker_cache[key] = build()
    return _worker_cache[key]


def _workers(asked: int, device: str, num_tasks: int) -> int:
    """Worker processes: as asked, else one per core on the CPU and one on a GPU (workers beside it would only
    queue for the same device); never more than there are tasks."""
    return min(asked or (1 if device.startswith("cuda") else jobs.default_workers()), max(1, num_tasks))


def _encode_for_fit(task: tuple[dict[str, Any], dict[str, Any], int, int, int, str]
                    ) -> tuple[str, np.ndarray | str]:
    record, spec, max_frames, seed, num_workers, device = task
    encoder = _encoder(spec, device, "float32")
    jobs.share_cores(num_workers)
    try:
        samples = audio.load_audio(record["path"], resampler=spec["resampler"])
        features = encoder.encode(samples)
    except (audio.AudioError, ValueError) as error:
        return record["id"], _skip_reason(error)
    if len(features) > max_frames:
        rng = np.random.default_rng([seed, int(hashlib.sha256(record["id"].encode()).hexdigest()[:8], 16)])
        features = features[np.sort(rng.choice(len(features), max_frames, replace=False))]
    return record["id"], features


@dataclass(frozen=True, kw_only=True)
class FitConfig(Config):
    """What `simslm units fit` does."""

    renamed: ClassVar[dict[str, str]] = {"k": "num_units"}

    manifest: str
    """Manifest of the corpus to fit on."""
    out: str
    """Codebook path (<out>.npy + <out>.json)."""
    encoder: str = field(default="logmel", metadata=registry_choices(ENCODERS))
    """Encoder name (see `simslm units --help`)."""
    model_path: str | None = None
    """HuBERT checkpoint folder or hub id (default: the encoder's)."""
    layer: int | None = None
    """HuBERT layer (default: the encoder's)."""
    edge_pad: int | None = None
    """Zero samples added at each end of the audio before a HuBERT encoder (default: slamkit's 40, which its
    extraction and evaluation add; 0 for units made by tools that add none). Recorded with the codebook."""
    resampler: str | None = field(default=None, metadata=registry_choices(RESAMPLERS))
    """How audio not at 16 kHz is resampled: sinc-hann (torchaudio's default, which slamkit's extraction uses;
    the default for HuBERT encoders) or soxr (libsoxr's HQ; logmel's default). Recorded with the codebook."""
    num_units: int = 500
    """Number of units, the k of k-means (500 in the paper)."""
    max_utterances: int = 400
    """Fit on at most this many utterances, drawn at random."""
    max_frames_per_utterance: int = 500
    """Frames sampled from each of them."""
    seed: int = 0
    backend: Literal["auto", "faiss", "sklearn"] = "auto"
    """k-means implementation (auto: faiss when installed)."""
    num_workers: int = 0
    """Worker processes for encoding; 0 = one per core on the CPU, one on a GPU."""
    device: str = "cpu"
    """Where HuBERT encodes: cpu, cuda (LOCAL_RANK's GPU under torchrun), cuda:N, or auto (logmel: the CPU)."""

    def check(self) -> None:
        check_device(self)
        check_positive(self, "num_units", "max_utterances", "max_frames_per_utterance")
        check_positive(self, "num_workers", allow_zero=True)
        check_output_file(self, "out", "the codebook (OUT.npy and OUT.json)", kmeans.codebook_path(self.out))
        check_not_input(self, "out", "manifest", "the manifest being fitted on, which the codebook's files would "
                        "replace", kmeans.codebook_files(self.out))


def corpus_hash(records: list[dict[str, Any]], root: str | os.PathLike) -> str:
    """Short sha256 over the ids and audio paths (relative to `root`, the manifest's folder, so that a corpus
    moved elsewhere hashes the same) of the utterances a codebook was fit on."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r["id"]):
        digest.update(f"{record['id']}\t{Path(os.path.relpath(record['path'], Path(root).resolve())).as_posix()}\n"
                      .encode())
    return digest.hexdigest()[:16]


def _records(manifest: str | os.PathLike, *, checked: bool = False) -> Iterator[dict[str, Any]]:
    """The id, absolute audio path and duration of each utterance, streamed: at Libri-Light's 21M segments the list
    of them would be some 7 GB in every process of an extraction (docs/BENCHMARKS.md).

    With `checked`, every line is parsed and checked as `iter_utterances` does (its ManifestError after the last);
    else only its JSON is read, for the later passes over a manifest a first pass checked: 3x faster for lines of
    30 timed words, which a checked pass turns into objects."""
    manifest = Path(manifest)
    folder = manifest_folder(manifest)
    if checked:
        lines = ({"id": u.id, "audio": u.audio, "duration_sec": u.duration_sec} for u in iter_utterances(manifest))
    else:
        lines = (json.loads(line) for line, _ in jobs.text_lines(manifest) if line.strip())
    for line in lines:
        yield _record(line, folder)


def _record(line: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    path = line["audio"] if audio.is_url(line["audio"]) else os.path.join(folder, line["audio"])  # a URL: said so
    return {"id": line["id"], "path": path, "duration_sec": line["duration_sec"]}


# The byte offset in the manifest of each shard's first utterance, beside units.json (whose header holds its digest):
# a process reads its own shards' lines and none of the others'.
SHARD_OFFSETS = "shard_offsets.npy"


def _shard_offsets(manifest: str | os.PathLike, shard_size: int) -> np.ndarray:
    """Where each shard's first utterance starts in the manifest: every `shard_size`-th line that is not blank (as
    the readers above count them; the manifest was checked as UTF-8 before)."""
    offsets, count, position = [], 0, 0
    with open(manifest, "rb") as handle:
        for number, raw in enumerate(handle):
            if (raw.removeprefix(codecs.BOM_UTF8) if number == 0 else raw).decode("utf-8", "replace").strip():
                if count % shard_size == 0:
                    offsets.append(position)
                count += 1
            position += len(raw)
    return np.asarray(offsets, dtype=np.int64)


def _shard_records(manifest: str | os.PathLike, offset: int, count: int) -> list[dict[str, Any]]:
    """The records of the `count` utterances from byte `offset` of the manifest (one shard's)."""
    folder = manifest_folder(manifest)
    records = []
    with open(manifest, "rb") as handle:
        handle.seek(offset)
        for raw in handle:
            line = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8") if offset == 0 and not records else \
                raw.decode("utf-8")
            if line.strip():
                records.append(_record(json.loads(line), folder))
                if len(records) == count:
                    break
    return records


def _stored_offsets(out: Path, num_shard_files: int) -> np.ndarray | None:
    """The shard offsets units.json vouches for (its digest of them), else None (an older folder: read in turn)."""
    header = jobs.read_json(out / "units.json")
    try:
        offsets = np.load(out / SHARD_OFFSETS, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if len(offsets) != num_shard_files or hashlib.sha256(offsets.tobytes()).hexdigest() != header.get(
            "shard_offsets_sha256"):
        return None
    return offsets


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last shorter)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _encode_sample(config: FitConfig, spec: EncoderSpec, records: list[dict[str, Any]], device: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The sampled features of each utterance of `records` that could be encoded, and the reason for each skipped.

    A fit is not resumable and draws the same seeded sample every time, so an utterance whose encoding ends the
    process (the OOM killer under a job's memory limit) would end every fit: the task journal beside the codebook
    names it, and skips it once it has done so `DEATHS_TO_SKIP` times, in this fit and in later ones into the same
    codebook (the journal keeps the deaths of those skipped)."""
    workers = _workers(config.num_workers, device, len(records))
    tasks = [(record, asdict(spec), config.max_frames_per_utterance, config.seed, workers, device)
             for record in records]
    journal = jobs.TaskJournal(_beside_codebook(config.out, "running"), key=lambda task: task[0]["id"],
                               skipped=lambda task, _: (task[0]["id"], ENDED_THE_PROCESS))  # as extraction says it
    encoded, skipped = {}, {}
    for utterance_id, result in jobs.parallel_map(_encode_for_fit, tasks, num_workers=workers, total=len(tasks),
                                                  description="units fit: encode", journal=journal):
        (skipped if isinstance(result, str) else encoded)[utterance_id] = result
    return encoded, skipped


MIN_FRAMES_PER_UNIT = 10


def fit_codebook(config: FitConfig) -> Path:
    """Fit a k-means codebook on encoder features sampled across a corpus."""
    spec = EncoderSpec.standard(config.encoder, config.model_path, config.layer, config.edge_pad,
                                config.resampler)
    device = jobs.torch_device(config.device)
    num_records = sum(1 for _ in iter_utterances(config.manifest))  # checked whole, streamed
    rng = np.random.default_rng(config.seed)
    chosen = (set(rng.choice(num_records, config.max_utterances, replace=False).tolist())
              if num_records > config.max_utterances else range(num_records))
    # Resolved, as the corpus hash has always taken them (symbolic links followed).
    records = [{**record, "path": str(Path(record["path"]).resolve())}
               for number, record in enumerate(_records(config.manifest)) if number in chosen]
    # Two fits into one codebook would write it at once and share its task journal: the second is refused.
    with jobs.exclusive_lock(_beside_codebook(config.out, "lock"),
                             f"{config.out}: another `simslm units fit` is writing it"):
        return _fit(config, spec, records, device)


def _beside_codebook(name: str, kind: str) -> Path:
    """The hidden file of a fit into the codebook `name` (`.NAME.fit.lock`, `.NAME.fit.running`), whichever way
    its name is given (`km`, `km.npy`)."""
    codebook = kmeans.codebook_path(name)
    return codebook.with_name(f".{codebook.name.removesuffix('.npy')}.fit.{kind}")


def _fit(config: FitConfig, spec: EncoderSpec, records: list[dict[str, Any]], device: str) -> Path:
    """`fit_codebook`'s work on the sampled `records`, under its lock."""
    encoded, skipped = _encode_sample(config, spec, records, device)
    if not encoded:
        raise ValueError(f"{config.manifest}: no utterance could be encoded "
                         f"({dict(collections.Counter(skipped.values()))})")
    # In the manifest's order, not the workers' completion order: k-means draws its initial centroids by row, so
    # the order of the frames decides the codebook, and with it every unit and loss downstream (docs/LOG.md).
    stacked = np.concatenate([encoded[record["id"]] for record in records if record["id"] in encoded])
    # Fewer than a few frames per centroid gives centroids that are single frames, units that
    # mean nothing (faiss itself warns below 39 per centroid): refused rather than written.
    if len(stacked) < MIN_FRAMES_PER_UNIT * config.num_units:
        raise ValueError(f"{config.manifest}: {len(stacked)} frames for k-means with {config.num_units} units; at "
                         f"least {MIN_FRAMES_PER_UNIT * config.num_units} are needed ({MIN_FRAMES_PER_UNIT} per "
                         f"unit): fit on more utterances or ask for fewer --num-units")
    backend = kmeans.available_backend() if config.backend == "auto" else config.backend
    # One k-means call (faiss iterates inside C++): a line before and after, so a cluster log shows it.
    print(f"[units fit] k-means: k={config.num_units} on {len(stacked):,} frames x {stacked.shape[1]} dims "
          f"({backend}) ...", file=sys.stderr, flush=True)
    fit_started = time.perf_counter()
    centroids = kmeans.fit(stacked, config.num_units, seed=config.seed, backend=backend)
    print(f"[units fit] k-means done in {time.perf_counter() - fit_started:.1f} s", file=sys.stderr, flush=True)
    used = [r for r in records if r["id"] not in skipped]
    meta = {"encoder": asdict(spec), "frame_rate_hz": ENCODERS[config.encoder][0],
            "corpus_hash": corpus_hash(used, manifest_folder(config.manifest)),
            "manifest": jobs.portable_path(config.manifest, Path(config.out).parent),
            "num_utterances": len(used), "num_frames": int(len(stacked)),
            "num_skipped": len(skipped), "skipped_by_reason": dict(collections.Counter(skipped.values())),
            "backend": backend, "seed": config.seed}
    return kmeans.Codebook(centroids, meta).save(config.out)


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(Config):
    """What `simslm units extract` does."""

    manifest: str
    """Manifest of the utterances to encode."""
    codebook: str
    """k-means codebook (.npy with its .json sidecar) from `simslm units fit`."""
    out: str
    """Output folder: units.json and shards/shard-NNNNN.jsonl."""
    model_path: str | None = None
    """HuBERT checkpoint, when it differs from the one the codebook records."""
    shard_size: int = 64
    """Utterances per shard (the unit of resumption)."""
    num_workers: int = 0
    """Worker processes; 0 = one per core on the CPU, one on a GPU."""
    device: str = "cpu"
    """Where HuBERT runs: cpu, cuda (under torchrun, each rank its LOCAL_RANK's GPU), cuda:N, or auto."""
    batch_size: int = 0
    """Utterances encoded together, by length (a group-norm HuBERT takes only equal lengths together); 0: 16, but
    1 for HuBERT on the CPU, where batches gain nothing and padding costs (docs/BENCHMARKS.md)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """HuBERT precision. Half precision is checked against float32 on each shard's first batch."""
    min_agreement: float = 0.99
    """Half precision: the least share of frames with the float32 unit; below it the extraction stops."""
    num_shards: int = 1
    """Split the work across this many processes or machines filling one --out folder (on a shared disk): each
    takes every K-th shard; the folder is complete, and readable, once all have finished."""
    shard_index: int | None = None
    """Which of --num-shards this process is (default: RANK under torchrun, else SLURM_ARRAY_TASK_ID in a SLURM
    array, else 0)."""

    executor: Literal["here", "slurm"] = "here"
    """here (this process), or slurm: a job array of --num-shards jobs through submitit, one shard index each."""
    cluster: str | None = None
    """slurm: submitit cluster (slurm, or local to run the array here; default: slurm where sbatch is on PATH;
    elsewhere local must be asked for)."""
    slurm_partition: str = ""
    """slurm: partition."""
    timeout_min: int = 240
    """slurm: time limit per job in minutes."""
    max_requeues: int = jobs.MAX_REQUEUES
    """slurm: times a job that reaches its time limit is requeued to go on with the shards not yet written."""
    gpus_per_node: int = 0
    """slurm: GPUs per job."""
    cpus_per_task: int = 0
    """slurm: CPUs per job (0: the cluster's default)."""

    def check(self) -> None:
        check_device(self)
        check_positive(self, "shard_size", "num_shards", "timeout_min")
        check_positive(self, "max_requeues", allow_zero=True)
        check_positive(self, "batch_size", allow_zero=True)
        if not 0 < self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement must be in (0, 1], not {self.min_agreement}")
        check_positive(self, "gpus_per_node", "cpus_per_task", allow_zero=True)
        check_positive(self, "num_workers", allow_zero=True)
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"--shard-index must be in 0..{self.num_shards - 1}, not {self.shard_index}")

    def this_shard(self) -> int:
        """This process's share of the shards: --shard-index, or what the launcher says."""
        return jobs.launcher_shard(self.num_shards) if self.shard_index is None else self.shard_index


@dataclass(frozen=True)
class UtteranceUnits:
    """The deduplicated units of one utterance, with run lengths in encoder frames."""

    id: str
    units: np.ndarray
    durations: np.ndarray
    frame_rate_hz: float

    @property
    def num_frames(self) -> int:
        return int(self.durations.sum())

    def frame_units(self) -> np.ndarray:
        """The unit of every encoder frame (the sequence before deduplication)."""
        return expand(self.units, self.durations)

    def start_times_sec(self) -> np.ndarray:
        """Start time of each unit."""
        return np.concatenate(([0], np.cumsum(self.durations)[:-1])) / self.frame_rate_hz


@dataclass(frozen=True)
class ExtractReport:
    """What an extraction run did (also written to report.json)."""

    out: str
    num_utterances: int
    num_shards: int
    num_shards_done_now: int
    num_encoded: int
    num_skipped: int
    skipped_by_reason: dict[str, int]
    num_frames: int
    num_units: int
    audio_sec: float
    wall_sec: float
    num_shards_present: int = 0
    """Shards in the folder after this run; until all are, the counts above are this run's shards alone (other
    processes are writing theirs), and report.json is not written."""
    half_precision_agreement: float | None = None
    """The least share of frames, over the shards done now, whose half-precision unit was the float32 one (None in
    float32)."""

    @property
    def realtime_factor(self) -> float:
        return self.audio_sec / self.wall_sec if self.wall_sec > 0 else float("inf")


@dataclass(frozen=True)
class UnitSource:
    """Where unit tokens come from: the encoder and its settings and the k-means codebook, which is all it
    takes to turn audio into the same units. Read from a units folder's units.json or a model folder's
    simslm_units.json (`simslm.model.write_model_units`)."""

    encoder: dict[str, Any]
    """EncoderSpec fields."""
    codebook: Path | None
    """The codebook .npy (its .json sidecar beside it); None for units imported without one."""
    codebook_sha256: str | None
    k: int
    frame_rate_hz: float | None

    @classmethod
    def read(cls, header: str | os.PathLike) -> "UnitSource":
        """From a units.json (or a model's simslm_units.json); its codebook path is placed relative to it."""
        header = Path(header)
        try:
            data = jobs.read_json(header)
            codebook = data.get("codebook")
            return cls(encoder=data["encoder"], codebook=jobs.placed_path(codebook, header.parent) if codebook else None,
                       codebook_sha256=data.get("codebook_sha256"), k=int(data["k"]),
                       frame_rate_hz=data.get("frame_rate_hz"))
        except FileNotFoundError:
            raise ValueError(f"{header}: missing (not a `simslm units extract` folder)") from None
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{header}: not a units header ({error.__class__.__name__}: {error})") from None

    def header(self, folder: str | os.PathLike, codebook: str | os.PathLike | None = None) -> dict[str, Any]:
        """The JSON fields that record this source in a file in `folder` (the codebook at `codebook` if given)."""
        codebook = codebook or self.codebook
        return {"encoder": self.encoder, "frame_rate_hz": self.frame_rate_hz,
                "codebook": jobs.portable_path(codebook, folder) if codebook else None,
                "codebook_sha256": self.codebook_sha256, "k": self.k}

    def encoder_settings(self) -> dict[str, Any] | None:
        """What makes the encoder's units what they are (not where its checkpoint lies); None when not a spec.

        The resampler is left out: it changes the units of audio not at 16 kHz only, and every published benchmark
        is at 16 kHz, where refusing units made with another (slamkit's imported ones beside a codebook converted
        before it was recorded) would refuse the same units."""
        spec = EncoderSpec.recorded(self.encoder)
        if spec is None:
            return None
        default_layer = ENCODERS[spec.name][2] if spec.name in ENCODERS else None
        return {"encoder": spec.name, "layer": spec.layer if spec.layer is not None else default_layer,
                "edge_pad": spec.edge_pad}

    def other_codebook(self, other: "UnitSource") -> bool:
        """Whether `other`'s units come from another codebook (as far as both record one): the same ids are then
        other sounds."""
        return None not in (self.codebook_sha256, other.codebook_sha256) and \
            self.codebook_sha256 != other.codebook_sha256

    def other_encoding(self, other: "UnitSource") -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The two encoders' settings when `other`'s units were encoded otherwise (as far as both record it)."""
        settings = (self.encoder_settings(), other.encoder_settings())
        return settings if None not in settings and settings[0] != settings[1] else None


def checked_manifest(units_folder: str | os.PathLike, manifest: str | os.PathLike) -> bool:
    """Whether the units folder's extraction checked this manifest as it is now (units.json stamps it): every
    line parsed as an utterance, and no id twice."""
    header = Path(units_folder) / "units.json"
    recorded = jobs.read_json(header).get("manifest_stamp") if header.exists() else None
    return recorded is not None and recorded == manifest_stamp(manifest)


def unit_source(units_folder: str | os.PathLike) -> UnitSource:
    """The encoder and codebook of a `simslm units extract` (or `units import`) folder."""
    return UnitSource.read(Path(units_folder) / "units.json")


@dataclass(frozen=True)
class _Runtime:
    """How a worker runs its encoder: where, in what precision, how many utterances at a time."""

    device: str
    dtype: str
    batch_size: int
    min_agreement: float


def _encoder(spec: dict[str, Any], device: str, dtype: str):
    return _cached(json.dumps([spec, device, dtype], sort_keys=True),
                   lambda: build_encoder(EncoderSpec(**spec), device=device, dtype=dtype))


def _encode_all(encoder, loaded: list[np.ndarray], batch_size: int, *, alone: Container[int] = (),
                before: Callable[[list[int]], None] = lambda group: None) -> list[np.ndarray | ValueError]:
    """Features of every utterance, encoded in the encoder's batches; an utterance it refuses gets its error.
    Those in `alone` are encoded one at a time; `before(group)` is told each group before it is encoded."""
    features: list[np.ndarray | ValueError] = [ValueError("not encoded")] * len(loaded)
    groups = encoder.batches([len(samples) for samples in loaded], batch_size)
    groups = [[i] for group in groups for i in group if i in alone] + [
        kept for group in groups if (kept := [i for i in group if i not in alone])]
    for group in groups:
        before(group)
        try:
            for index, result in zip(group, encoder.encode_batch([loaded[i] for i in group])):
                features[index] = result
        except ValueError:  # one utterance the encoder refuses (too short, say): find it, keep the others
            for index in group:
                try:
                    if len(group) > 1:
                        before([index])
                    features[index] = encoder.encode(loaded[index])
                except ValueError as error:
                    features[index] = error
    return features


def _half_precision_agreement(encoder, reference, samples: list[np.ndarray], codebook: kmeans.Codebook
                              ) -> float | None:
    """Share of frames whose unit is the same in the encoder's precision as in float32, over the utterances both
    encode (one each refuses, too short or too long for memory, is left to the extraction to skip and count); None
    when neither encodes any."""
    try:  # the batch as extraction encodes it: two passes on a GPU
        pairs = list(zip(encoder.encode_batch(samples), reference.encode_batch(samples)))
    except ValueError:  # one of them refused: the others one at a time
        pairs = []
        for utterance in samples:
            try:
                pairs.append((encoder.encode(utterance), reference.encode(utterance)))
            except ValueError:
                continue
    same = sum(int((codebook.assign(low) == codebook.assign(high)).sum()) for low, high in pairs)
    total = sum(len(high) for _, high in pairs)
    return same / total if total else None


def load_all(records: list[dict[str, Any]], threads: int, resampler: str) -> list[np.ndarray | audio.AudioError]:
    """Each record's audio (or why it cannot be used), in order, decoded by `threads` threads and resampled to
    16 kHz by `resampler`.

    libsndfile and soxr let go of the GIL, so threads decode side by side: 1.9-2.1x on this machine's 2 cores
    (docs/LOG.md 2026-12-04, ninth session). On a GPU the one worker has every core; decoding a shard in
    one thread there (~3,000x real time for 16 kHz FLAC) would leave the GPU (~2,500x for HuBERT-base in
    bf16) idle about half the time."""
    import concurrent.futures

    def load(record: dict[str, Any]) -> np.ndarray | audio.AudioError:
        try:
            return audio.load_audio(record["path"], resampler=resampler)
        except audio.AudioError as error:
            return error

    if threads <= 1 or len(records) <= 1:
        return [load(record) for record in records]
    with concurrent.futures.ThreadPoolExecutor(min(threads, len(records))) as pool:
        return list(pool.map(load, records))


def _read_shard(records: list[dict[str, Any]], threads: int, resampler: str, journal: "_ShardJournal",
                earlier: "_Deaths") -> list[np.ndarray | audio.AudioError | None]:
    """`load_all` of a shard's records, each group noted in its journal before it is read: those an earlier
    process died reading, one at a time; those that ended a process twice alone, not at all (None)."""
    audio_of: dict[int, np.ndarray | audio.AudioError] = {}
    together = [i for i, record in enumerate(records)
                if record["id"] not in earlier.reading and record["id"] not in earlier.fatal]
    for group in [together] + [[i] for i, record in enumerate(records)
                               if record["id"] in earlier.reading and record["id"] not in earlier.fatal]:
        if group:
            journal.note({"reading": [records[i]["id"] for i in group],
                          "seconds": round(sum(float(records[i].get("duration_sec") or 0) for i in group), 1)})
            audio_of.update(zip(group, load_all([records[i] for i in group], threads, resampler)))
    return [audio_of.get(i) for i in range(len(records))]


def _extract_shard(task: tuple[int, list[dict[str, Any]], dict[str, Any], str, str, int, _Runtime]
                   ) -> tuple[int, dict]:
    shard_index, records, spec, codebook_path, shard_path, num_workers, run = task
    journal = _ShardJournal.of(Path(shard_path))
    # The shard is this process's while it holds the shard's lock: another process extracting into the same folder
    # (the same command run twice, an evaluation's cache filled by two runs at once) leaves it alone. Without it
    # each read the other's live attempt in the journal as a process that had died there, encoded its utterances
    # again one at a time, and a third skipped an utterance "that ended the process twice", the shard written
    # without it. Held, the journal's attempts are all of processes that have ended.
    elsewhere = shard_index, {"agreement": None, "totals": _summed([]), "elsewhere": True}
    held = contextlib.ExitStack()
    try:
        held.enter_context(jobs.exclusive_lock(journal.path.with_name(f".{Path(shard_path).stem}.lock"),
                                               f"{shard_path}: being extracted by another process"))
    except jobs.Busy:
        return elsewhere
    with held:
        if Path(shard_path).exists():  # written by another process since this one listed what was left
            return elsewhere
        return _extract_held_shard(shard_index, records, spec, codebook_path, shard_path, num_workers, run,
                                   journal)


def _extract_held_shard(shard_index: int, records: list[dict[str, Any]], spec: dict[str, Any], codebook_path: str,
                        shard_path: str, num_workers: int, run: _Runtime, journal: "_ShardJournal"
                        ) -> tuple[int, dict]:
    earlier = journal.earlier_deaths()
    if earlier.last and (earlier.suspects or earlier.reading or earlier.fatal):
        # A run killed in the command's own process ended without a word ("Killed"): said now.
        doing = [f"{kind} {', '.join(sorted(held - set(earlier.fatal)))} one at a time"
                 for kind, held in (("reading", earlier.reading), ("encoding", earlier.suspects))
                 if held - set(earlier.fatal)]
        doing += [f"skipping {', '.join(sorted(earlier.fatal))} ({DEATHS_TO_SKIP} times alone)"] if earlier.fatal else []
        print(f"simslm units extract: warning: {Path(shard_path).name}: an earlier run's process ended while "
              f"{earlier.last[0]} {', '.join(earlier.last[1])}; {'; '.join(doing)}", file=sys.stderr)
    journal.begin(in_process=num_workers <= 1)
    try:
        result = _encode_shard(shard_index, records, spec, codebook_path, Path(shard_path), num_workers, run,
                               journal, earlier)
    except BaseException:
        journal.end(finished=False)  # an error or a stop, not a death: nothing is held against an utterance
        raise
    journal.end(finished=True)
    return result


def _encode_shard(shard_index: int, records: list[dict[str, Any]], spec: dict[str, Any], codebook_path: str,
                  shard_path: Path, num_workers: int, run: _Runtime, journal: "_ShardJournal",
                  earlier: "_Deaths") -> tuple[int, dict]:
    encoder = _encoder(spec, run.device, run.dtype)
    threads = jobs.share_cores(num_workers)
    codebook = _cached(codebook_path, lambda: kmeans.Codebook.load(codebook_path))
    lines: list[dict[str, Any] | None] = [None] * len(records)
    loaded, where = [], []
    for position, (record, samples) in enumerate(zip(records, _read_shard(records, threads, spec["resampler"],
                                                                           journal, earlier))):
        if record["id"] in earlier.fatal:
            lines[position] = {"id": record["id"], "reason": ENDED_THE_PROCESS,
                               "skipped": f"the process reading or encoding it alone ended {earlier.fatal[record['id']]} "
                                          f"times without an error ({record.get('duration_sec', '?')} s of audio: killed "
                                          f"for memory, most likely); cut long recordings into utterances first "
                                          f"(`simslm segment`)"}
        elif isinstance(samples, audio.AudioError):
            lines[position] = {"id": record["id"], "skipped": str(samples), "reason": _skip_reason(samples)}
        else:
            loaded.append(samples)
            where.append(position)
    agreement = None
    if run.dtype != "float32" and loaded:
        # Half precision is used only where it gives the same units: checked on this shard's first utterances.
        first = encoder.batches([len(samples) for samples in loaded], run.batch_size)[0]
        agreement = _half_precision_agreement(encoder, _encoder(spec, run.device, "float32"),
                                              [loaded[i] for i in first], codebook)
        if agreement is not None and agreement < run.min_agreement:
            raise ValueError(f"--dtype {run.dtype} gives the float32 units on only {agreement:.2%} of the frames "
                             f"checked (below --min-agreement {run.min_agreement:g}); extract in float32")
    ids = [records[position]["id"] for position in where]
    alone = {index for index, identifier in enumerate(ids) if identifier in earlier.suspects}
    before = lambda group: journal.note({"encoding": [ids[i] for i in group],  # noqa: E731
                                         "seconds": round(sum(len(loaded[i]) for i in group) / 16000, 1)})
    for position, samples, features in zip(where, loaded, _encode_all(encoder, loaded, run.batch_size, alone=alone,
                                                                       before=before)):
        record = records[position]
        if isinstance(features, ValueError):
            lines[position] = {"id": record["id"], "skipped": str(features), "reason": _skip_reason(features)}
            continue
        units, durations = deduplicate(codebook.assign(features))
        lines[position] = {"id": record["id"], "frame_rate_hz": encoder.frame_rate_hz,
                           "units": units.tolist(), "durations": durations.tolist()}
    totals = shard_totals(lines, records)
    # Its counts first, then the shard (whose presence marks it done): a present shard has them beside it.
    jobs.write_json(_totals_path(shard_path), totals)
    jobs.write_text(shard_path, "".join(json.dumps(line) + "\n" for line in lines))
    return shard_index, {"totals": totals, "agreement": agreement}


ENDED_THE_PROCESS = "ended the process encoding it"
# Deaths of the process encoding an utterance alone after which it is skipped, as for any task of a job's pool.
DEATHS_TO_SKIP = jobs.DEATHS_TO_SKIP


@dataclass(frozen=True)
class _Deaths:
    """What earlier attempts at a shard say about its utterances: those to encode alone (in the group being
    encoded when a process died), those to read alone (`reading`: in the group being read), those to skip (alone
    when it died, reading or encoding, `DEATHS_TO_SKIP` times) with the count, and what the last death was on
    (`last`: "reading" or "encoding", and the group)."""

    suspects: frozenset[str] = frozenset()
    fatal: dict[str, int] = field(default_factory=dict)
    reading: frozenset[str] = frozenset()
    last: tuple[str, tuple[str, ...]] | None = None


class _ShardJournal:
    """What a worker is encoding, beside the shard it writes (`shards/.shard-NNNNN.encoding`, JSON lines), so
    that an utterance that ends the process encoding it (the kernel's OOM killer under a cgroup's memory limit,
    where no Python error is raised: a SLURM job's memory, a recording of an hour) does not end every run of the
    extraction at the same shard. Each attempt begins with a line naming its process; each group of utterances
    is noted before it is read (`reading`: decoding a recording of ten hours takes gigabytes too) and before it
    is encoded; an attempt that fails or is stopped in Python says so. An attempt in a pool's
    worker died when the parent saw the pool break and found that worker ended by itself (`jobs.WorkerDied`: the
    parent notes it here); one in the command's own process died when it has no last word. Removed with the shard
    written."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: Any = None  # open for the attempt this process makes (one open, not one per group)

    @classmethod
    def of(cls, shard_path: Path) -> "_ShardJournal":
        return cls(shard_path.with_name(f".{shard_path.name.removesuffix('.jsonl')}.encoding"))

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def attempts(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each attempt's header and the lines after it."""
        attempts: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for entry in self.entries():
            if isinstance(entry.get("attempt"), dict):
                attempts.append((entry["attempt"], []))
            elif attempts:
                attempts[-1][1].append(entry)
        return attempts

    def earlier_deaths(self) -> _Deaths:
        suspects, reading, alone, last = set(), set(), collections.Counter(), None
        for header, lines in self.attempts():
            died = any("died" in line for line in lines) or (
                header.get("in_process") and not any("stopped" in line for line in lines))
            groups = [(kind, line[kind]) for line in lines for kind in ("reading", "encoding")
                      if isinstance(line.get(kind), list)]
            # Every attempt here ended unfinished (the journal goes with the shard written): its groups but the
            # last were done. One read is cleared of a death while reading; one encoded, of every earlier death.
            for kind, done in groups[:-1]:
                reading.difference_update(done)
                if kind == "encoding":
                    suspects.difference_update(done)
                    for identifier in done:
                        alone.pop(identifier, None)
            if died and groups:
                kind, group = groups[-1]
                (reading if kind == "reading" else suspects).update(group)
                if len(group) == 1:
                    alone[group[0]] += 1
                last = (kind, tuple(group))
        return _Deaths(frozenset(suspects), {key: count for key, count in alone.items() if count >= DEATHS_TO_SKIP},
                       frozenset(reading), last)

    def begin(self, in_process: bool) -> None:
        import socket

        self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write("\n")  # a line torn by the attempt before (killed mid-write) does not swallow the header
        self.note({"attempt": {"pid": os.getpid(), "host": socket.gethostname(), "in_process": in_process}})

    def note(self, entry: dict[str, Any]) -> None:
        """One line, flushed: in the page cache, it outlives the process (not the machine)."""
        if self._handle is None:  # the parent's note of a dead worker, after a torn line it may have left
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n" + json.dumps(entry, ensure_ascii=False) + "\n")
            return
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._handle.flush()

    def end(self, finished: bool) -> None:
        """The attempt is over: the journal goes when its work is written, and stays with a last word when not."""
        if not finished:
            self.note({"stopped": True})
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if finished:
            self.path.unlink(missing_ok=True)


def _with_what_was_encoded(error: jobs.WorkerDied, journals: Path, then: str) -> jobs.WorkerDied:
    """`error`, with the dead workers' attempts marked in the journals in `journals` and what they were encoding
    said (`_note_dead_workers`), and what a run after it does (`then`)."""
    encoding = _note_dead_workers(journals, error)
    if not encoding:
        return error
    return jobs.WorkerDied(error.description, error.ended, encoding, doing="encoding",
                           then=then)


def _note_dead_workers(shards_folder: Path, error: jobs.WorkerDied) -> list[str]:
    """Mark the attempts of the workers that `error` found ended by themselves as deaths (in the journals of the
    shards they were working on), and say what each was reading or encoding."""
    import socket

    host, said = socket.gethostname(), []
    for path in sorted(shards_folder.glob(".*.encoding")):
        journal = _ShardJournal(path)
        attempts = journal.attempts()
        if not attempts:
            continue
        header, lines = attempts[-1]
        code = error.ended.get(header.get("pid"))
        if code is None or header.get("host") != host or any("died" in line or "stopped" in line for line in lines):
            continue
        journal.note({"died": code})
        groups = [(kind, line) for line in lines for kind in ("reading", "encoding") if isinstance(line.get(kind), list)]
        if groups:
            kind, last = groups[-1]
            names = ", ".join(last[kind][:3]) + (", ..." if len(last[kind]) > 3 else "")
            shard = f"{path.name[1:].removesuffix('.encoding')}: " if path.name.startswith(".shard-") else ""
            said.append(f"{shard}{names} ({last.get('seconds', '?')} s of audio{', being read' * (kind == 'reading')})")
    return said


def _totals_path(shard_path: Path) -> Path:
    """Where a shard's counts are kept (`shard-NNNNN.totals.json`, which the readers' `shard-*.jsonl` skips)."""
    return shard_path.with_name(shard_path.name.removesuffix(".jsonl") + ".totals.json")


def _read_totals(shard_path: Path) -> dict[str, Any]:
    totals = jobs.read_json(_totals_path(shard_path))
    return {**totals, "skipped": collections.Counter(totals["skipped"])}


def shard_totals(lines: Iterable[dict[str, Any]], records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What a report counts of one shard's lines: utterances encoded, frames, units and the manifest's seconds of
    audio of those encoded (`records`: the shard's manifest records), and those skipped by reason."""
    durations = {record["id"]: record["duration_sec"] for record in records}
    totals: dict[str, Any] = {"num_encoded": 0, "num_frames": 0, "num_units": 0, "audio_sec": 0.0,
                              "skipped": collections.Counter()}
    for line in lines:
        if "skipped" in line:
            totals["skipped"][line.get("reason", ENCODER_REJECTED)] += 1
            continue
        totals["num_encoded"] += 1
        totals["num_frames"] += sum(line["durations"])
        totals["num_units"] += len(line["units"])
        totals["audio_sec"] += durations.get(line["id"], 0.0)
    return totals


def _summed(totals: Iterable[dict[str, Any]]) -> dict[str, Any]:
    summed: dict[str, Any] = {"num_encoded": 0, "num_frames": 0, "num_units": 0, "audio_sec": 0.0,
                              "skipped": collections.Counter()}
    for one in totals:
        for key, value in one.items():
            summed[key] += value  # Counter + Counter for the skips
    return summed


# An encoder's own refusal (audio shorter than one frame group, say) is counted under one name.
ENCODER_REJECTED = "rejected by the encoder"


def _skip_reason(error: Exception) -> str:
    """The kind a skipped utterance is counted under: the audio problem, or the encoder's refusal."""
    if isinstance(error, audio.AudioError):
        return error.kind.value
    return getattr(error, "reason", ENCODER_REJECTED)  # OutOfMemory names its own


def codebook_encoder(codebook: kmeans.Codebook, path: str | os.PathLike, model_path: str | None = None
                     ) -> EncoderSpec:
    """The encoder a codebook's sidecar records, as extraction runs it: with `model_path` for its checkpoint
    when given (the same model elsewhere)."""
    spec = EncoderSpec.recorded(codebook.meta.get("encoder") or None)
    if spec is None:
        raise ValueError(f"{path}: its sidecar does not say which encoder it was fit on (or names fields simslm does "
                         f"not know)")
    return replace(spec, model_path=model_path) if model_path else spec


def extract_units(config: ExtractConfig, records: list[dict[str, Any]] | None = None) -> ExtractReport:
    """Encode, assign and deduplicate every utterance of a manifest; resumable shard by shard.

    `records` ({id, path, duration_sec} each) replaces the manifest's utterances: benchmark
    audio goes through the same sharded, resumable extraction without a manifest.
    """
    started = time.perf_counter()
    codebook = kmeans.Codebook.load(config.codebook)
    spec = codebook_encoder(codebook, config.codebook, config.model_path)
    device = jobs.torch_device(config.device)
    if spec.name == "logmel" and config.dtype != "float32":
        raise ValueError(f"--dtype {config.dtype}: the logmel encoder computes in float32 (numpy); --dtype is for "
                         f"HuBERT encoders")
    from_manifest = records is None  # else `manifest` only describes the records (benchmark audio)
    given = records

    def all_records(checked: bool = False) -> Iterator[dict[str, Any]]:
        """Streamed up to three times: checked, for the header (unless units.json stamps this manifest); for the
        work (unless units.json's shard offsets let each shard be read alone); for the totals (once the folder is
        whole)."""
        return _records(config.manifest, checked=checked) if from_manifest else iter(given)

    out = Path(config.out)
    created = not out.exists()  # only a folder made here is removed after a failure
    num_records = _prepare_folder(config, spec, codebook, all_records, from_manifest)
    num_shard_files = -(-num_records // config.shard_size)
    shard_paths = [out / "shards" / f"shard-{i:05d}.jsonl" for i in range(num_shard_files)]
    mine = config.this_shard()
    todo = [i for i in range(num_shard_files) if i % config.num_shards == mine and not shard_paths[i].exists()]
    workers = _workers(config.num_workers, device, len(todo))
    if todo:
        encoder = _encoder(asdict(spec), device, config.dtype)
        if encoder.dim != codebook.centroids.shape[1]:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise ValueError(f"{config.codebook}: centroids of dimension {codebook.centroids.shape[1]}, but the "
                             f"{spec.name} encoder gives {encoder.dim}")
    batch_size = config.batch_size or (1 if device == "cpu" and spec.name != "logmel" else 16)
    run = _Runtime(device=device, dtype=config.dtype, batch_size=batch_size,
                   min_agreement=config.min_agreement)
    offsets = _stored_offsets(out, num_shard_files) if from_manifest and todo else None
    if offsets is not None:  # this process's shards alone, each read from where it starts
        shards = ((i, _shard_records(config.manifest, int(offsets[i]), config.shard_size)) for i in todo)
    else:  # read in turn, up to this process's last shard
        wanted = set(todo)
        shards = ((i, shard) for i, shard in enumerate(itertools.islice(_chunks(all_records(), config.shard_size),
                                                                         max(todo, default=-1) + 1)) if i in wanted)
    tasks = ((i, shard, asdict(spec), str(kmeans.codebook_path(config.codebook).resolve()), str(shard_paths[i]),
              workers, run) for i, shard in shards)
    try:
        done_now = list(jobs.parallel_map(_extract_shard, tasks, num_workers=workers, total=len(todo),
                                          description="units extract (shards)"))
    except jobs.WorkerDied as error:
        raise _with_what_was_encoded(error, out / "shards", "those are encoded one at a time, and one that ends "
                                     "its process again alone is skipped and counted") from None
    agreements = [stats["agreement"] for _, stats in done_now if stats["agreement"] is not None]
    elsewhere = sum(bool(stats.get("elsewhere")) for _, stats in done_now)
    if elsewhere:
        print(f"simslm units extract: {elsewhere} shard(s) of {out} were being extracted by another process, or "
              f"were written by it meanwhile: left to it", file=sys.stderr)
    present = sum(path.exists() for path in shard_paths)
    complete = present == num_shard_files
    if complete and all(_totals_path(path).exists() for path in shard_paths):
        # The whole corpus, from each shard's counts: a resumed run, or the last process of several, reports it all.
        totals = _summed(_read_totals(path) for path in shard_paths)
    elif complete:
        # Shards written before their counts were kept beside them: counted from their lines and the manifest (some
        # 40 GB of JSON and the manifest again at Libri-Light's 21M segments).
        totals = _summed(shard_totals(map(json.loads, jobs.read_text(path).splitlines()), shard)
                         for path, shard in zip(shard_paths, _chunks(all_records(), config.shard_size)))
    else:
        # Other processes are still writing theirs: this run's shards alone. Reading every present shard (some 40
        # GB of JSON at Libri-Light's 21M segments) and the manifest again would keep each process of an array
        # from ending for many minutes, to report a count the next would change.
        totals = _summed(stats["totals"] for _, stats in done_now)
    num_encoded, skipped = totals["num_encoded"], totals["skipped"]
    num_frames, num_units, audio_sec = totals["num_frames"], totals["num_units"], totals["audio_sec"]
    if num_records and complete and not num_encoded:
        # Nothing usable: leave no folder that a re-run would take as done.
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for index in todo:
                shard_paths[index].unlink(missing_ok=True)
                _totals_path(shard_paths[index]).unlink(missing_ok=True)
        raise ValueError(f"{config.manifest}: no utterance could be encoded ({dict(skipped)})")
    report = ExtractReport(out=str(out), num_utterances=num_records, num_shards=num_shard_files,
                           num_shards_done_now=len(todo) - elsewhere, num_encoded=num_encoded,
                           num_skipped=sum(skipped.values()),
                           skipped_by_reason=dict(skipped), num_frames=num_frames, num_units=num_units,
                           audio_sec=round(audio_sec, 3), wall_sec=round(time.perf_counter() - started, 3),
                           num_shards_present=present, half_precision_agreement=min(agreements, default=None))
    if complete:  # report.json is the whole extraction's
        _write_report(report, config)
    return report


def _write_report(report: ExtractReport, config: ExtractConfig) -> None:
    jobs.write_json(Path(report.out) / "report.json", {**asdict(report), "config": asdict(config),
                                                       "dedup_ratio": round(report.num_frames / max(1, report.num_units),
                                                                            4)})


def _prepare_folder(config: ExtractConfig, spec: EncoderSpec, codebook: kmeans.Codebook,
                    all_records: Callable[..., Iterator[dict[str, Any]]], from_manifest: bool) -> int:
    """The output folder's units.json, written by the first process and checked by every later one (the others of
    an array, a requeued job, a re-run); the number of utterances.

    The manifest is read line by line and checked once: a later process whose manifest is the one units.json
    stamps (size, modification time, and its first and last bytes) takes the count and the ids' digest from there.
    The checked pass is some 19 minutes at Libri-Light's 21M segments (docs/BENCHMARKS.md), which every process of
    an array spent before its first shard."""
    out = Path(config.out)
    header_path = out / "units.json"
    previous = jobs.read_json(header_path) if header_path.exists() else None
    stamp = manifest_stamp(config.manifest) if from_manifest else None
    offsets = None  # computed with the checked pass, written once the header is known to be this folder's
    if stamp and previous and previous.get("manifest_stamp") == stamp and "num_utterances" in previous:
        num_records, ids_digest = previous["num_utterances"], previous["utterance_ids_sha256"]
    else:
        hashed, num_records = hashlib.sha256(), 0
        for record in all_records(checked=True):
            hashed.update(("\n" if num_records else "").encode() + record["id"].encode())
            num_records += 1
        ids_digest = hashed.hexdigest()
        if stamp:
            offsets = _shard_offsets(config.manifest, config.shard_size)
            if len(offsets) != -(-num_records // config.shard_size):  # not as the readers count: none kept
                offsets = None
    (out / "shards").mkdir(parents=True, exist_ok=True)
    header = {"encoder": asdict(spec), "frame_rate_hz": codebook.meta.get("frame_rate_hz"),
              "codebook": jobs.portable_path(kmeans.codebook_path(config.codebook), out),
              "codebook_sha256": codebook.sha256,
              "k": codebook.k, "shard_size": config.shard_size,
              "manifest": jobs.portable_path(config.manifest, out) if from_manifest else config.manifest,
              "num_shards": -(-num_records // config.shard_size),  # read_units checks they are all there
              "num_utterances": num_records,
              "utterance_ids_sha256": ids_digest,  # of the ids joined by newlines
              **({"manifest_stamp": stamp} if stamp else {})}
    if offsets is not None:
        header["shard_offsets_sha256"] = hashlib.sha256(offsets.tobytes()).hexdigest()
    if previous is None:
        _write_offsets(out, offsets)
        jobs.write_json(header_path, header)
        return num_records
    recorded = EncoderSpec.recorded(previous.get("encoder"))
    if recorded is not None:  # a field recorded since (edge_pad) is at its default, not a difference
        previous["encoder"] = asdict(recorded)
    # Keys an older folder lacks (num_shards) are not a difference; nor is the manifest's path or stamp (the same
    # ids from a moved or touched manifest).
    changed = [key for key in header if key not in ("manifest", "codebook", "manifest_stamp", "shard_offsets_sha256")
               and key in previous and previous[key] != header[key]]
    if changed:
        raise ValueError(f"{out} holds units made with other settings ({', '.join(changed)} differ); "
                         f"extract into a new --out folder")
    if stamp and previous.get("manifest_stamp") != stamp:
        _write_offsets(out, offsets)
        merged = {**previous, **header}  # checked again: the next process need not be
        if offsets is None:
            merged.pop("shard_offsets_sha256", None)  # the offsets there were of the manifest as it was
        jobs.write_json(header_path, merged)
    return num_records


def _write_offsets(out: Path, offsets: np.ndarray | None) -> None:
    if offsets is not None:
        with jobs.atomic_path(out / SHARD_OFFSETS) as temporary:
            np.save(temporary, offsets)


def manifest_stamp(manifest: str | os.PathLike, ends: int = 1 << 16) -> dict[str, Any]:
    """What tells a manifest from an edited one without reading it: its size, modification time, and the digest
    of its first and last 64 KiB."""
    path = Path(manifest)
    if path.is_dir():  # as the manifest's own reader says it
        raise ValueError(f"{path}: a folder, not a manifest (.jsonl)")
    status = path.stat()
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read(ends))
        handle.seek(max(0, status.st_size - ends))
        digest.update(handle.read(ends))
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "ends_sha256": digest.hexdigest()}


def extract_on_slurm(config: ExtractConfig) -> ExtractReport:
    """`extract_units` as a job array through submitit, one job per shard index; waits, then reports."""
    import dataclasses

    started = time.perf_counter()
    # The folder's header first, here: the manifest is checked once, and a bad line stops the array before any job
    # is queued, where each of its jobs would check the whole manifest and fail alike.
    codebook = kmeans.Codebook.load(config.codebook)
    _prepare_folder(config, codebook_encoder(codebook, config.codebook, config.model_path), codebook,
                    lambda checked=False: _records(config.manifest, checked=checked), from_manifest=True)
    written_before = _shards_present(Path(config.out))[0]
    executor = jobs.submitit_executor(Path(config.out) / "submitit", config.cluster, timeout_min=config.timeout_min,
                                      gpus_per_node=config.gpus_per_node, cpus_per_task=config.cpus_per_task,
                                      slurm_partition=config.slurm_partition, max_requeues=config.max_requeues)
    shares = [dataclasses.replace(config, executor="here", shard_index=index) for index in range(config.num_shards)]
    submitted = executor.map_array(jobs.Resumable(extract_units), shares)
    failures = jobs.job_failures([(f"shard index {index}", job) for index, job in enumerate(submitted)],
                                 "units extract jobs")
    if failures:
        raise jobs.JobsFailed(f"{config.out}: {len(failures)} of {config.num_shards} jobs failed: "
                              f"{'; '.join(failures)}; re-run to redo only their shards")
    # All done: the whole folder's counts, with the array's shards, time and half-precision check, not those of the
    # call that counts them (which finds every shard written).
    counted = extract_units(dataclasses.replace(config, executor="here", shard_index=0))
    agreements = [job.results()[0].half_precision_agreement for job in submitted]  # the first task's
    report = replace(counted, num_shards_done_now=counted.num_shards_present - written_before,
                     wall_sec=round(time.perf_counter() - started, 3),
                     half_precision_agreement=min((a for a in agreements if a is not None), default=None))
    _write_report(report, config)
    return report


# Every shard line is written by json.dumps with its id first, so a reader after some ids can skip the others
# without parsing their units (a part of a sharded `sequences build` reads the whole folder for its share).
_LINE_ID = re.compile(r'\{"id": ("(?:[^"\\]|\\.)*")')


def _iter_shard_lines(out: Path, ids: Container[str] | None = None) -> Iterator[dict[str, Any]]:
    """The shard lines in order; with `ids`, only those of these utterances."""
    for shard in sorted((out / "shards").glob("shard-*.jsonl")):
        with open(shard, encoding="utf-8") as handle:
            for text in handle:
                if ids is not None:
                    match = _LINE_ID.match(text)
                    if match and json.loads(match.group(1)) not in ids:
                        continue
                line = json.loads(text)
                if ids is None or line.get("id") in ids:
                    yield line


def _shards_present(out: Path) -> tuple[int, int | None]:
    """Shards written in an extraction folder, and how many it has in all (None: an older folder that does not
    say)."""
    header = out / "units.json"
    expected = jobs.read_json(header).get("num_shards") if header.exists() else None
    return len(list((out / "shards").glob("shard-*.jsonl"))), expected


def units_complete(out: str | os.PathLike) -> bool:
    """Whether an extraction folder holds every shard it was started for (nothing left to extract)."""
    present, expected = _shards_present(Path(out))
    return expected is not None and present >= expected


def read_units(out: str | os.PathLike, ids: Container[str] | None = None) -> Iterator[UtteranceUnits]:
    """The extracted units of every successfully encoded utterance (or of those in `ids`), in manifest order.

    A folder some of whose shards are missing (an extraction split over processes, not all done) is refused:
    reading part of a corpus as the whole of it would be a silent wrong result."""
    present, expected = _shards_present(Path(out))
    if expected is not None and present < expected:
        raise ValueError(f"{out}: {present} of {expected} shards extracted; finish the extraction (every "
                         f"--shard-index of --num-shards) before reading it")
    for line in _iter_shard_lines(Path(out), ids):
        if "skipped" not in line:
            yield UtteranceUnits(id=line["id"], units=np.asarray(line["units"], dtype=np.int32),
                                 durations=np.asarray(line["durations"], dtype=np.int32),
                                 frame_rate_hz=float(line["frame_rate_hz"]))


@dataclass(frozen=True, kw_only=True)
class ConvertConfig(Config):
    """What `simslm units convert` does."""

    pickle: str
    """A published pickled scikit-learn k-means (e.g. TWIST / mHuBERT km500.bin)."""
    out: str
    """Codebook path to write (<out>.npy + <out>.json)."""
    encoder: str = field(default="mhubert-25hz", metadata=registry_choices(ENCODERS))
    """Encoder whose features the k-means was fit on."""
    model_path: str | None = None
    """HuBERT checkpoint (default: the encoder's)."""
    layer: int | None = None
    """HuBERT layer (default: the encoder's)."""
    edge_pad: int | None = None
    """Zero samples added at each end of the audio before a HuBERT encoder (default: slamkit's 40, which its
    extraction and evaluation add; 0 for units made by tools that add none). Recorded with the codebook."""
    resampler: str | None = field(default=None, metadata=registry_choices(RESAMPLERS))
    """How audio not at 16 kHz is resampled: sinc-hann (torchaudio's default, which slamkit's extraction uses;
    the default for HuBERT encoders) or soxr (libsoxr's HQ; logmel's default). Recorded with the codebook."""
    trust_pickle: bool = False
    """Allow unpickling the file once (it can run code): only for files from a source you trust."""

    def check(self) -> None:
        check_output_file(self, "out", "the codebook (OUT.npy and OUT.json)", kmeans.codebook_path(self.out))
        check_not_input(self, "out", "pickle", "the pickle being converted, which the codebook's files would replace",
                        kmeans.codebook_files(self.out))


def convert_codebook(config: ConvertConfig) -> Path:
    """Turn a pickled k-means into a plain codebook that records its encoder."""
    spec = EncoderSpec.standard(config.encoder, config.model_path, config.layer, config.edge_pad,
                                config.resampler)
    meta = {"encoder": asdict(spec), "frame_rate_hz": ENCODERS[config.encoder][0]}
    return kmeans.convert_pickled(config.pickle, config.out, trust_pickle=config.trust_pickle, meta=meta)


@dataclass(frozen=True, kw_only=True)
class ImportConfig(Config):
    """What `simslm units import` does: units extracted by slamkit, as a units folder."""

    features: str
    """slamkit's `extract_features` output: JSONL lines of file_name, units and duration (run lengths)."""
    out: str
    """Output folder (as `simslm units extract` writes it); utterance ids are the audio files' stems."""
    encoder: str = field(default="mhubert-25hz", metadata=registry_choices(ENCODERS))
    """Encoder the units came from (its frame rate times the run lengths)."""
    num_units: int = 500
    """Size of the codebook the units came from."""
    codebook: str | None = None
    """That codebook as a .npy (e.g. from `simslm units convert`), so benchmark audio is encoded the same way."""
    shard_size: int = 1024
    """Utterances per shard."""

    def check(self) -> None:
        check_positive(self, "num_units", "shard_size")


def import_slamkit_features(config: ImportConfig) -> dict[str, Any]:
    """Write slamkit's features JSONL as a units folder; lines that cannot be units are skipped and counted."""
    # The codebook and the folder first: a features file of a corpus is millions of lines, read for nothing when
    # the command is refused after them (and a codebook of another size made every line "outside 0..K-1").
    codebook = kmeans.Codebook.load(config.codebook) if config.codebook else None
    if codebook is not None and codebook.k != config.num_units:
        raise ValueError(f"{config.codebook}: {codebook.k} centroids, but --num-units is {config.num_units}")
    recorded = EncoderSpec(**codebook.meta["encoder"]) if codebook is not None and codebook.meta.get("encoder") else None
    if recorded is not None and recorded.name != "logmel":
        # A codebook converted before edge padding (or the resampler) was recorded reads as 0 (soxr): benchmarks
        # would be encoded unlike these units.
        unlike = [f"with {recorded.edge_pad} zero samples at each end, where slamkit's extraction of these units "
                  f"added {SLAMKIT_EDGE_PAD}"] if recorded.edge_pad != SLAMKIT_EDGE_PAD else []
        unlike += [f"resampled by {recorded.resampler}, where slamkit's extraction resampled by torchaudio's "
                   f"default ({SLAMKIT_RESAMPLER})"] if recorded.resampler != SLAMKIT_RESAMPLER else []
        if unlike:
            print(f"simslm units import: warning: {config.codebook} encodes audio {'; and '.join(unlike)}: benchmark "
                  f"audio would not be encoded as they were; `simslm units convert` its k-means again",
                  file=sys.stderr)
    out = Path(config.out)
    if (out / "units.json").exists():
        raise ValueError(f"{out} already holds units; import into a new --out folder")
    jobs.check_replaceable(out, None, "", "import into a new --out folder")  # replaced whole below
    frame_rate = ENCODERS[config.encoder][0]
    lines, skipped = [], collections.Counter()
    seen: set[str] = set()
    with open(config.features, encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                record = json.loads(raw)
                units = np.asarray(record["units"], dtype=np.int64)
                durations = np.asarray(record["duration"], dtype=np.int64)
                identifier = Path(record["file_name"]).stem
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped["not a features line (file_name, units, duration)"] += 1
                continue
            if len(units) != len(durations) or not len(units) or (durations < 1).any():
                skipped["units and durations do not match"] += 1
            elif units.min() < 0 or units.max() >= config.num_units:
                skipped[f"unit ids outside 0..{config.num_units - 1}"] += 1
            elif identifier in seen:
                skipped["file name seen before"] += 1
            else:
                seen.add(identifier)
                lines.append({"id": identifier, "frame_rate_hz": frame_rate, "units": units.tolist(),
                              "durations": durations.tolist()})
    if not lines:
        raise ValueError(f"{config.features}: no usable line ({dict(skipped) or 'empty file'})")
    with jobs.atomic_path(out) as building:
        (building / "shards").mkdir(parents=True)
        for index, start in enumerate(range(0, len(lines), config.shard_size)):
            jobs.write_text(building / "shards" / f"shard-{index:05d}.jsonl",
                            "".join(json.dumps(line) + "\n" for line in lines[start:start + config.shard_size]))
        jobs.write_json(building / "units.json", {
            # slamkit extracted them, with its edge padding: benchmark audio encoded with the codebook pads alike.
            "encoder": asdict(EncoderSpec.standard(config.encoder)), "frame_rate_hz": frame_rate,
            "codebook": jobs.portable_path(config.codebook, out) if config.codebook else None,
            "codebook_sha256": codebook.sha256 if codebook else None,
            "k": config.num_units, "manifest": None, "imported_from": jobs.portable_path(config.features, out),
            "shard_size": config.shard_size})
    return {"num_imported": len(lines), "num_skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped),
            "out": str(out)}
