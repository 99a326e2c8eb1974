"""How much phonetic information units carry: PNMI and purities against phone labels.

Computed as fairseq's `examples/hubert/measure_teacher_quality.py` computes them (the HuBERT paper, Hsu et al.
2021, section IV-B; "MI/H(ref)", "ref pur" and "hyp pur" there). Phone labels come one per 10 ms frame, and each
unit frame is repeated to that rate (their `--upsample`, 4 for units at 25 Hz), each utterance cut to the shorter
of the two. With the joint distribution P(phone, unit) over those frames:
- phone-normalised mutual information PNMI = I(phone; unit) / H(phone), with their 1e-8 inside each logarithm;
- phone purity   = E_unit[max_phone P(phone | unit)]: the frame phone accuracy of naming each unit by its likeliest
  phone, which rises with the number of units (1 at a unit per frame);
- cluster purity = E_phone[max_unit P(unit | phone)]: how much of each phone its likeliest unit covers, which falls as
  the units grow more.
The phone labels are pocketsphinx's phone alignment, whose frames are 10 ms, or any given in fairseq's phone TSV
(`--phone-labels`, such as LibriSpeech's forced alignments). A baseline with the unit frames shuffled across
utterances (same marginals, no relation to the phones) shows what chance gives.
`benchmarks/side_by_side_unit_quality.py` runs fairseq's own functions beside these.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import jobs, machine, storage
from simslm.config import Config, check_not_input, check_output_file, check_positive
from simslm.speech import audio
from simslm.speech.align import AlignmentError
from simslm.speech.manifest import iter_utterances, manifest_folder
from simslm.units.folder import UtteranceUnits, read_units

PHONE_FRAME_RATE_HZ = 100.0
"""Pocketsphinx aligns in frames of 10 ms, the rate of the phone labels fairseq's script reads."""
ALIGNED_UTTERANCES = 50
"""Utterances pocketsphinx aligns when `max_utterances` is not given: it runs at ~50x real time."""


def phone_unit_scores(phones: np.ndarray, units: np.ndarray) -> dict[str, float]:
    """PNMI, cluster purity and phone purity of frame-aligned label arrays (measure_teacher_quality.py's)."""
    if len(phones) != len(units) or len(phones) == 0:
        raise ValueError("phones and units must be non-empty and of equal length")
    _, phone_ids = np.unique(phones, return_inverse=True)
    _, unit_ids = np.unique(units, return_inverse=True)
    joint = np.zeros((phone_ids.max() + 1, unit_ids.max() + 1))
    np.add.at(joint, (phone_ids, unit_ids), 1.0)
    joint /= joint.sum()
    p_phone, p_unit = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    # fairseq adds 1e-8 inside both logarithms; kept, so that the numbers are theirs to the last digit (an empty
    # cell contributes 0 * log(1e-8) = 0 either way).
    mutual_information = float((joint * np.log(joint / (p_phone @ p_unit) + 1e-8)).sum())
    phone_entropy = float((-p_phone * np.log(p_phone + 1e-8)).sum())
    # Rows are phones, columns units: the best phone of each unit (max over rows) gives the phone purity.
    return {"pnmi": mutual_information / phone_entropy if phone_entropy > 0 else 0.0,
            "phone_purity": float(joint.max(axis=0).sum()),
            "cluster_purity": float(joint.max(axis=1).sum())}


def phone_frames(timed_phones: list[tuple[str, float, float]]) -> np.ndarray:
    """One label per 10 ms frame, from 0 s to the last phone's end ('SIL' in any gap)."""
    bounds = [(name, round(start * PHONE_FRAME_RATE_HZ), round(end * PHONE_FRAME_RATE_HZ))
              for name, start, end in timed_phones]
    labels = np.full(max((end for _, _, end in bounds), default=0), "SIL", dtype=object)
    for name, start, end in bounds:
        labels[start:end] = name
    return labels


