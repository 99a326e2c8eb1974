"""A units folder, as `units extract` and `units import` write it, and its readers.

`units.json` records where the units came from (`UnitSource`: the encoder, its settings and
the codebook), and `shards/shard-NNNNN.jsonl` hold one line per utterance: its units with
consecutive repeats removed and their run lengths in encoder frames (`deduplicate`), so the
frame sequence, and with it the time of every unit, can be rebuilt exactly (`expand`): later
stages map word timings onto units with it. `read_units` refuses a folder whose shards are
not all there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Container, Iterator

import numpy as np

from simslm import storage
from simslm.units.encoders import ENCODERS, EncoderSpec


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
            data = storage.read_json(header)
            codebook = data.get("codebook")
            return cls(encoder=data["encoder"],
                       codebook=storage.placed_path(codebook, header.parent) if codebook else None,
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
                "codebook": storage.portable_path(codebook, folder) if codebook else None,
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
    recorded = storage.read_json(header).get("manifest_stamp") if header.exists() else None
    return recorded is not None and recorded == manifest_stamp(manifest)


def unit_source(units_folder: str | os.PathLike) -> UnitSource:
    """The encoder and codebook of a `simslm units extract` (or `units import`) folder."""
    return UnitSource.read(Path(units_folder) / "units.json")


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


def shards_present(out: Path) -> tuple[int, int | None]:
    """Shards written in an extraction folder, and how many it has in all (None: an older folder that does not
    say)."""
    header = out / "units.json"
    expected = storage.read_json(header).get("num_shards") if header.exists() else None
    return len(list((out / "shards").glob("shard-*.jsonl"))), expected


def units_complete(out: str | os.PathLike) -> bool:
    """Whether an extraction folder holds every shard it was started for (nothing left to extract)."""
    present, expected = shards_present(Path(out))
    return expected is not None and present >= expected


def read_units(out: str | os.PathLike, ids: Container[str] | None = None) -> Iterator[UtteranceUnits]:
    """The extracted units of every successfully encoded utterance (or of those in `ids`), in manifest order.

    A folder some of whose shards are missing (an extraction split over processes, not all done) is refused:
    reading part of a corpus as the whole of it would be a silent wrong result."""
    present, expected = shards_present(Path(out))
    if expected is not None and present < expected:
        raise ValueError(f"{out}: {present} of {expected} shards extracted; finish the extraction (every "
                         f"--shard-index of --num-shards) before reading it")
    for line in _iter_shard_lines(Path(out), ids):
        if "skipped" not in line:
            yield UtteranceUnits(id=line["id"], units=np.asarray(line["units"], dtype=np.int32),
                                 durations=np.asarray(line["durations"], dtype=np.int32),
                                 frame_rate_hz=float(line["frame_rate_hz"]))

