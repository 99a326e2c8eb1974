"""Reading packed shards back: batches epoch after epoch that resume exactly from a state dict."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from simslm import jobs


def read_index(folder: str | os.PathLike) -> dict:
    """The index.json of a sequences folder; a ValueError naming the folder when it is not one."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise ValueError(f"{folder}: not a sequences folder (no index.json; make one with `simslm sequences build`)")
    return jobs.read_json(path)


def index_digest(folder: str | os.PathLike) -> str:
    """The sha256 of a sequences folder's index.json: it changes whenever the folder is built again (its config,
    counts and build time are in it), and not when the folder is moved or copied."""
    return hashlib.sha256((Path(folder) / "index.json").read_bytes()).hexdigest()


class Batch(NamedTuple):
    """Packed rows and each token's position within its document (0 where a document starts)."""

    tokens: np.ndarray
    positions: np.ndarray


class ShardedRows:
    """One epoch's rows across its shard files, each memory-mapped: indexing reads only the rows asked for, so a
    training process holds the rows of its batches, not the epoch (np.concatenate of the maps had read every shard
    into memory, 6 bytes a token in every process: 60 GB for an epoch of 10B tokens)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(part) for part in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, rows):
        """`rows`: one row number, or an array of them (a batch, in any order)."""
        if np.ndim(rows) == 0:
            row = int(rows) + (len(self) if int(rows) < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {rows} of {len(self)}")
            part = int(np.searchsorted(self.starts, row, side="right")) - 1
            return self.parts[part][row - self.starts[part]]
        rows = np.asarray(rows, dtype=np.int64)
        parts = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.parts[0].shape[1:]), dtype=self.parts[0].dtype)
        for part in np.unique(parts):
            chosen = parts == part
            out[chosen] = self.parts[part][rows[chosen] - self.starts[part]]
        return out

    def __iter__(self):
        for part in self.parts:
            yield from part

    def __array__(self, dtype=None, copy=None):  # np.asarray: every row, read at once (benchmarks and tests)
        whole = np.concatenate(self.parts) if self.parts else np.zeros((0, 0), np.uint32)
        return whole if dtype is None else whole.astype(dtype)


class PackedLoader:
    """Batches of packed chunks, epoch after epoch, that resume exactly from `state_dict()`.

    Epoch e reads the shards built for epoch e (cycling when fewer were built) in an order
    drawn from (seed, e). Under data parallelism, rank r of w takes every w-th batch.
    """

    def __init__(self, folder: str | os.PathLike, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.batch_in_epoch = 0, 0
        self._arrays: dict[tuple[int, str], ShardedRows] = {}
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation): drawn once per epoch

    def _load(self, built_epoch: int, key: str) -> ShardedRows:
        if (built_epoch, key) not in self._arrays:
            entry = self.index["epochs"][built_epoch]
            folder = self.folder / f"epoch-{built_epoch:03d}"
            self._arrays[built_epoch, key] = ShardedRows([np.load(folder / name, mmap_mode="r", allow_pickle=False)
                                                          for name in entry[key]])
        return self._arrays[built_epoch, key]

    def chunks(self, built_epoch: int) -> ShardedRows:
        """All packed rows built for one epoch (memory-mapped), in storage order."""
        return self._load(built_epoch, "shards")

    def positions(self, built_epoch: int) -> ShardedRows | None:
        """Each token's position in its document, or None for a folder of the first format (one document a row)."""
        if "position_shards" not in self.index["epochs"][built_epoch]:
            return None
        return self._load(built_epoch, "position_shards")

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches this rank gets in one epoch (the tail that fills no global batch is dropped)."""
        chunks = self.chunks(epoch % len(self.index["epochs"]))
        return len(chunks) // (self.batch_size * self.world_size)

    def __iter__(self) -> "PackedLoader":
        return self

    def __next__(self) -> Batch:
        if self.batches_per_epoch(self.epoch) == 0:
            raise ValueError(f"{self.folder}: fewer chunks than one global batch "
                             f"({self.batch_size} x {self.world_size})")
        while self.batch_in_epoch >= self.batches_per_epoch(self.epoch):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        built = self.epoch % len(self.index["epochs"])
        chunks, positions = self.chunks(built), self.positions(built)
        if self._order is None or self._order[0] != self.epoch:
            self._order = self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(len(chunks))
        order = self._order[1]
        start = (self.batch_in_epoch * self.world_size + self.rank) * self.batch_size
        self.batch_in_epoch += 1
        rows = order[start:start + self.batch_size]
        tokens = np.asarray(chunks[rows])
        return Batch(tokens, np.asarray(positions[rows]) if positions is not None
                     else np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape).copy())

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: the next batch is rebuilt from this alone."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.seed,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()`, also one saved with another number of processes: the epoch's order
        does not depend on it, so this loader starts at the first global batch no process has read yet."""
        if state["seed"] != self.seed:
            raise ValueError(f"loader state is for seed {state['seed']}, this loader uses {self.seed}")
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        saved_world_size = state.get("world_size", self.world_size)
        if saved_world_size != self.world_size:
            rows_read = self.batch_in_epoch * saved_world_size * self.batch_size
            self.batch_in_epoch = -(-rows_read // (self.world_size * self.batch_size))  # ceil: nothing read twice