def frame_pairs(phones: np.ndarray, frame_units: np.ndarray, frame_rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """The (phone, unit) of every 10 ms frame both cover: each unit frame repeated to the phone rate, and both cut to
    the shorter, as fairseq's `read_lab(..., upsample)` and `comp_joint_prob` do. A rate that does not divide 100 Hz
    (which their integer `--upsample` cannot take) gives each phone frame the unit frame it starts in, which is the
    same rule."""
    unit_of_frame = np.floor(np.arange(len(phones)) * (frame_rate_hz / PHONE_FRAME_RATE_HZ) + 1e-9).astype(np.int64)
    covered = unit_of_frame < len(frame_units)
    return phones[covered], frame_units[unit_of_frame[covered]]


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
    phone_labels: str | None = None
    """Score against these phone labels instead of pocketsphinx's alignment: a TSV in the format fairseq's
    `measure_teacher_quality.py` reads (`utterance-id<TAB>phone,phone,...`, one phone per 10 ms frame; stress digits
    are dropped, as there), such as forced alignments of LibriSpeech. Utterances with no line are skipped."""
    max_utterances: int | None = None
    """Score at most this many utterances (default: 50 with pocketsphinx, which runs at ~50x real time; all with
    --phone-labels)."""
    seed: int = 0
    """Seed of the shuffled-label baseline."""
    num_workers: int = 0
    """Worker processes for phone alignment; 0 = one per core."""

    def check(self) -> None:
        check_positive(self, "max_utterances")
        check_positive(self, "num_workers", allow_zero=True)
        check_output_file(self, "out", "the report (a JSON file)")
        check_not_input(self, "out", "manifest", "the manifest being measured, which the report would replace")
        check_not_input(self, "out", "phone_labels", "the phone labels, which the report would replace")


def read_phone_labels(path: str | Path) -> dict[str, np.ndarray]:
    """A TSV of 10 ms phone labels (`utterance-id<TAB>phone,phone,...`), read as fairseq's `read_phn` reads it:
    stress digits dropped (AH0 -> AH). A ValueError names the file and line of anything else."""
    labels: dict[str, np.ndarray] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file in UTF-8 ({error.reason})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        utterance_id, tab, phones = line.partition("\t")
        if not tab or not phones.strip():
            raise ValueError(f"{path}:{number}: expected an utterance id, a tab and comma-separated phones")
        if utterance_id in labels:
            raise ValueError(f"{path}:{number}: {utterance_id} has a line already")
        labels[utterance_id] = np.array([re.sub("[0-9]", "", phone) for phone in phones.rstrip().split(",")],
                                        dtype=object)
    if not labels:
        raise ValueError(f"{path}: no phone labels in it")
    return labels


def phone_alignments(manifest: Path, utterances: dict, items: list[UtteranceUnits],
                     num_workers: int = 0) -> tuple[dict[str, list], dict[str, str]]:
    """Pocketsphinx's timed phones of each item's utterance, and why any could not be aligned, by utterance id."""
    folder = manifest_folder(manifest)
    tasks = [(u.id, str(utterances[u.id].audio_path(folder)), utterances[u.id].transcript) for u in items]
    workers = min(num_workers or machine.default_workers(), len(tasks))
    phones_by_id, skipped = {}, {}
    for utterance_id, result in jobs.parallel_map(_label_one, tasks, num_workers=workers, total=len(tasks),
                                                  description="units quality: phone alignment"):
        (skipped if isinstance(result, str) else phones_by_id)[utterance_id] = result
    return phones_by_id, skipped


def unit_quality(config: QualityConfig) -> dict[str, Any]:
    """PNMI and purities of extracted units, a shuffled baseline, and the dedup ratio."""
    started = time.perf_counter()
    manifest = Path(config.manifest)
    # One pass over the units keeps only the utterances to score and sums the rest (the dedup ratio is the whole
    # folder's); of the manifest, the ids, then the chosen utterances. A Libri-Light-sized manifest read whole is
    # some 140 GB in memory.
    known = {u.id for u in iter_utterances(manifest)}
    given = read_phone_labels(config.phone_labels) if config.phone_labels else None
    keep = config.max_utterances or (None if given is not None else ALIGNED_UTTERANCES)
    chosen: list[UtteranceUnits] = []
    num_extracted, num_frames, num_units, unlabelled = 0, 0, 0, set()
    for item in read_units(config.units):
        if item.id not in known:
            continue
        num_extracted, num_frames, num_units = num_extracted + 1, num_frames + item.num_frames, \
            num_units + len(item.units)
        if given is not None and item.id not in given:
            unlabelled.add(item.id)
        elif keep is None or len(chosen) < keep:
            chosen.append(item)
    if not num_extracted:
        raise ValueError(f"{config.units}: no extracted units for utterances of {manifest}")
    if given is not None:
        scored = chosen
        if not scored:
            raise ValueError(f"{config.phone_labels}: no line for any utterance of {config.units}")
        skipped = unlabelled
        labels = [given[item.id] for item in scored]
    else:
        wanted = {item.id for item in chosen}
        utterances = {u.id: u for u in iter_utterances(manifest) if u.id in wanted}
        phones_by_id, skipped = phone_alignments(manifest, utterances, chosen, config.num_workers)
        scored = [item for item in chosen if item.id in phones_by_id]
        if not scored:
            raise ValueError("no utterance could be phone-aligned")
        labels = [phone_frames(phones_by_id[item.id]) for item in scored]
    unit_frames = [item.frame_units() for item in scored]
    # The baseline shuffles unit frames (not 10 ms frames) across utterances, then repeats them as the real ones are.
    shuffled = np.split(np.random.default_rng(config.seed).permutation(np.concatenate(unit_frames)),
                        np.cumsum([len(frames) for frames in unit_frames])[:-1])
    rate = scored[0].frame_rate_hz
    pairs = [frame_pairs(labelled, frames, rate) for labelled, frames in zip(labels, unit_frames)]
    baseline = [frame_pairs(labelled, frames, rate)[1] for labelled, frames in zip(labels, shuffled)]
    phones, units = np.concatenate([p for p, _ in pairs]), np.concatenate([u for _, u in pairs])
    report = {
        "units": phone_unit_scores(phones, units),
        "shuffled_baseline": phone_unit_scores(phones, np.concatenate(baseline)),
        "dedup_ratio": num_frames / num_units,
        "phone_labels": "given" if config.phone_labels else "pocketsphinx",
        "num_utterances_scored": len(scored), "num_utterances_skipped": len(skipped),
        "num_frames_scored": int(len(units)), "phone_frame_rate_hz": PHONE_FRAME_RATE_HZ,
        # fairseq's "frm diff": the 10 ms frames by which the phone labels and the repeated units differed in length
        "frame_length_difference": int(sum(abs(len(labelled) - round(len(frames) * PHONE_FRAME_RATE_HZ / rate))
                                           for labelled, frames in zip(labels, unit_frames))),
        "num_phone_labels": int(len(np.unique(phones))),
        "num_units_used": int(len(np.unique(units))), "frame_rate_hz": rate,
        "wall_sec": round(time.perf_counter() - started, 3), "config": asdict(config),
    }
    storage.write_json(config.out or Path(config.units) / "quality.json", report)
    return report
