"""Building token shards: the interleaved, speech-only and text-only streams, mixed and packed.

Each epoch draws new interleaving spans (`interleave`), mixes the streams by token share,
and packs the samples into uint32 shards of `context_length` tokens, written under a
temporary folder and renamed at the end.
"""

from __future__ import annotations

import collections
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from simslm import assets, jobs
from simslm.config import Config, ConfigError, check_positive, flag, registry_choices
from simslm.sequences.interleave import (
    INTERLEAVERS,
    MARKER,
    SPEECH,
    TEXT,
    Sample,
    SkipReason,
    SkipSample,
    build_interleaved,
    check_utterance,
    sample_rng,
    single_modality_sample,
)
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech import text as text_lib
from simslm.speech.manifest import Utterance, read_manifest
from simslm.units.extract import UtteranceUnits, read_units

Stream = Literal["interleaved", "speech", "text"]
STREAMS: tuple[str, ...] = get_args(Stream)


@dataclass(frozen=True, kw_only=True)
class BuildConfig(Config):
    """What `simslm sequences build` does."""

    out: str
    """Output folder: tokenizer/, epoch-NNN/shard-NNNNN.npy, index.json."""
    tokenizer: str = "stories260K"
    """Base tokenizer: HF folder or hub id, SentencePiece .model, .gguf file, or an asset holding one."""
    manifest: str | None = None
    """Speech corpus with word timings (for the interleaved and speech streams)."""
    units: str | None = None
    """Folder from `simslm units extract` for that manifest."""
    text_corpus: str | None = None
    """Text for the text-only stream: asset name or .jsonl/.txt path; name[start:stop] takes a slice."""
    streams: tuple[Stream, ...] = STREAMS
    """Streams to build."""
    mix: tuple[str, ...] = ()
    """Token shares per stream as name=share, e.g. interleaved=0.5 speech=0.25 text=0.25 (default: equal)."""
    method: str = field(default="poisson", metadata=registry_choices(INTERLEAVERS))
    """Interleaving method (its parameters are the options below that it names)."""
    speech_ratio: float = 0.3
    """η: share of words to make speech (poisson, random) or chance of a speech utterance."""
    poisson_lambda: float = 10.0
    """Mean span length in words for poisson (slamkit SIMS: 10)."""
    span_length: int = 10
    """Span length in words for span."""
    span_start_probability: float = 0.05
    """Per-word chance to start a span, for span."""
    context_length: int = 2048
    """Tokens per packed chunk (slamkit SIMS: 2048)."""
    num_epochs: int = 1
    """Epochs to build; each draws new spans and a new order."""
    chunks_per_shard: int = 4096
    seed: int = 0
    overwrite: bool = False
    """Replace an existing output folder (once the new one is complete)."""

    def check(self) -> None:
        check_positive(self, "context_length", "num_epochs", "chunks_per_shard", "poisson_lambda", "span_length")
        for name in ("speech_ratio", "span_start_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{flag(name)} must be between 0 and 1, not {getattr(self, name)}")
        if self.context_length < 2:
            raise ConfigError(f"--context-length must be at least 2 (an input and its target), not {self.context_length}")
        if not self.streams or len(set(self.streams)) != len(self.streams):
            raise ConfigError(f"--streams must name each stream once: {', '.join(self.streams) or '(none)'}")
        parse_mix(self.mix, list(self.streams))
        if {"interleaved", "speech"} & set(self.streams) and not (self.manifest and self.units):
            raise ConfigError("the interleaved and speech streams need --manifest and --units")
        if "text" in self.streams and not self.text_corpus:
            raise ConfigError("the text stream needs --text-corpus")


def parse_mix(mix: tuple[str, ...], streams: list[str]) -> dict[str, float]:
    """Token shares per stream (from name=share items), normalised to sum to 1."""
    if not mix:
        return {name: 1.0 / len(streams) for name in streams}
    shares = {}
    for item in mix:
        name, _, value = item.partition("=")
        if name.strip() not in streams:
            raise ConfigError(f"--mix names stream '{name.strip()}', which is not built ({', '.join(streams)})")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--mix item '{item}' is not name=share") from None
    if any(not 0 <= value < float("inf") for value in shares.values()) or sum(shares.values()) <= 0:
        raise ConfigError(f"--mix shares must be finite, non-negative and not all zero: {' '.join(mix)}")
    total = sum(shares.values())
    return {name: shares.get(name, 0.0) / total for name in streams}


