"""Codebooks to extract with: fitted on a corpus's features (`units fit`) or converted from a published k-means.

As in the paper, 500 units of k-means over encoder features (`kmeans` does the clustering
and keeps the file format). The fit samples utterances and frames with a seed, encodes them
with the encoder extraction will use, and records that encoder, the corpus's hash and what
it skipped in the codebook's sidecar; `units convert` records the encoder of a published
pickled k-means (TWIST's km500) the same way.
"""

from __future__ import annotations

import collections
import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from simslm import jobs, machine, storage
from simslm.config import Config, check_device, check_not_input, check_output_file, check_positive, registry_choices
from simslm.speech import audio
from simslm.speech.audio import RESAMPLERS
from simslm.speech.manifest import iter_utterances, manifest_folder
from simslm.units import kmeans
from simslm.units.encoders import ENCODERS, EncoderSpec
from simslm.units.extract import cached_encoder, manifest_records, skip_reason, worker_count
from simslm.units.journal import ENDED_THE_PROCESS


@dataclass(frozen=True, kw_only=True)
class EncoderOptions(Config):
    """The encoder a codebook is made for, as `units fit` and `units convert` take it and the codebook records it."""

    encoder: str
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

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec.standard(self.encoder, self.model_path, self.layer, self.edge_pad, self.resampler)


@dataclass(frozen=True, kw_only=True)
class FitConfig(EncoderOptions):
    """What `simslm units fit` does."""

    renamed: ClassVar[dict[str, str]] = {"k": "num_units"}

    manifest: str
    """Manifest of the corpus to fit on."""
    out: str
    """Codebook path (<out>.npy + <out>.json)."""
    encoder: str = field(default="logmel", metadata=registry_choices(ENCODERS))
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


def fit_codebook(config: FitConfig) -> Path:
    """Fit a k-means codebook on encoder features sampled across a corpus."""
    spec = config.encoder_spec()
    device = machine.torch_device(config.device)
    num_records = sum(1 for _ in iter_utterances(config.manifest))  # checked whole, streamed
    rng = np.random.default_rng(config.seed)
    chosen = (set(rng.choice(num_records, config.max_utterances, replace=False).tolist())
              if num_records > config.max_utterances else range(num_records))
    # Resolved, as the corpus hash has always taken them (symbolic links followed).
    records = [{**record, "path": str(Path(record["path"]).resolve())}
               for number, record in enumerate(manifest_records(config.manifest)) if number in chosen]
    # Two fits into one codebook would write it at once and share its task journal: the second is refused.
    with storage.exclusive_lock(_beside_codebook(config.out, "lock"),
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
            "manifest": storage.portable_path(config.manifest, Path(config.out).parent),
            "num_utterances": len(used), "num_frames": int(len(stacked)),
            "num_skipped": len(skipped), "skipped_by_reason": dict(collections.Counter(skipped.values())),
            "backend": backend, "seed": config.seed}
    return kmeans.Codebook(centroids, meta).save(config.out)


def _encode_sample(config: FitConfig, spec: EncoderSpec, records: list[dict[str, Any]], device: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The sampled features of each utterance of `records` that could be encoded, and the reason for each skipped.

    A fit is not resumable and draws the same seeded sample every time, so an utterance whose encoding ends the
    process (the OOM killer under a job's memory limit) would end every fit: the task journal beside the codebook
    names it, and skips it once it has done so `DEATHS_TO_SKIP` times, in this fit and in later ones into the same
    codebook (the journal keeps the deaths of those skipped)."""
    workers = worker_count(config.num_workers, device, len(records))
    tasks = [(record, asdict(spec), config.max_frames_per_utterance, config.seed, workers, device)
             for record in records]
    journal = jobs.TaskJournal(_beside_codebook(config.out, "running"), key=lambda task: task[0]["id"],
                               skipped=lambda task, _: (task[0]["id"], ENDED_THE_PROCESS))  # as extraction says it
    encoded, skipped = {}, {}
    for utterance_id, result in jobs.parallel_map(_encode_for_fit, tasks, num_workers=workers, total=len(tasks),
                                                  description="units fit: encode", journal=journal):
        (skipped if isinstance(result, str) else encoded)[utterance_id] = result
    return encoded, skipped


def _encode_for_fit(task: tuple[dict[str, Any], dict[str, Any], int, int, int, str]
                    ) -> tuple[str, np.ndarray | str]:
    record, spec, max_frames, seed, num_workers, device = task
    encoder = cached_encoder(spec, device, "float32")
    machine.share_cores(num_workers)
    try:
        samples = audio.load_audio(record["path"], resampler=spec["resampler"])
        features = encoder.encode(samples)
    except (audio.AudioError, ValueError) as error:
        return record["id"], skip_reason(error)
    if len(features) > max_frames:
        rng = np.random.default_rng([seed, int(hashlib.sha256(record["id"].encode()).hexdigest()[:8], 16)])
        features = features[np.sort(rng.choice(len(features), max_frames, replace=False))]
    return record["id"], features


MIN_FRAMES_PER_UNIT = 10


def corpus_hash(records: list[dict[str, Any]], root: str | os.PathLike) -> str:
    """Short sha256 over the ids and audio paths (relative to `root`, the manifest's folder, so that a corpus
    moved elsewhere hashes the same) of the utterances a codebook was fit on."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r["id"]):
        digest.update(f"{record['id']}\t{Path(os.path.relpath(record['path'], Path(root).resolve())).as_posix()}\n"
                      .encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class ConvertConfig(EncoderOptions):
    """What `simslm units convert` does."""

    pickle: str
    """A published pickled scikit-learn k-means (e.g. TWIST / mHuBERT km500.bin)."""
    out: str
    """Codebook path to write (<out>.npy + <out>.json)."""
    encoder: str = field(default="mhubert-25hz", metadata=registry_choices(ENCODERS))
    """Encoder whose features the k-means was fit on."""
    trust_pickle: bool = False
    """Allow unpickling the file once (it can run code): only for files from a source you trust."""

    def check(self) -> None:
        check_output_file(self, "out", "the codebook (OUT.npy and OUT.json)", kmeans.codebook_path(self.out))
        check_not_input(self, "out", "pickle", "the pickle being converted, which the codebook's files would replace",
                        kmeans.codebook_files(self.out))


def convert_codebook(config: ConvertConfig) -> Path:
    """Turn a pickled k-means into a plain codebook that records its encoder."""
    spec = config.encoder_spec()
    meta = {"encoder": asdict(spec), "frame_rate_hz": ENCODERS[config.encoder][0]}
    return kmeans.convert_pickled(config.pickle, config.out, trust_pickle=config.trust_pickle, meta=meta)

