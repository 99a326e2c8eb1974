"""Looking at built sequences: per-epoch statistics, one sample rebuilt with its words, one chunk decoded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm.config import Config, check_positive
from simslm.sequences.build import BuildConfig, speech_manifest, speech_units_folder
from simslm.sequences.interleave import INTERLEAVERS, TEXT, Sample, build_interleaved, check_utterance, sample_rng
from simslm.sequences.loader import PackedLoader, read_index
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech.manifest import iter_utterances
from simslm.units.folder import read_units


def stats(folder: str | os.PathLike, index: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per epoch: chunks, tokens per modality, speech share of tokens and of interleaved words, and the documents
    (pieces cut to the context) with their mean length, which folders built before 2026-12-05 do not record
    (`index`: the folder's index.json, when the caller has read it)."""
    index = index if index is not None else read_index(folder)
    rows = []
    for entry in index["epochs"]:
        counts = entry["token_counts"]
        speech, text_tokens = counts.get("speech", 0), counts.get("text", 0)
        words = entry["interleaved_words"]
        padding = counts.get("padding", counts.get("dropped", 0))
        documents = entry.get("num_documents")
        rows.append({
            "epoch": entry["epoch"], "num_chunks": entry["num_chunks"],
            "tokens": entry["num_chunks"] * index["context_length"],
            "speech_tokens": speech, "text_tokens": text_tokens, "marker_tokens": counts.get("marker", 0),
            "padding_tokens": padding, "num_documents": documents,
            "mean_document_tokens": ((entry["num_chunks"] * index["context_length"] - padding) / documents
                                     if documents else None),
            "speech_token_share": speech / max(1, speech + text_tokens),
            "interleaved_speech_word_share": entry["interleaved_speech_words"] / words if words else None,
            "tokens_by_stream": entry["tokens_by_stream"], "skipped": entry["skipped"],
            "pieces_by_stream": entry.get("pieces_by_stream"), "pieces_drawn_by_stream": entry.get("pieces_drawn_by_stream"),
        })
    return rows


def drawn_summary(entry: dict[str, Any]) -> str | None:
    """"interleaved 0 of 3, speech 3 of 3, text 4 of 200": the pieces an epoch's mixture drew of each stream
    (None for folders built before 2026-12-06, which do not record them)."""
    drawn = entry.get("pieces_drawn_by_stream")
    if drawn is None:
        return None
    return ", ".join(f"{name} {count} of {entry['pieces_by_stream'][name]}" for name, count in drawn.items())


def undrawn_streams(entry: dict[str, Any]) -> list[str]:
    """The streams of which an epoch's mixture drew nothing, though they had pieces: the mixture ended, at the
    first stream to run out, before any was drawn."""
    drawn = entry.get("pieces_drawn_by_stream") or {}
    return [name for name, count in drawn.items() if count == 0 and entry["pieces_by_stream"].get(name)]


def render_sample(sample: Sample, vocabulary: Vocabulary, max_units: int = 12) -> str:
    """A sample as text: text runs in plain words, speech runs as compact unit runs with their words."""
    lines = [f"sample {sample.id}: {len(sample.tokens)} tokens, {sample.num_speech_words}/{sample.num_words} "
             f"words as speech"]
    for run in sample.runs:
        stretch = slice(run.first_token, run.end_token)
        ids, words = sample.tokens[stretch][sample.kinds[stretch] == run.modality], run.words
        if run.modality == TEXT:
            lines.append(f"  <text>   {vocabulary.tokenizer.decode(ids.tolist())}")
        else:
            units = (ids - vocabulary.unit_offset).tolist()
            shown = " ".join(str(u) for u in units[:max_units]) + (" ..." if len(units) > max_units else "")
            lines.append(f"  <speech> [{len(units)} units: {shown}]  \"{' '.join(words)}\"")
    return "\n".join(lines)