def mix_streams(samples: dict[str, list[Sample]], shares: dict[str, float]) -> tuple[list[Sample], dict[str, int]]:
    """Take samples from each stream so that its share of tokens is `shares[stream]`.

    The scarcest stream (relative to its share) is used whole and the others are cut to
    match, so the ratios are computed from the data rather than fixed in a config. Samples
    are whole, so a stream's count lands within half a sample of its budget.
    """
    available = {name: sum(len(s.tokens) for s in samples[name]) for name in samples}
    active = [name for name in samples if shares.get(name, 0) > 0]
    if any(available[name] == 0 for name in active):
        empty = [name for name in active if available[name] == 0]
        raise ValueError(f"stream(s) {', '.join(empty)} produced no samples")
    total = min(available[name] / shares[name] for name in active)
    chosen, taken = [], {}
    for name in active:
        budget, count = shares[name] * total, 0
        for sample in samples[name]:
            if count + len(sample.tokens) / 2 > budget:  # adding it would overshoot more than stopping undershoots
                break
            chosen.append(sample)
            count += len(sample.tokens)
        taken[name] = count
    return chosen, taken


def pack(samples: list[Sample], context_length: int, vocabulary: Vocabulary) -> tuple[np.ndarray, dict[str, int]]:
    """Concatenate samples into chunks of `context_length`; drop the last partial chunk.

    A chunk that continues a sample starts with the marker of the modality in force at
    that point, so every chunk states its modality.
    """
    chunks, current, counts = [], [], collections.Counter()
    markers = np.array([vocabulary.speech_id, vocabulary.text_id], dtype=np.uint32)
    kind_names = {TEXT: "text", SPEECH: "speech", MARKER: "marker"}
    for sample in samples:
        is_marker = np.isin(sample.tokens, markers)
        last_marker = np.maximum.accumulate(np.where(is_marker, np.arange(len(sample.tokens)), -1))
        position = 0
        while position < len(sample.tokens):
            if not current and position > 0 and not is_marker[position] and last_marker[position] >= 0:
                current.append(np.array([sample.tokens[last_marker[position]]], dtype=np.uint32))
                counts["marker"] += 1
            space = context_length - sum(len(piece) for piece in current)
            piece = sample.tokens[position:position + space]
            for kind, number in zip(*np.unique(sample.kinds[position:position + space], return_counts=True)):
                counts[kind_names[int(kind)]] += int(number)
            current.append(piece)
            position += len(piece)
            if sum(len(p) for p in current) == context_length:
                chunks.append(np.concatenate(current))
                current = []
    dropped = int(sum(len(piece) for piece in current))
    counts["dropped"] = dropped
    array = np.stack(chunks) if chunks else np.zeros((0, context_length), np.uint32)
    return array, dict(counts)


def _read_text_corpus(source: str) -> list[tuple[str, str]]:
    from simslm.speech.synth import read_corpus, split_corpus_spec

    stem = assets.resolve_file(split_corpus_spec(source)[0]).stem
    return [(f"{stem}-text-{index:06d}", text_lib.speakable(value))
            for index, value, _ in read_corpus(source) if value and text_lib.has_words(value)]


def build_fixed_streams(streams: list[str], vocabulary: Vocabulary, utterances: list[Utterance],
                        units_by_id: dict[str, UtteranceUnits], texts: list[tuple[str, str]]
                        ) -> dict[str, list[Sample]]:
    """The speech-only and text-only samples: the same in every epoch, so built once."""
    samples: dict[str, list[Sample]] = {}
    if "speech" in streams:
        samples["speech"] = [
            single_modality_sample(f"{u.id}/speech", (units_by_id[u.id].units + vocabulary.unit_offset).tolist(), SPEECH,
                             vocabulary, [w.word for w in u.words or ()])
            for u in utterances if u.id in units_by_id]
    if "text" in streams:
        encode, batch_size = vocabulary.encode_texts, 1024
        samples["text"] = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            for (sample_id, value), ids in zip(batch, encode([value for _, value in batch])):
                samples["text"].append(single_modality_sample(sample_id, ids, TEXT, vocabulary, value.split()))
    return samples


def usable_utterances(utterances: list[Utterance], units_by_id: dict[str, UtteranceUnits]
                      ) -> tuple[list[Utterance], collections.Counter]:
    """The utterances that can be interleaved, and the reasons the others cannot."""
    usable, skipped = [], collections.Counter()
    for utterance in utterances:
        try:
            if utterance.id not in units_by_id:
                raise SkipSample(SkipReason.NO_UNITS)
            check_utterance(utterance, units_by_id[utterance.id])
            usable.append(utterance)
        except SkipSample as skip:
            skipped[skip.reason.value] += 1
    return usable, skipped


