"""Token streams for interleaved speech-text LMs: vocabulary, interleaving, mixing, packing, loading.

An interleaved sample switches between text tokens and speech units at word boundaries,
as in the paper (slamkit's SIMS recipe): spans of words are drawn to be spoken, a speech
span carries the units whose midpoints fall inside its words' time range, and a marker
(`<speech>` / `<text>`) opens every run of one modality. Randomness comes from a
generator seeded by (seed, sample id, epoch), so any sample can be rebuilt alone and each
epoch draws new spans.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simslm import assets, jobs
from simslm import text as text_lib
from simslm.manifest import Utterance, read_manifest
from simslm.units import UtteranceUnits, read_units

SPEECH_MARKER, TEXT_MARKER, PAD_TOKEN = "<speech>", "<text>", "<simslm_pad>"
VOCAB_FILE = "simslm_vocab.json"


# --- vocabulary ----------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """A base LM tokenizer extended with `<unit_0..K-1>`, `<speech>`, `<text>` and a pad token.

    Unit tokens get consecutive ids, so unit u is token `unit_offset + u`. The pad token is
    a new special token: slamkit forces pad id 0, which is a real text token in Qwen and
    Llama vocabularies.
    """

    tokenizer: Any
    num_units: int
    unit_offset: int
    speech_id: int
    text_id: int
    pad_id: int
    bos_id: int | None

    @classmethod
    def build(cls, base: str, num_units: int) -> "Vocabulary":
        """Extend the tokenizer at `base`: an HF tokenizer folder or id, a SentencePiece .model, or an asset."""
        tokenizer = load_base_tokenizer(base)
        vocab = tokenizer.get_vocab()
        units = [f"<unit_{i}>" for i in range(num_units)]
        if any(token in vocab for token in units):
            raise ValueError(f"tokenizer {base} already has unit tokens; it was extended before")
        # Markers and pad may already be there: a text LM pretrained by `simslm textlm`
        # saw <text> and keeps its rows, so a TWIST model built on it reuses them.
        markers = [token for token in (SPEECH_MARKER, TEXT_MARKER, PAD_TOKEN) if token not in vocab]
        base_size = len(tokenizer)
        tokenizer.add_tokens(units + markers, special_tokens=True)
        tokenizer.pad_token = PAD_TOKEN
        unit_ids = tokenizer.convert_tokens_to_ids(units)
        if unit_ids != list(range(base_size, base_size + num_units)):
            raise ValueError(f"tokenizer {base}: unit tokens did not get consecutive ids")
        speech_id, text_id, pad_id = tokenizer.convert_tokens_to_ids([SPEECH_MARKER, TEXT_MARKER, PAD_TOKEN])
        return cls(tokenizer=tokenizer, num_units=num_units, unit_offset=base_size, speech_id=speech_id,
                   text_id=text_id, pad_id=pad_id, bos_id=tokenizer.bos_token_id)

    def save(self, folder: str | os.PathLike) -> None:
        """Save so that `AutoTokenizer.from_pretrained(folder)` gives the extended tokenizer."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        (folder / VOCAB_FILE).write_text(json.dumps({"num_units": self.num_units, "unit_offset": self.unit_offset,
                                                     "speech_id": self.speech_id, "text_id": self.text_id,
                                                     "pad_id": self.pad_id, "bos_id": self.bos_id}, indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Vocabulary":
        """Load a vocabulary saved by `save`."""
        from transformers import AutoTokenizer

        meta = json.loads((Path(folder) / VOCAB_FILE).read_text())
        return cls(tokenizer=AutoTokenizer.from_pretrained(str(folder)), **meta)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def is_unit(self, token_ids: np.ndarray) -> np.ndarray:
        return (token_ids >= self.unit_offset) & (token_ids < self.unit_offset + self.num_units)


