"""How much phonetic information units carry: PNMI and purities against phone labels.

Definitions follow the HuBERT paper (Hsu et al. 2021, section IV-B) and fairseq's
`examples/hubert/measure_teacher_quality.py` ("ref pur" and "hyp pur"): with the joint
distribution P(phone, unit) over frames,
- phone-normalised mutual information PNMI = I(phone; unit) / H(phone);
- phone purity   = E_unit[max_phone P(phone | unit)]: the frame phone accuracy of naming each
  unit by its likeliest phone, which rises with the number of units (1 at a unit per frame);
- cluster purity = E_phone[max_unit P(unit | phone)]: how much of each phone its likeliest
  unit covers, which falls as the units grow more.
Phone labels for each unit frame come from a pocketsphinx phone alignment (at the unit
frame's centre). A baseline with the unit labels shuffled across frames (same marginals,
no relation to the phones) shows what chance gives.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import jobs
from simslm.config import Config, check_positive
from simslm.speech import audio
from simslm.speech.align import AlignmentError
from simslm.speech.manifest import read_manifest
from simslm.units.extract import UtteranceUnits, read_units


def phone_unit_scores(phones: np.ndarray, units: np.ndarray) -> dict[str, float]:
    """PNMI, cluster purity and phone purity of frame-aligned integer label arrays."""
    if len(phones) != len(units) or len(phones) == 0:
        raise ValueError("phones and units must be non-empty and of equal length")
    _, phone_ids = np.unique(phones, return_inverse=True)
    _, unit_ids = np.unique(units, return_inverse=True)
    joint = np.zeros((phone_ids.max() + 1, unit_ids.max() + 1))
    np.add.at(joint, (phone_ids, unit_ids), 1.0)
    joint /= joint.sum()
    p_phone, p_unit = joint.sum(axis=1), joint.sum(axis=0)
    nonzero = joint > 0
    mutual_information = float((joint[nonzero] * np.log(joint[nonzero] / np.outer(p_phone, p_unit)[nonzero])).sum())
    phone_entropy = float(-(p_phone * np.log(p_phone)).sum())
    # Rows are phones, columns units: the best phone of each unit (max over rows) gives the phone purity.
    return {"pnmi": mutual_information / phone_entropy if phone_entropy > 0 else 0.0,
            "phone_purity": float(joint.max(axis=0).sum()),
            "cluster_purity": float(joint.max(axis=1).sum())}


def frame_phone_labels(timed_phones: list[tuple[str, float, float]], num_frames: int,
                       frame_rate_hz: float) -> np.ndarray:
    """The phone at the centre of each unit frame ('SIL' where none is aligned)."""
    centres = (np.arange(num_frames) + 0.5) / frame_rate_hz
    labels = np.full(num_frames, "SIL", dtype=object)
    for name, start, end in timed_phones:
        labels[(centres >= start) & (centres < end)] = name
    return labels


_aligner = None


def _label_one(task: tuple[str, str, str]) -> tuple[str, list | str]:
    global _aligner  # one pocketsphinx decoder per worker process
    utterance_id, path, transcript = task
    from simslm.speech.align import PocketsphinxAligner

    try:
        if _aligner is None:
            _aligner = PocketsphinxAligner()
        return utterance_id, _aligner.phones(audio.load_audio(path), transcript)
    except (AlignmentError, audio.AudioError) as error:
        return utterance_id, str(error)


@dataclass(frozen=True, kw_only=True)
class QualityConfig(Config):
    """What `simslm units quality` does."""

    manifest: str
    """Manifest the units were extracted from (for audio and transcripts)."""
    units: str
    """Folder written by `simslm units extract`."""
    out: str | None = None
    """Where to write the report JSON (default: <units>/quality.json)."""
    max_utterances: int = 50
    """Phone-align at most this many utterances (pocketsphinx runs at ~50x real time)."""
    seed: int = 0
    """Seed of the shuffled-label baseline."""
    num_workers: int = 0
    """Worker processes for phone alignment; 0 = one per core."""

    def check(self) -> None:
        check_positive(self, "max_utterances")
        check_positive(self, "num_workers", allow_zero=True)


def unit_quality(config: QualityConfig) -> dict[str, Any]:
    """PNMI and purities of extracted units, a shuffled baseline, and the dedup ratio."""
    started = time.perf_counter()
    manifest = Path(config.manifest)
    utterances = {u.id: u for u in read_manifest(manifest)}
    extracted: list[UtteranceUnits] = [u for u in read_units(config.units) if u.id in utterances]
    if not extracted:
        raise ValueError(f"{config.units}: no extracted units for utterances of {manifest}")
    chosen = extracted[:config.max_utterances]
    tasks = [(u.id, str(utterances[u.id].audio_path(manifest.parent)), utterances[u.id].transcript) for u in chosen]
    workers = min(config.num_workers or jobs.default_workers(), len(tasks))
    phones_by_id, skipped = {}, {}
    for utterance_id, result in jobs.parallel_map(_label_one, tasks, num_workers=workers, total=len(tasks),
                                                  description="units quality: phone alignment"):
        (skipped if isinstance(result, str) else phones_by_id)[utterance_id] = result
    frame_phones, frame_units = [], []
    for item in chosen:
        if item.id in phones_by_id:
            frame_units.append(item.frame_units())
            frame_phones.append(frame_phone_labels(phones_by_id[item.id], item.num_frames, item.frame_rate_hz))
    if not frame_units:
        raise ValueError("no utterance could be phone-aligned")
    phones, units = np.concatenate(frame_phones), np.concatenate(frame_units)
    shuffled = np.random.default_rng(config.seed).permutation(units)
    num_frames = sum(u.num_frames for u in extracted)
    report = {
        "units": phone_unit_scores(phones, units),
        "shuffled_baseline": phone_unit_scores(phones, shuffled),
        "dedup_ratio": num_frames / sum(len(u.units) for u in extracted),
        "num_utterances_scored": len(frame_units), "num_utterances_skipped": len(skipped),
        "num_frames_scored": int(len(units)), "num_phone_labels": int(len(np.unique(phones))),
        "num_units_used": int(len(np.unique(units))), "frame_rate_hz": extracted[0].frame_rate_hz,
        "wall_sec": round(time.perf_counter() - started, 3), "config": asdict(config),
    }
    jobs.write_json(config.out or Path(config.units) / "quality.json", report)
    return report
