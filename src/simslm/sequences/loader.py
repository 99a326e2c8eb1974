"""Reading packed shards back: batches epoch after epoch that resume exactly from a state dict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class PackedLoader:
    """Batches of packed chunks, epoch after epoch, that resume exactly from `state_dict()`.

    Epoch e reads the shards built for epoch e (cycling when fewer were built) in an order
    drawn from (seed, e). Under data parallelism, rank r of w takes every w-th batch.
    """

    def __init__(self, folder: str | os.PathLike, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.batch_in_epoch = 0, 0
        self._arrays: dict[int, np.ndarray] = {}

    def chunks(self, built_epoch: int) -> np.ndarray:
        """All packed chunks built for one epoch (memory-mapped), in storage order."""
        if built_epoch not in self._arrays:
            entry = self.index["epochs"][built_epoch]
            folder = self.folder / f"epoch-{built_epoch:03d}"
            parts = [np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in entry["shards"]]
            self._arrays[built_epoch] = np.concatenate(parts) if parts else np.zeros((0, 0), np.uint32)
        return self._arrays[built_epoch]

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches this rank gets in one epoch (the tail that fills no global batch is dropped)."""
        chunks = self.chunks(epoch % len(self.index["epochs"]))
        return len(chunks) // (self.batch_size * self.world_size)

    def __iter__(self) -> "PackedLoader":
        return self

    def __next__(self) -> np.ndarray:
        if self.batches_per_epoch(self.epoch) == 0:
            raise ValueError(f"{self.folder}: fewer chunks than one global batch "
                             f"({self.batch_size} x {self.world_size})")
        while self.batch_in_epoch >= self.batches_per_epoch(self.epoch):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        chunks = self.chunks(self.epoch % len(self.index["epochs"]))
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(chunks))
        start = (self.batch_in_epoch * self.world_size + self.rank) * self.batch_size
        self.batch_in_epoch += 1
        return np.asarray(chunks[order[start:start + self.batch_size]])

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: the next batch is rebuilt from this alone."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()`."""
        if state["seed"] != self.seed:
            raise ValueError(f"loader state is for seed {state['seed']}, this loader uses {self.seed}")
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