def load_base_tokenizer(base: str):
    """An HF tokenizer from a folder or hub id, a SentencePiece .model or .gguf file, or an asset holding one."""
    from transformers import AutoTokenizer, LlamaTokenizer

    path = Path(base)
    if not path.exists() and base in assets.REGISTRY:
        path = assets.file_with_suffix(base, ".model")
    if path.is_file() and path.suffix == ".model":
        # transformers reads a SentencePiece model as a Llama tokenizer from a folder
        # holding it as tokenizer.model (same pieces and ids as sentencepiece itself).
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(path, Path(folder) / "tokenizer.model")
            return LlamaTokenizer.from_pretrained(folder)
    try:
        if path.is_file() and path.suffix == ".gguf":  # the tokenizer a GGUF checkpoint carries
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load tokenizer '{base}' ({error})") from None


# --- interleaving methods ------------------------------------------------------------------


def poisson_spans(num_words: int, rng: np.random.Generator, *, poisson_lambda: float = 10.0,
                  speech_ratio: float = 0.3) -> np.ndarray:
    """Speech spans with Poisson(λ) lengths at random starts until ⌈η·n⌉ words are covered.

    slamkit's SIMS setting is λ = 10, η = 0.3. Spans may overlap and run past the end, so
    short utterances overshoot η (one 10-word span covers 30% of a 33-word utterance).
    """
    mask = np.zeros(num_words, dtype=bool)
    target = math.ceil(speech_ratio * num_words)
    while mask.sum() < target:
        start = int(rng.integers(num_words))
        mask[start:start + max(1, int(rng.poisson(poisson_lambda)))] = True
    return mask


def fixed_spans(num_words: int, rng: np.random.Generator, *, span_length: int = 10,
                start_probability: float = 0.05) -> np.ndarray:
    """Each word starts a speech span of `span_length` words with probability `start_probability`."""
    mask = np.zeros(num_words, dtype=bool)
    for start in np.flatnonzero(rng.random(num_words) < start_probability):
        mask[start:start + span_length] = True
    return mask


def random_words(num_words: int, rng: np.random.Generator, *, speech_ratio: float = 0.3) -> np.ndarray:
    """Each word is speech with probability η, independently."""
    return rng.random(num_words) < speech_ratio


def whole_utterance(num_words: int, rng: np.random.Generator, *, speech_ratio: float = 0.5) -> np.ndarray:
    """The whole utterance in one modality: speech with probability η."""
    return np.full(num_words, rng.random() < speech_ratio)


INTERLEAVERS: dict[str, Callable[..., np.ndarray]] = {
    "poisson": poisson_spans, "span": fixed_spans, "random": random_words, "utterance": whole_utterance,
}


def sample_rng(seed: int, sample_id: str, epoch: int) -> np.random.Generator:
    """The generator for one sample in one epoch: a pure function of (seed, id, epoch)."""
    id_hash = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, id_hash, epoch])


# --- samples ---------------------------------------------------------------------------------

TEXT, SPEECH, MARKER = 0, 1, 2  # what each token is, for counts and display


@dataclass(frozen=True)
class Run:
    """A stretch of one modality in a sample: its words and its tokens (marker included)."""

    modality: int
    words: list[str]
    first_word: int
    end_word: int
    first_token: int
    end_token: int


@dataclass
class Sample:
    """One sample's tokens, what each token is (TEXT/SPEECH/MARKER), and its runs."""

    id: str
    tokens: np.ndarray
    kinds: np.ndarray
    runs: list[Run] = field(default_factory=list)
    num_words: int = 0
    num_speech_words: int = 0


class SkipSample(ValueError):
    """A sample that cannot be built; the message is the reason counted in the report."""


def check_utterance(utterance: Utterance, units: UtteranceUnits | None) -> None:
    """Raise SkipSample when an utterance's words, timings or units cannot be interleaved."""
    if not utterance.words:
        raise SkipSample("no word timings" if utterance.words is None else "empty utterance")
    problems = utterance.timing_problems()
    if problems:
        # Counted by kind: the messages carry numbers that would split the counts.
        if "do not match the transcript" in problems[0]:
            raise SkipSample("word timings do not match the transcript")
        if "past the end of the audio" in problems[0]:
            raise SkipSample("word timings past the end of the audio")
        raise SkipSample("word timings out of order or negative")
    if units is not None:
        audio_end = units.num_frames / units.frame_rate_hz
        if utterance.words[-1].end_sec > audio_end + 0.05:
            raise SkipSample("word timings past the end of the units")


