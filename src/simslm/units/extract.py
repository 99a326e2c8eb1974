"""Speech units extracted: audio -> encoder features -> k-means ids -> deduplicated units with durations.

As in the paper (mHuBERT-25Hz, layer 11, 500 k-means units, consecutive duplicates
removed), with an offline `logmel` encoder at the same 25 Hz. `extract_units` encodes a
manifest's utterances shard by shard into a units folder (`folder`), resumable, split over
processes (`--num-shards`, a SLURM array through submitit) and over workers, each shard's
journal (`journal`) guarding against an utterance that ends its process. `units import`
writes slamkit's extracted units as such a folder.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Iterator, Literal

import numpy as np

from simslm import jobs, machine, slurm, storage
from simslm.config import Config, ConfigError, check_device, check_positive, registry_choices
from simslm.speech import audio
from simslm.speech.manifest import iter_utterances, manifest_folder
from simslm.units import kmeans
from simslm.units.encoders import ENCODERS, SLAMKIT_EDGE_PAD, SLAMKIT_RESAMPLER, EncoderSpec, build_encoder
from simslm.units.folder import deduplicate, manifest_stamp, shards_present
from simslm.units.journal import DEATHS_TO_SKIP, ENDED_THE_PROCESS, Deaths, ShardJournal, with_what_was_encoded


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
    max_requeues: int = slurm.MAX_REQUEUES
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
        return machine.launcher_shard(self.num_shards) if self.shard_index is None else self.shard_index


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


def extract_units(config: ExtractConfig, records: list[dict[str, Any]] | None = None) -> ExtractReport:
    """Encode, assign and deduplicate every utterance of a manifest; resumable shard by shard.

    `records` ({id, path, duration_sec} each) replaces the manifest's utterances: benchmark
    audio goes through the same sharded, resumable extraction without a manifest.
    """
    started = time.perf_counter()
    codebook = kmeans.Codebook.load(config.codebook)
    spec = codebook_encoder(codebook, config.codebook, config.model_path)
    device = machine.torch_device(config.device)
    if spec.name == "logmel" and config.dtype != "float32":
        raise ValueError(f"--dtype {config.dtype}: the logmel encoder computes in float32 (numpy); --dtype is for "
                         f"HuBERT encoders")
    from_manifest = records is None  # else `manifest` only describes the records (benchmark audio)
    given = records

    def all_records(checked: bool = False) -> Iterator[dict[str, Any]]:
        """Streamed up to three times: checked, for the header (unless units.json stamps this manifest); for the
        work (unless units.json's shard offsets let each shard be read alone); for the totals (once the folder is
        whole)."""
        return manifest_records(config.manifest, checked=checked) if from_manifest else iter(given)

    out = Path(config.out)
    created = not out.exists()  # only a folder made here is removed after a failure
    num_records = _prepare_folder(config, spec, codebook, all_records, from_manifest)
    num_shard_files = -(-num_records // config.shard_size)
    shard_paths = [out / "shards" / f"shard-{i:05d}.jsonl" for i in range(num_shard_files)]
    mine = config.this_shard()
    todo = [i for i in range(num_shard_files) if i % config.num_shards == mine and not shard_paths[i].exists()]
    workers = worker_count(config.num_workers, device, len(todo))
    if todo:
        encoder = cached_encoder(asdict(spec), device, config.dtype)
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
        raise with_what_was_encoded(error, out / "shards", "those are encoded one at a time, and one that ends "
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
        totals = _summed(shard_totals(map(json.loads, storage.read_text(path).splitlines()), shard)
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
    previous = storage.read_json(header_path) if header_path.exists() else None
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
              "codebook": storage.portable_path(kmeans.codebook_path(config.codebook), out),
              "codebook_sha256": codebook.sha256,
              "k": codebook.k, "shard_size": config.shard_size,
              "manifest": storage.portable_path(config.manifest, out) if from_manifest else config.manifest,
              "num_shards": -(-num_records // config.shard_size),  # read_units checks they are all there
              "num_utterances": num_records,
              "utterance_ids_sha256": ids_digest,  # of the ids joined by newlines
              **({"manifest_stamp": stamp} if stamp else {})}
    if offsets is not None:
        header["shard_offsets_sha256"] = hashlib.sha256(offsets.tobytes()).hexdigest()
    if previous is None:
        _write_offsets(out, offsets)
        storage.write_json(header_path, header)
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
        storage.write_json(header_path, merged)
    return num_records


def _write_offsets(out: Path, offsets: np.ndarray | None) -> None:
    if offsets is not None:
        with storage.atomic_path(out / SHARD_OFFSETS) as temporary:
            np.save(temporary, offsets)


def _write_report(report: ExtractReport, config: ExtractConfig) -> None:
    storage.write_json(Path(report.out) / "report.json", {**asdict(report), "config": asdict(config),
                                                       "dedup_ratio": round(report.num_frames / max(1, report.num_units),
                                                                            4)})


def extract_on_slurm(config: ExtractConfig) -> ExtractReport:
    """`extract_units` as a job array through submitit, one job per shard index; waits, then reports."""
    import dataclasses

    started = time.perf_counter()
    # The folder's header first, here: the manifest is checked once, and a bad line stops the array before any job
    # is queued, where each of its jobs would check the whole manifest and fail alike.
    codebook = kmeans.Codebook.load(config.codebook)
    _prepare_folder(config, codebook_encoder(codebook, config.codebook, config.model_path), codebook,
                    lambda checked=False: manifest_records(config.manifest, checked=checked), from_manifest=True)
    written_before = shards_present(Path(config.out))[0]
    executor = slurm.submitit_executor(Path(config.out) / "submitit", config.cluster, timeout_min=config.timeout_min,
                                       gpus_per_node=config.gpus_per_node, cpus_per_task=config.cpus_per_task,
                                       slurm_partition=config.slurm_partition, max_requeues=config.max_requeues)
    shares = [dataclasses.replace(config, executor="here", shard_index=index) for index in range(config.num_shards)]
    submitted = executor.map_array(slurm.Resumable(extract_units), shares)
    failures = slurm.job_failures([(f"shard index {index}", job) for index, job in enumerate(submitted)],
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


_worker_cache: dict[str, Any] = {}


def _cached(key: str, build: Callable[[], Any]) -> Any:
    """One encoder / codebook per worker process (a HuBERT load takes seconds)."""
    if key not in _worker_cache:
        _worker_cache[key] = build()
    return _worker_cache[key]


def worker_count(asked: int, device: str, num_tasks: int) -> int:
    """Worker processes: as asked, else one per core on the CPU and one on a GPU (workers beside it would only
    queue for the same device); never more than there are tasks."""
    return min(asked or (1 if device.startswith("cuda") else machine.default_workers()), max(1, num_tasks))


def manifest_records(manifest: str | os.PathLike, *, checked: bool = False) -> Iterator[dict[str, Any]]:
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
        lines = (json.loads(line) for line, _ in storage.text_lines(manifest) if line.strip())
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
    header = storage.read_json(out / "units.json")
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


@dataclass(frozen=True)
class _Runtime:
    """How a worker runs its encoder: where, in what precision, how many utterances at a time."""

    device: str
    dtype: str
    batch_size: int
    min_agreement: float


def cached_encoder(spec: dict[str, Any], device: str, dtype: str):
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


def _read_shard(records: list[dict[str, Any]], threads: int, resampler: str, journal: "ShardJournal",
                earlier: "Deaths") -> list[np.ndarray | audio.AudioError | None]:
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
    journal = ShardJournal.of(Path(shard_path))
    # The shard is this process's while it holds the shard's lock: another process extracting into the same folder
    # (the same command run twice, an evaluation's cache filled by two runs at once) leaves it alone. Without it
    # each read the other's live attempt in the journal as a process that had died there, encoded its utterances
    # again one at a time, and a third skipped an utterance "that ended the process twice", the shard written
    # without it. Held, the journal's attempts are all of processes that have ended.
    elsewhere = shard_index, {"agreement": None, "totals": _summed([]), "elsewhere": True}
    held = contextlib.ExitStack()
    try:
        held.enter_context(storage.exclusive_lock(journal.path.with_name(f".{Path(shard_path).stem}.lock"),
                                                  f"{shard_path}: being extracted by another process"))
    except storage.Busy:
        return elsewhere
    with held:
        if Path(shard_path).exists():  # written by another process since this one listed what was left
            return elsewhere
        return _extract_held_shard(shard_index, records, spec, codebook_path, shard_path, num_workers, run,
                                   journal)


def _extract_held_shard(shard_index: int, records: list[dict[str, Any]], spec: dict[str, Any], codebook_path: str,
                        shard_path: str, num_workers: int, run: _Runtime, journal: "ShardJournal"
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
                  shard_path: Path, num_workers: int, run: _Runtime, journal: "ShardJournal",
                  earlier: "Deaths") -> tuple[int, dict]:
    encoder = cached_encoder(spec, run.device, run.dtype)
    threads = machine.share_cores(num_workers)
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
            lines[position] = {"id": record["id"], "skipped": str(samples), "reason": skip_reason(samples)}
        else:
            loaded.append(samples)
            where.append(position)
    agreement = None
    if run.dtype != "float32" and loaded:
        # Half precision is used only where it gives the same units: checked on this shard's first utterances.
        first = encoder.batches([len(samples) for samples in loaded], run.batch_size)[0]
        agreement = _half_precision_agreement(encoder, cached_encoder(spec, run.device, "float32"),
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
            lines[position] = {"id": record["id"], "skipped": str(features), "reason": skip_reason(features)}
            continue
        units, durations = deduplicate(codebook.assign(features))
        lines[position] = {"id": record["id"], "frame_rate_hz": encoder.frame_rate_hz,
                           "units": units.tolist(), "durations": durations.tolist()}
    totals = shard_totals(lines, records)
    # Its counts first, then the shard (whose presence marks it done): a present shard has them beside it.
    storage.write_json(_totals_path(shard_path), totals)
    storage.write_text(shard_path, "".join(json.dumps(line) + "\n" for line in lines))
    return shard_index, {"totals": totals, "agreement": agreement}


def _totals_path(shard_path: Path) -> Path:
    """Where a shard's counts are kept (`shard-NNNNN.totals.json`, which the readers' `shard-*.jsonl` skips)."""
    return shard_path.with_name(shard_path.name.removesuffix(".jsonl") + ".totals.json")


def _read_totals(shard_path: Path) -> dict[str, Any]:
    totals = storage.read_json(_totals_path(shard_path))
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


def skip_reason(error: Exception) -> str:
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
    storage.check_replaceable(out, None, "", "import into a new --out folder")  # replaced whole below
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
    with storage.atomic_path(out) as building:
        (building / "shards").mkdir(parents=True)
        for index, start in enumerate(range(0, len(lines), config.shard_size)):
            storage.write_text(building / "shards" / f"shard-{index:05d}.jsonl",
                               "".join(json.dumps(line) + "\n" for line in lines[start:start + config.shard_size]))
        storage.write_json(building / "units.json", {
            # slamkit extracted them, with its edge padding: benchmark audio encoded with the codebook pads alike.
            "encoder": asdict(EncoderSpec.standard(config.encoder)), "frame_rate_hz": frame_rate,
            "codebook": storage.portable_path(config.codebook, out) if config.codebook else None,
            "codebook_sha256": codebook.sha256 if codebook else None,
            "k": config.num_units, "manifest": None, "imported_from": storage.portable_path(config.features, out),
            "shard_size": config.shard_size})
    return {"num_imported": len(lines), "num_skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped),
            "out": str(out)}

