"""What a run logs as it trains, read back: its progress and loss curves from metrics.jsonl and
validation.jsonl, and the same numbers as TensorBoard scalars.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from simslm import storage
from simslm.train.plan import Losses


def logged_step(line: str) -> int | None:
    """The step of one metrics.jsonl line, None for a torn or foreign one (a kill mid-write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def training_progress(run_dir: str | os.PathLike) -> tuple[int, int] | None:
    """(the last step metrics.jsonl logged, the plan's steps) of a run begun; None before its first step. Read from
    the file's end: a run of a million steps logs as many lines."""
    try:
        total = int(storage.read_json(Path(run_dir) / "plan.json")["total_steps"])
        tail = storage.read_tail(Path(run_dir) / "metrics.jsonl").splitlines()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    step = next((step for line in reversed(tail) if (step := logged_step(line)) is not None), None)
    return None if step is None else (step, total)


VALIDATION_CURVE_FILE = "validation.jsonl"


def log_validation(path: Path, step: int, tokens: int, losses: Losses, events) -> None:
    """Append a validation of the model after `step` (`tokens` seen) to validation.jsonl (and TensorBoard)."""
    record = {"step": step, "tokens": tokens, **asdict(losses)}
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    if events is not None:
        add_scalars(events, "validation", asdict(losses), step)


def loss_curve(run_dir: str | os.PathLike, key: str = "loss_speech", *, validation: bool = False) -> np.ndarray | None:
    """A run's curve of `key`'s loss: from metrics.jsonl (every training step), or with `validation` from
    validation.jsonl (the validations of `--validation-every`). A (2, points) array of tokens seen and the loss at
    each record that has one (a batch without speech targets has no speech loss), tokens increasing. None when
    the file is missing or has fewer than 2 such records. Torn lines (a kill mid-write) are skipped; a step
    logged twice counts once, its last record (what a resumed run logged)."""
    path = Path(run_dir) / (VALIDATION_CURVE_FILE if validation else "metrics.jsonl")
    if not path.is_file():
        return None
    by_step: dict[int, tuple[float, float]] = {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
                step, tokens, loss = int(record["step"]), float(record["tokens"]), record.get(key)
            except (ValueError, KeyError, TypeError):
                continue
            if loss is not None and math.isfinite(float(loss)) and tokens > 0:
                by_step[step] = (tokens, float(loss))
    if len(by_step) < 2:
        return None
    curve = np.array([by_step[step] for step in sorted(by_step)]).T
    return curve if np.all(np.diff(curve[0]) > 0) else None


def tensorboard_writer(run_dir: Path, start_step: int):
    """A TensorBoard writer into run_dir/tensorboard; on resume, events past `start_step` (steps done again)
    are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)


def add_scalars(writer, prefix: str, record: dict[str, Any], step: int) -> None:
    """metrics.jsonl's numbers (a record as written there) as TensorBoard scalars."""
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(f"{prefix}/{key}", value, step)