def build_interleaved(utterance: Utterance, units: UtteranceUnits, vocabulary: Vocabulary, speech_mask: np.ndarray,
                      text_ids: Callable[[list[str]], list[list[int]]]) -> Sample:
    """Tokens of one utterance, switching modality where `speech_mask` changes."""
    words = utterance.words
    starts = units.start_times_sec()
    midpoints = starts + units.durations / (2 * units.frame_rate_hz)
    boundaries = np.flatnonzero(np.diff(speech_mask.astype(np.int8))) + 1
    edges = [0, *boundaries.tolist(), len(words)]
    runs = [(bool(speech_mask[a]), a, b) for a, b in zip(edges[:-1], edges[1:])]
    # A text run is the transcript from its first word to the next run's first word, so it
    # keeps its punctuation ("room." rather than "room").
    spans = text_lib.words_with_spans(utterance.transcript)
    run_text = lambda a, b: utterance.transcript[spans[a][1]:spans[b][1] if b < len(spans) else None].strip()  # noqa: E731
    encoded_text = iter(text_ids([run_text(a, b) for speech, a, b in runs if not speech]))
    pieces, kinds, runs_out = [], [], []
    if vocabulary.bos_id is not None:
        pieces.append([vocabulary.bos_id])
        kinds.append(np.full(1, MARKER, np.uint8))
    for speech, a, b in runs:
        if speech:
            inside = (midpoints >= words[a].start_sec) & (midpoints < words[b - 1].end_sec)
            if not inside.any():
                raise SkipSample("speech span with no units under its words")
            ids = (units.units[inside] + vocabulary.unit_offset).tolist()
        else:
            ids = next(encoded_text)
        first = sum(len(p) for p in pieces)
        pieces.append([vocabulary.speech_id if speech else vocabulary.text_id])
        pieces.append(ids)
        kinds.append(np.full(1, MARKER, np.uint8))
        kinds.append(np.full(len(ids), SPEECH if speech else TEXT, np.uint8))
        runs_out.append(Run(SPEECH if speech else TEXT, [w.word for w in words[a:b]], a, b, first,
                            first + 1 + len(ids)))
    return Sample(id=utterance.id, tokens=np.fromiter((t for p in pieces for t in p), dtype=np.uint32),
                  kinds=np.concatenate(kinds), runs=runs_out, num_words=len(words),
                  num_speech_words=int(speech_mask.sum()))


def _single_modality(sample_id: str, ids: list[int], modality: int, vocabulary: Vocabulary,
                     words: list[str]) -> Sample:
    prefix = ([vocabulary.bos_id] if vocabulary.bos_id is not None else [])
    marker = vocabulary.speech_id if modality == SPEECH else vocabulary.text_id
    tokens = np.array(prefix + [marker] + list(ids), dtype=np.uint32)
    kinds = np.concatenate([np.full(len(prefix) + 1, MARKER, np.uint8), np.full(len(ids), modality, np.uint8)])
    return Sample(id=sample_id, tokens=tokens, kinds=kinds,
                  runs=[Run(modality, words, 0, len(words), len(prefix), len(tokens))],
                  num_words=len(words), num_speech_words=len(words) if modality == SPEECH else 0)


# --- streams, mixing, packing ------------------------------------------------------------------

STREAMS = ("interleaved", "speech", "text")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
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
    streams: str = "interleaved,speech,text"
    """Comma-separated streams to build: interleaved, speech, text."""
    mix: str = ""
    """Token shares per stream, e.g. interleaved=0.5,speech=0.25,text=0.25 (default: equal)."""
    method: str = "poisson"
    """Interleaving method: poisson, span, random or utterance."""
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
    """Replace an existing output folder."""