def render_chunk(chunk: np.ndarray, vocabulary: Vocabulary, max_units: int = 12) -> str:
    """A packed chunk as text: runs of units compacted, text decoded, the padding that ends a row counted."""
    out, run = [], []
    padding = len(chunk) - len(np.trim_zeros(np.asarray(chunk) != vocabulary.pad_id, "b"))
    chunk = chunk[:len(chunk) - padding]
    is_unit = vocabulary.is_unit(chunk)

    def flush():
        if run:
            units = [int(t) - vocabulary.unit_offset for t in run]
            out.append(f"[{len(units)} units: {' '.join(map(str, units[:max_units]))}"
                       f"{' ...' if len(units) > max_units else ''}]")
            run.clear()
    text_ids: list[int] = []
    for token, unit in zip(chunk.tolist(), is_unit):
        if unit:
            if text_ids:
                out.append(vocabulary.tokenizer.decode(text_ids))
                text_ids = []
            run.append(token)
        else:
            flush()
            text_ids.append(token)
    flush()
    if text_ids:
        out.append(vocabulary.tokenizer.decode(text_ids))
    if padding:
        out.append(f"[{padding} padding]")
    return " ".join(out)


def rebuild_sample(folder: str | os.PathLike, sample_id: str, epoch: int = 0) -> tuple[Sample, Vocabulary]:
    """Rebuild one interleaved sample of a built folder from (seed, id, epoch) alone."""
    folder = Path(folder)
    index = read_index(folder)
    config = BuildConfig.from_dict(index["config"], source=str(folder / "index.json"))
    _check_epoch(folder, index, epoch)
    vocabulary = Vocabulary.load(folder / "tokenizer")
    # Read up to the one utterance, and its units by id: a manifest of Libri-Light's size is some 140 GB in memory.
    # Both recorded relative to the folder, so they are found after a move.
    manifest, units_folder = speech_manifest(folder), speech_units_folder(folder)
    utterance = next((u for u in iter_utterances(manifest) if u.id == sample_id), None) if manifest else None
    units = next(iter(read_units(units_folder, {sample_id})), None) if units_folder else None
    if utterance is None or units is None:
        raise ValueError(f"no utterance '{sample_id}' with units in {manifest}")
    check_utterance(utterance, units)
    method = INTERLEAVERS[config.method]
    drawn_in = 0 if config.span_draws == "once" else epoch  # `once`: every epoch has the first epoch's spans
    mask = method.draw(len(utterance.words), sample_rng(config.seed, sample_id, drawn_in), **method.arguments(config))
    return build_interleaved(utterance, units, vocabulary, mask, config.unit_rule), vocabulary


def _check_epoch(folder: Path, index: dict, epoch: int) -> None:
    if not 0 <= epoch < len(index["epochs"]):
        raise ValueError(f"{folder}: {len(index['epochs'])} epoch(s) were built (0 to {len(index['epochs']) - 1}); "
                         f"--epoch {epoch} is not one of them")


@dataclass(frozen=True, kw_only=True)
class ShowConfig(Config):
    """What `simslm sequences show` does."""

    folder: str
    """Folder from `simslm sequences build`."""
    sample: str | None = None
    """Utterance id: rebuild its interleaved sample from (seed, id, epoch) and print it with its words."""
    chunk: int = 0
    """Packed chunk to print (when no --sample)."""
    epoch: int = 0
    """Built epoch to read."""

    def check(self) -> None:
        check_positive(self, "chunk", "epoch", allow_zero=True)


def show(config: ShowConfig) -> str:
    """The text `simslm sequences show` prints: a rebuilt sample, or one packed chunk."""
    if config.sample:
        sample, vocabulary = rebuild_sample(config.folder, config.sample, config.epoch)
        return render_sample(sample, vocabulary)
    folder = Path(config.folder)
    _check_epoch(folder, read_index(folder), config.epoch)
    vocabulary = Vocabulary.load(folder / "tokenizer")
    chunks = PackedLoader(folder, batch_size=1).chunks(config.epoch)
    if not 0 <= config.chunk < len(chunks):
        raise ValueError(f"{folder}: epoch {config.epoch} has {len(chunks)} chunks; --chunk {config.chunk} "
                         f"is out of range")
    return render_chunk(np.asarray(chunks[config.chunk]), vocabulary)


@dataclass(frozen=True, kw_only=True)
class StatsConfig(Config):
    """What `simslm sequences stats` does."""

    folder: str
    """Folder from `simslm sequences build`."""