def build_interleaved_epoch(config: BuildConfig, vocabulary: Vocabulary, epoch: int, utterances: list[Utterance],
                            units_by_id: dict[str, UtteranceUnits]) -> tuple[list[Sample], collections.Counter]:
    """The interleaved samples of one epoch (new spans every epoch), and the skip reasons."""
    encode, method = vocabulary.encode_texts, INTERLEAVERS[config.method]
    parameters = method.arguments(config)
    samples, skipped = [], collections.Counter()
    for utterance in utterances:
        mask = method.draw(len(utterance.words), sample_rng(config.seed, utterance.id, epoch), **parameters)
        try:
            samples.append(build_interleaved(utterance, units_by_id[utterance.id], vocabulary, mask, encode))
        except SkipSample as skip:
            skipped[skip.reason.value] += 1
    return samples, skipped


def build_sequences(config: BuildConfig) -> dict[str, Any]:
    """Build, mix and pack token shards for `config.num_epochs` epochs; return the index."""
    started = time.perf_counter()
    streams = list(config.streams)
    shares = parse_mix(config.mix, streams)
    needs_speech = bool({"interleaved", "speech"} & set(streams))
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise ValueError(f"{out} is not empty; pass --overwrite to replace it")
    utterances, units_by_id, num_units = [], {}, 0
    if needs_speech:
        utterances = read_manifest(config.manifest)
        units_by_id = {u.id: u for u in read_units(config.units)}
        num_units = int(json.loads((Path(config.units) / "units.json").read_text())["k"])
    texts = _read_text_corpus(config.text_corpus) if "text" in streams else []
    vocabulary = Vocabulary.build(config.tokenizer, num_units)
    # Everything is written under a temporary folder and renamed at the end: a build that
    # dies leaves no half dataset behind.
    building = out.with_name(f".{out.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    vocabulary.save(building / "tokenizer")
    index: dict[str, Any] = {"config": config.to_dict(), "vocab_size": len(vocabulary),
                             "context_length": config.context_length, "epochs": []}
    fixed = build_fixed_streams(streams, vocabulary, utterances, units_by_id, texts)
    usable, unusable = usable_utterances(utterances, units_by_id) if "interleaved" in streams else ([], {})
    for epoch in jobs.progress(range(config.num_epochs), "sequences build (epochs)"):
        samples = dict(fixed)
        skipped = collections.Counter(unusable)
        if "interleaved" in streams:
            samples["interleaved"], span_skips = build_interleaved_epoch(config, vocabulary, epoch, usable,
                                                                          units_by_id)
            skipped.update(span_skips)
        # Each epoch takes its stream samples in a new order (which ones a share cuts off
        # changes too), then shuffles the mixture.
        for name in samples:
            order = np.random.default_rng([config.seed, epoch, STREAMS.index(name)]).permutation(len(samples[name]))
            samples[name] = [samples[name][i] for i in order]
        chosen, taken = mix_streams(samples, shares)
        chosen = [chosen[i] for i in np.random.default_rng([config.seed, epoch, 1]).permutation(len(chosen))]
        chunks, counts = pack(chosen, config.context_length, vocabulary)
        folder = building / f"epoch-{epoch:03d}"
        folder.mkdir()
        shard_names = []
        for number, start in enumerate(range(0, len(chunks), config.chunks_per_shard)):
            name = f"shard-{number:05d}.npy"
            with jobs.atomic_path(folder / name) as temporary:
                np.save(temporary, chunks[start:start + config.chunks_per_shard])
            shard_names.append(name)
        interleaved = samples.get("interleaved", [])
        index["epochs"].append({
            "epoch": epoch, "shards": shard_names, "num_chunks": int(len(chunks)), "token_counts": counts,
            "tokens_by_stream": taken, "samples_by_stream": {n: len(v) for n, v in samples.items()},
            "skipped": dict(skipped),
            "interleaved_words": int(sum(s.num_words for s in interleaved)),
            "interleaved_speech_words": int(sum(s.num_speech_words for s in interleaved)),
        })
    index["wall_sec"] = round(time.perf_counter() - started, 3)
    jobs.write_json(building / "index.json", index)
    jobs.replace_folder(building, out)
    return index