def method_parameters(config: BuildConfig) -> dict[str, Any]:
    """The keyword arguments of the chosen interleaving method, taken from the config."""
    return {"poisson": {"poisson_lambda": config.poisson_lambda, "speech_ratio": config.speech_ratio},
            "span": {"span_length": config.span_length, "start_probability": config.span_start_probability},
            "random": {"speech_ratio": config.speech_ratio},
            "utterance": {"speech_ratio": config.speech_ratio}}[config.method]


def parse_mix(mix: str, streams: list[str]) -> dict[str, float]:
    """Token shares per stream, normalised to sum to 1."""
    if not mix:
        return {name: 1.0 / len(streams) for name in streams}
    shares = {}
    for item in mix.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in streams:
            raise ValueError(f"--mix names stream '{name.strip()}', which is not built ({', '.join(streams)})")
        shares[name.strip()] = float(value)
    if any(value < 0 for value in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"--mix shares must be non-negative and not all zero: {mix}")
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


def _save_npy(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(f".{path.stem}.tmp.npy")
    np.save(temporary, array)
    os.replace(temporary, path)


def _text_encoder(vocabulary: Vocabulary) -> Callable[[list[str]], list[list[int]]]:
    tokenizer = vocabulary.tokenizer
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _read_text_corpus(source: str) -> list[tuple[str, str]]:
    from simslm.synth import read_corpus, split_corpus_spec

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
            _single_modality(f"{u.id}/speech", (units_by_id[u.id].units + vocabulary.unit_offset).tolist(), SPEECH,
                             vocabulary, [w.word for w in u.words or ()])
            for u in utterances if u.id in units_by_id]
    if "text" in streams:
        encode, batch_size = _text_encoder(vocabulary), 1024
        samples["text"] = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            for (sample_id, value), ids in zip(batch, encode([value for _, value in batch])):
                samples["text"].append(_single_modality(sample_id, ids, TEXT, vocabulary, value.split()))
    return samples


def usable_utterances(utterances: list[Utterance], units_by_id: dict[str, UtteranceUnits]
                      ) -> tuple[list[Utterance], collections.Counter]:
    """The utterances that can be interleaved, and the reasons the others cannot."""
    usable, skipped = [], collections.Counter()
    for utterance in utterances:
        try:
            if utterance.id not in units_by_id:
                raise SkipSample("no units extracted")
            check_utterance(utterance, units_by_id[utterance.id])
            usable.append(utterance)
        except SkipSample as reason:
            skipped[str(reason)] += 1
    return usable, skipped


def build_interleaved_epoch(config: BuildConfig, vocabulary: Vocabulary, epoch: int, utterances: list[Utterance],
                            units_by_id: dict[str, UtteranceUnits]) -> tuple[list[Sample], collections.Counter]:
    """The interleaved samples of one epoch (new spans every epoch), and the skip reasons."""
    encode, interleave, parameters = _text_encoder(vocabulary), INTERLEAVERS[config.method], method_parameters(config)
    samples, skipped = [], collections.Counter()
    for utterance in utterances:
        mask = interleave(len(utterance.words), sample_rng(config.seed, utterance.id, epoch), **parameters)
        try:
            samples.append(build_interleaved(utterance, units_by_id[utterance.id], vocabulary, mask, encode))
        except SkipSample as reason:
            skipped[str(reason)] += 1
    return samples, skipped


