"""Reading packed shards back: batches epoch after epoch that resume exactly from a state dict."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from simslm import machine, storage


def read_index(folder: str | os.PathLike) -> dict:
    """The index.json of a sequences folder; a ValueError naming the folder when it is not one."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise ValueError(f"{folder}: not a sequences folder (no index.json; make one with `simslm sequences build`)")
    return storage.read_json(path)


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

    unit = "chunks"  # what a batch holds `batch_size` of, as messages name it

    def __init__(self, folder: str | os.PathLike, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self._digest = index_digest(self.folder)  # the build read: an epoch's shards are opened as it comes
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.batch_in_epoch = 0, 0
        self._arrays: dict[tuple[int, str], ShardedRows] = {}
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation): drawn once per epoch

    def _load(self, built_epoch: int, key: str) -> ShardedRows:
        if (built_epoch, key) not in self._arrays:
            # Each map holds a file open: one built epoch at a time (an epoch of 10B tokens is 2,400 files).
            for held in [held for held in self._arrays if held[0] != built_epoch]:
                del self._arrays[held]
            if index_digest(self.folder) != self._digest:  # its next epoch's shards would be another build's
                raise ValueError(f"{self.folder}: built again while it was being read (its index.json changed); "
                                 f"a run reading it resumes only on the data it started with")
            entry = self.index["epochs"][built_epoch]
            machine.allow_open_files(len(entry[key]), f"{self.folder}: epoch {built_epoch} is {len(entry[key])} shard "
                                                      f"files ({key}), each held open while it is read",
                                     "build it with a larger --chunks-per-shard")
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

    def _num_items(self, built_epoch: int) -> int:
        """How many things a batch draws from in one built epoch: its rows."""
        return len(self.chunks(built_epoch))

    def _batch(self, built_epoch: int, chosen: np.ndarray) -> Batch:
        """The batch of the items `chosen` (indices into the built epoch's storage order)."""
        chunks, positions = self.chunks(built_epoch), self.positions(built_epoch)
        tokens = np.asarray(chunks[chosen])
        return Batch(tokens, np.asarray(positions[chosen]) if positions is not None
                     else np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape).copy())

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches this rank gets in one epoch (the tail that fills no global batch is dropped)."""
        return self._num_items(epoch % len(self.index["epochs"])) // (self.batch_size * self.world_size)

    def require_a_batch(self, epoch: int = 0) -> None:
        """A ValueError naming the folder when an epoch holds fewer items than one global batch."""
        if self.batches_per_epoch(epoch) == 0:
            raise ValueError(f"{self.folder}: fewer {self.unit} than one global batch ({self.batch_size} x "
                             f"{self.world_size}: {self._num_items(epoch % len(self.index['epochs']))} in epoch "
                             f"{epoch}); lower --batch-size or build more data")

    def __iter__(self) -> "PackedLoader":
        return self

    def __next__(self) -> Batch:
        self.require_a_batch(self.epoch)
        while self.batch_in_epoch >= self.batches_per_epoch(self.epoch):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        built = self.epoch % len(self.index["epochs"])
        if self._order is None or self._order[0] != self.epoch:
            self._order = self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(self._num_items(built))
        order = self._order[1]
        start = (self.batch_in_epoch * self.world_size + self.rank) * self.batch_size
        self.batch_in_epoch += 1
        return self._batch(built, order[start:start + self.batch_size])

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
            items_read = self.batch_in_epoch * saved_world_size * self.batch_size
            self.batch_in_epoch = -(-items_read // (self.world_size * self.batch_size))  # ceil: nothing read twice


class PieceLoader(PackedLoader):
    """Batches of `batch_size` documents each (the pieces a build cut samples into: slamkit's `chunk_texts`),
    laid end to end in one row with positions that restart at each: slamkit's batches under `data.packing: true`,
    `per_device_train_batch_size` dataset items through `DataCollatorWithFlattening`. A batch then holds as many
    tokens as its pieces do, not `batch_size` rows of the context. With `row_length`, the same documents are laid
    first-fit into rows of that length instead (`pack_rows`), for attention kernels whose cost grows with a row.

    The pieces are read out of the built rows (a piece starts where its position is 0; the padding after the last
    piece of a row is a piece of pad tokens, left out) and drawn in an order from (seed, epoch), as the Trainer's
    sampler draws dataset items; ranks, epochs and resuming work as `PackedLoader`'s, per piece.
    """

    unit = "pieces"

    def __init__(self, folder: str | os.PathLike, batch_size: int, *, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, row_length: int | None = None):
        super().__init__(folder, batch_size, seed=seed, rank=rank, world_size=world_size)
        self.pad_id, self.row_length = pad_id, row_length
        self._table: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None  # (built epoch, its pieces): one held

    def pieces(self, built_epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each piece of a built epoch starts, as a token offset into its rows laid end to end, and its
        length. One pass over the epoch's positions the first time it is asked, in every process, and a look at
        each document's first token, which tells the padding (so every page of the tokens is read ahead of the
        batches that need it: 0.1 s for 205M tokens in the page cache, docs/BENCHMARKS.md); the table is 16 bytes a
        piece (160 MB for 10 million), kept for one built epoch at a time, as the epochs are read in turn."""
        if self._table is None or self._table[0] != built_epoch:
            chunks, positions = self.chunks(built_epoch), self.positions(built_epoch)
            starts, lengths, offset = [], [], 0
            for number, part in enumerate(chunks.parts):
                flat = part.reshape(-1)
                if positions is not None:
                    begins = np.flatnonzero(positions.parts[number].reshape(-1) == 0)
                    ends = np.append(begins[1:], flat.size)
                else:  # the first format: one document a row, then its padding
                    begins = np.arange(0, flat.size, part.shape[1])
                    ends = begins + (part != self.pad_id).sum(axis=1)
                real = (ends > begins) & (flat[begins] != self.pad_id)
                starts.append(begins[real] + offset)
                lengths.append((ends - begins)[real])
                offset += flat.size
            self._table = built_epoch, (np.concatenate([np.zeros(0, np.int64), *starts]),
                                        np.concatenate([np.zeros(0, np.int64), *lengths]))
        return self._table[1]

    def _num_items(self, built_epoch: int) -> int:
        return len(self.pieces(built_epoch)[0])

    def _batch(self, built_epoch: int, chosen: np.ndarray) -> Batch:
        chunks = self.chunks(built_epoch)
        starts, lengths = self.pieces(built_epoch)
        width = chunks.parts[0].shape[1]
        tokens = []
        for start, length in zip(starts[chosen], lengths[chosen]):
            row, column = divmod(int(start), width)  # a piece never crosses a row
            tokens.append(np.asarray(chunks[row][column:column + length]))
        if self.row_length is None:
            return Batch(np.concatenate(tokens)[None], np.concatenate([np.arange(len(t)) for t in tokens])[None])
        return Batch(*pack_rows(tokens, self.row_length, self.pad_id))


def pack_rows(documents: list[np.ndarray], row_length: int, pad_id: int, *, open_rows: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Documents (none longer than `row_length`) placed in their order into the first row with room for them among
    the last `open_rows` rows (all rows when None), the rest of each row a document of pad tokens: token ids
    (uint32) and each token's position within its document."""
    rows: list[list[np.ndarray]] = []
    free: list[int] = []
    first_open = 0
    for document in documents:
        row = next((r for r in range(first_open, len(rows)) if free[r] >= len(document)), None)
        if row is None:
            rows.append([])
            free.append(row_length)
            row = len(rows) - 1
            if open_rows is not None:
                first_open = max(first_open, len(rows) - open_rows)
        rows[row].append(document)
        free[row] -= len(document)
    tokens = np.full((len(rows), row_length), pad_id, dtype=np.uint32)
    positions = np.zeros((len(rows), row_length), dtype=np.uint16 if row_length <= 65536 else np.uint32)
    for number, placed in enumerate(rows):
        cursor = 0
        for document in placed:
            tokens[number, cursor:cursor + len(document)] = document
            positions[number, cursor:cursor + len(document)] = np.arange(len(document))
            cursor += len(document)
        positions[number, cursor:] = np.arange(row_length - cursor)  # padding: a document of its own
    return tokens, positions