def build_sequences(config: BuildConfig) -> dict[str, Any]:
    """Build, mix and pack token shards for `config.num_epochs` epochs; return the index."""
    started = time.perf_counter()
    streams = [s.strip() for s in config.streams.split(",") if s.strip()]
    unknown = set(streams) - set(STREAMS)
    if unknown or not streams:
        raise ValueError(f"unknown stream(s) {', '.join(sorted(unknown)) or '(none)'}; known: {', '.join(STREAMS)}")
    if config.method not in INTERLEAVERS:
        raise ValueError(f"unknown interleaving method '{config.method}'; known: {', '.join(INTERLEAVERS)}")
    shares = parse_mix(config.mix, streams)
    needs_speech = bool({"interleaved", "speech"} & set(streams))
    if needs_speech and not (config.manifest and config.units):
        raise ValueError("the interleaved and speech streams need --manifest and --units")
    if "text" in streams and not config.text_corpus:
        raise ValueError("the text stream needs --text-corpus")
    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise ValueError(f"{out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
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
    index: dict[str, Any] = {"config": asdict(config), "vocab_size": len(vocabulary),
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
            _save_npy(folder / name, chunks[start:start + config.chunks_per_shard])
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
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    os.replace(building, out)
    return index


# --- loading --------------------------------------------------------------------------------


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


# --- looking at it ---------------------------------------------------------------------------


def stats(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Per epoch: chunks, tokens per modality, speech share of tokens and of interleaved words."""
    index = json.loads((Path(folder) / "index.json").read_text())
    rows = []
    for entry in index["epochs"]:
        counts = entry["token_counts"]
        speech, text_tokens = counts.get("speech", 0), counts.get("text", 0)
        words = entry["interleaved_words"]
        rows.append({
            "epoch": entry["epoch"], "num_chunks": entry["num_chunks"],
            "tokens": entry["num_chunks"] * index["context_length"],
            "speech_tokens": speech, "text_tokens": text_tokens, "marker_tokens": counts.get("marker", 0),
            "dropped_tokens": counts.get("dropped", 0),
            "speech_token_share": speech / max(1, speech + text_tokens),
            "interleaved_speech_word_share": entry["interleaved_speech_words"] / words if words else None,
            "tokens_by_stream": entry["tokens_by_stream"], "skipped": entry["skipped"],
        })
    return rows


def render_sample(sample: Sample, vocabulary: Vocabulary, max_units: int = 12) -> str:
    """A sample as text: text runs in plain words, speech runs as compact unit runs with their words."""
    lines = [f"sample {sample.id}: {len(sample.tokens)} tokens, {sample.num_speech_words}/{sample.num_words} "
             f"words as speech"]
    for run in sample.runs:
        ids, words = sample.tokens[run.first_token + 1:run.end_token], run.words
        if run.modality == TEXT:
            lines.append(f"  <text>   {vocabulary.tokenizer.decode(ids.tolist())}")
        else:
            units = (ids - vocabulary.unit_offset).tolist()
            shown = " ".join(str(u) for u in units[:max_units]) + (" ..." if len(units) > max_units else "")
            lines.append(f"  <speech> [{len(units)} units: {shown}]  \"{' '.join(words)}\"")
    return "\n".join(lines)


def render_chunk(chunk: np.ndarray, vocabulary: Vocabulary, max_units: int = 12) -> str:
    """A packed chunk as text: runs of units compacted, text decoded."""
    out, run = [], []
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
    return " ".join(out)


def rebuild_sample(folder: str | os.PathLike, sample_id: str, epoch: int = 0) -> tuple[Sample, Vocabulary]:
    """Rebuild one interleaved sample of a built folder from (seed, id, epoch) alone."""
    folder = Path(folder)
    index = json.loads((folder / "index.json").read_text())
    config = BuildConfig(**index["config"])
    vocabulary = Vocabulary.load(folder / "tokenizer")
    utterance = next((u for u in read_manifest(config.manifest) if u.id == sample_id), None)
    units = next((u for u in read_units(config.units) if u.id == sample_id), None)
    if utterance is None or units is None:
        raise ValueError(f"no utterance '{sample_id}' with units in {config.manifest}")
    check_utterance(utterance, units)
    mask = INTERLEAVERS[config.method](len(utterance.words), sample_rng(config.seed, sample_id, epoch),
                                       **method_parameters(config))
    return build_interleaved(utterance, units, vocabulary, mask, _text_encoder(vocabulary)), vocabulary
