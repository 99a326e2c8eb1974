"""Building token shards: the interleaved, speech-only and text-only streams, mixed and packed.

Each epoch draws new interleaving spans (`interleave`; or reuses the first epoch's, as slamkit's
`repetitions` do, with `span_draws="once"`), mixes the streams by token share,
and packs the samples into uint32 shards of `context_length` tokens, written under a
temporary folder and renamed at the end.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from simslm import assets, jobs, machine, storage
from simslm.config import Config, ConfigError, check_positive, flag, registry_choices
from simslm.sequences.interleave import (
    INTERLEAVERS,
    MARKER,
    SPEECH,
    TEXT,
    Sample,
    SkipReason,
    SkipSample,
    UnitRule,
    check_utterance,
    interleaved_sample,
    interleaved_string,
    sample_rng,
    single_modality_sample,
)
from simslm.sequences.loader import pack_rows, read_index
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech import text as text_lib
from simslm.speech.corpus import placed_corpus, portable_corpus, read_corpus, split_corpus_spec
from simslm.speech.manifest import Utterance, iter_utterances
from simslm.units.folder import UtteranceUnits, checked_manifest, read_units, unit_source

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
    """Shares per stream as name=share, e.g. interleaved=0.5 speech=0.25 text=0.25 (default: equal)."""
    mix_by: Literal["samples", "tokens"] = "samples"
    """What the shares are shares of. samples (slamkit, `interleave_datasets`): each next sample comes from a
    stream with that probability; tokens: the same draw, with probabilities that give each stream that share
    of the tokens (the paper chose its sample ratios by hand to match tokens)."""
    method: str = field(default="poisson", metadata=registry_choices(INTERLEAVERS))
    """Interleaving method (its parameters are the options below that it names)."""
    speech_ratio: float | None = None
    """η: share of words to make speech (poisson; unset, 0.3 as slamkit's SIMS config), each word's chance of being
    speech (random; unset, 0.5 as slamkit's `random`, which takes no η) or the chance of a speech utterance
    (utterance; unset, 0.5)."""
    poisson_lambda: float = 10.0
    """Mean span length in words for poisson (slamkit SIMS: 10)."""
    span_length: int = 10
    """Span length in words for span."""
    span_start_probability: float = 0.05
    """Per-word chance to start a span, for span."""
    unit_rule: UnitRule = "end"
    """Units of a spoken span: end (slamkit: units whose end time is inside the words' time range) or
    midpoint (units whose midpoint is)."""
    context_length: int = 2048
    """Tokens per packed row (slamkit SIMS: 2048); a longer sample is cut into pieces this long."""
    num_epochs: int = 1
    """Epochs to build; each draws a new order and mixture, and new spans unless --span-draws once. Training past
    the last one cycles them, each time in a new row order: one epoch trained N times is slamkit's
    `num_train_epochs` N over the samples its `prepare_tokens` wrote once."""
    span_draws: Literal["epoch", "once"] = "epoch"
    """epoch: each epoch draws new interleaving spans; once: every epoch takes the first epoch's spans and is
    ordered and mixed anew, as slamkit's `repetitions` mix its once-prepared samples again."""
    chunks_per_shard: int = 4096
    """Packed rows per shard file."""
    seed: int = 0
    """Seed of the spans, the stream order and the mixing draws."""
    num_shards: int = 1
    """Build one part of the corpus: the utterances and text lines whose number is --shard-index modulo this, so
    that parts build in parallel (processes, machines, a SLURM array), each holding only its share in memory;
    `simslm sequences merge` joins the parts into one folder."""
    shard_index: int | None = None
    """Which part this build is (0 to --num-shards - 1; default: RANK under torchrun, else SLURM_ARRAY_TASK_ID in
    a SLURM array, modulo --num-shards, else 0). The index records the part built."""
    overwrite: bool = False
    """Replace an earlier build at the output folder (once the new one is complete); a folder holding anything
    else is refused."""

    def check(self) -> None:
        check_positive(self, "context_length", "num_epochs", "chunks_per_shard", "poisson_lambda", "span_length",
                       "num_shards")
        if self.poisson_lambda > 1e18:  # past numpy's Poisson draws ("lam value too large")
            raise ConfigError(f"--poisson-lambda must be at most 1e18 (a mean span in words), not {self.poisson_lambda}")
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"--shard-index must be between 0 and --num-shards - 1 ({self.num_shards - 1}), "
                              f"not {self.shard_index}")
        for name in ("speech_ratio", "span_start_probability"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
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


def mix_streams(samples: dict[str, list[Sample]], shares: dict[str, float], rng: np.random.Generator, *,
                by: str = "samples") -> tuple[list[Sample], dict[str, int]]:
    """Interleave the streams as `datasets.interleave_datasets(probabilities, "first_exhausted")` does for slamkit.

    Each next sample comes from a stream drawn with its probability, in the stream's own
    order; the mixture ends with the sample that empties a stream (the first to run out).
    With the same streams and `np.random.default_rng(0)`, the order is slamkit's (it passes
    seed=0), sample for sample (tested against `datasets` itself). `by="tokens"` turns token shares
    into those probabilities (share / mean sample length), so each stream's expected share of
    the tokens is its share. Returns the samples in draw order and the tokens taken per stream.
    """
    names = [name for name in samples if shares.get(name, 0) > 0]
    empty = [name for name in names if not samples[name]]
    if empty:
        raise ValueError(f"stream(s) {', '.join(empty)} produced no samples")
    weights = np.array([shares[name] / (np.mean([len(s.tokens) for s in samples[name]]) if by == "tokens" else 1.0)
                        for name in names])
    probabilities = weights / weights.sum()
    cursor = dict.fromkeys(names, 0)
    chosen, taken = [], dict.fromkeys(names, 0)
    while True:
        # Blocks of draws, as `datasets` draws them (the block size does not change the sequence).
        for draw in rng.choice(len(names), size=1000, p=probabilities):
            name = names[draw]
            sample = samples[name][cursor[name]]
            cursor[name] += 1
            chosen.append(sample)
            taken[name] += len(sample.tokens)
            if cursor[name] == len(samples[name]):
                return chosen, taken


def context_pieces(samples: list[Sample], context_length: int) -> list[Sample]:
    """Each sample cut into pieces of `context_length` tokens and the rest, in order, each a sample of its own:
    slamkit's `chunk_texts`, which it maps over every stream before it mixes them, so that a draw of the mixture
    takes one piece, and a stream of long documents gives as many draws as it has pieces."""
    pieces = []
    for sample in samples:
        if len(sample.tokens) <= context_length:
            pieces.append(sample)
            continue
        for number, start in enumerate(range(0, len(sample.tokens), context_length)):
            pieces.append(Sample(id=f"{sample.id}#{number}", tokens=sample.tokens[start:start + context_length],
                                 kinds=sample.kinds[start:start + context_length]))
    return pieces


KIND_NAMES = {TEXT: "text", SPEECH: "speech", MARKER: "marker"}


def pack(samples: list[Sample], context_length: int, vocabulary: Vocabulary, *, open_rows: int = 32
         ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Rows of `context_length` tokens holding whole documents, with positions that restart at each one.

    A sample longer than the context is cut into pieces of `context_length` and the rest
    (slamkit's `chunk_texts`; `build_sequences` has cut them before the mixture, as slamkit
    does), each piece a document of its own; pieces go into the first of
    the last `open_rows` rows with room for them, and the pad token fills what is left. The
    positions say where documents start, so attention and loss stay within each document,
    as slamkit's `DataCollatorWithFlattening` and variable-length attention have it.
    """
    counts: collections.Counter = collections.Counter()
    pieces = []
    for sample in samples:
        for start in range(0, len(sample.tokens), context_length):
            pieces.append(sample.tokens[start:start + context_length])
            for kind, number in zip(*np.unique(sample.kinds[start:start + context_length], return_counts=True)):
                counts[KIND_NAMES[int(kind)]] += int(number)
    tokens, positions = pack_rows(pieces, context_length, vocabulary.pad_id, open_rows=open_rows)
    counts["padding"] = int(tokens.size - sum(len(piece) for piece in pieces))
    return tokens, positions, dict(counts)


def _manifest_share(config: BuildConfig) -> list[Utterance]:
    """This part's utterances: those whose number is --shard-index modulo --num-shards.

    A part of a build reads the whole manifest. When the units' extraction checked this very manifest (units.json
    stamps it), every line is known to parse and no id to repeat, so only this part's lines are parsed: the checked
    pass over every line is some 19 minutes at Libri-Light's 21M segments, in each part."""
    if config.num_shards > 1 and checked_manifest(config.units, config.manifest):
        lines = (line for line, _ in storage.text_lines(config.manifest) if line.strip())
        return [Utterance.from_json(json.loads(line)) for number, line in enumerate(lines)
                if number % config.num_shards == config.shard_index]
    return [u for number, u in enumerate(iter_utterances(config.manifest))
            if number % config.num_shards == config.shard_index]


def _say_capitals(config: BuildConfig, utterances: list[Utterance], texts: list[tuple[str, str]]) -> None:
    """A warning for transcripts or a text corpus written all in capitals (LibriSpeech's transcripts and its LM
    corpus): a text LM's tokenizer reads "THE" apart from "the", so a TWIST model would not see the text as it learnt
    text (in capitals SmolLM2 takes 2.1 tokens a word, not 1.06, and 2.9 nats more a word: docs/LOG.md)."""
    for option, source, found in (("--manifest", config.manifest, (u.transcript for u in utterances)),
                                  ("--text-corpus", config.text_corpus, (text for _, text in texts))):
        if {text_lib.letter_case(text) for text in found} - {None} == {"upper"}:
            advice = ("`simslm manifest import --case lower` imports them in lower case" if option == "--manifest"
                      else "lowercase it for a pretrained text LM")
            print(f"simslm sequences build: warning: {option} {source}: all its text is in capitals, which a text "
                  f"LM's tokenizer reads apart from lower-case text; {advice}", file=sys.stderr)


def _read_text_corpus(source: str, num_shards: int = 1, shard_index: int = 0) -> list[tuple[str, str]]:
    """The text stream's lines (this shard's: those whose line number is `shard_index` modulo `num_shards`); a
    ValueError saying why, when none has words."""
    stem = assets.resolve_file(split_corpus_spec(source)[0]).stem
    texts, problems = [], collections.Counter()
    for index, value, problem in read_corpus(source):
        if index % num_shards != shard_index:
            continue
        if value and text_lib.has_words(value):
            texts.append((f"{stem}-text-{index:06d}", text_lib.speakable(value)))
        else:
            problems[problem or "no words"] += 1
    if not texts:
        # A manifest given as the corpus, say, has its text under "transcript": each line says "no string field".
        found = "; ".join(f"{count} line(s): {problem}" for problem, count in problems.most_common(3))
        raise ValueError(f"{source}: no line with words to make a text sample of ({found or 'no lines'}; a .jsonl "
                         f"corpus holds each text under \"text\", a .txt corpus one text a line)")
    return texts


def build_fixed_streams(streams: list[str], vocabulary: Vocabulary, utterances: list[Utterance],
                        units_by_id: dict[str, UtteranceUnits], texts: list[tuple[str, str]]
                        ) -> dict[str, list[Sample]]:
    """The speech-only and text-only samples: the same in every epoch, so built once."""
    samples: dict[str, list[Sample]] = {}
    if "speech" in streams:
        spoken = [u for u in utterances if u.id in units_by_id]
        strings = [vocabulary.unit_string(units_by_id[u.id].units) for u in spoken]
        samples["speech"] = [single_modality_sample(f"{u.id}/speech", ids, SPEECH, vocabulary,
                                                    [w.word for w in u.words or ()])
                             for u, ids in zip(spoken, _encode_in_batches(vocabulary, strings))]
    if "text" in streams:
        samples["text"] = [single_modality_sample(sample_id, ids, TEXT, vocabulary, value.split())
                           for (sample_id, value), ids in
                           zip(texts, _encode_in_batches(vocabulary, [value for _, value in texts]))]
    return samples


def _encode_in_batches(vocabulary: Vocabulary, strings: list[str], batch_size: int = 512) -> list[list[int]]:
    return [ids for start in range(0, len(strings), batch_size)
            for ids in vocabulary.encode_samples(strings[start:start + batch_size])]


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
    method = INTERLEAVERS[config.method]
    parameters = method.arguments(config)
    drawn, skipped = [], collections.Counter()
    for utterance in utterances:
        mask = method.draw(len(utterance.words), sample_rng(config.seed, utterance.id, epoch), **parameters)
        try:
            drawn.append((utterance, mask, interleaved_string(utterance, units_by_id[utterance.id], vocabulary, mask,
                                                              config.unit_rule)))
        except SkipSample as skip:
            skipped[skip.reason.value] += 1
    encoded = _encode_in_batches(vocabulary, [text for _, _, text in drawn])
    return [interleaved_sample(utterance.id, ids, utterance, mask, vocabulary)
            for (utterance, mask, _), ids in zip(drawn, encoded)], skipped


def build_sequences(config: BuildConfig) -> dict[str, Any]:
    """Build, mix and pack token shards for `config.num_epochs` epochs; return the index."""
    started = time.perf_counter()
    if config.shard_index is None:
        config = replace(config, shard_index=machine.launcher_shard(config.num_shards))
    streams = list(config.streams)
    shares = parse_mix(config.mix, streams)
    needs_speech = bool({"interleaved", "speech"} & set(streams))
    out = Path(config.out)
    _refuse_filled(out, config.overwrite, {"--units": config.units, "--manifest": config.manifest,
                                           "--text-corpus": config.text_corpus, "--tokenizer": config.tokenizer})
    utterances, units_by_id, num_units = [], {}, 0
    if needs_speech:
        # A shard keeps its share of the manifest and of the units as it reads them, never the whole corpus.
        utterances = _manifest_share(config)
        wanted = {u.id for u in utterances} if config.num_shards > 1 else None
        units_by_id = {u.id: u for u in read_units(config.units, wanted)}
        num_units = int(unit_source(config.units).k)
    texts = (_read_text_corpus(config.text_corpus, config.num_shards, config.shard_index) if "text" in streams
             else [])
    _say_capitals(config, utterances if "interleaved" in streams else [], texts)
    vocabulary = Vocabulary.build(config.tokenizer, num_units)
    # Everything is written under a temporary folder and renamed at the end: a build that
    # dies leaves no half dataset behind, and an older dataset stays until the new one is whole.
    with storage.atomic_path(out, replace=config.overwrite) as building:
        building.mkdir(parents=True)
        index = _build_into(building, config, vocabulary, streams, shares, utterances, units_by_id, texts)
        index["wall_sec"] = round(time.perf_counter() - started, 3)
        storage.write_json(building / "index.json", index)
    return index


@dataclass(frozen=True, kw_only=True)
class MergeConfig(Config):
    """What `simslm sequences merge` does."""

    parts: tuple[str, ...]
    """The folders of every part of one sharded build (`sequences build --num-shards N --shard-index i`)."""
    out: str
    """Output folder: one sequences folder that `simslm train` reads as it reads an unsharded build."""
    overwrite: bool = False
    """Replace an earlier build at the output folder (once the new one is complete); a folder holding anything
    else is refused."""


# What may differ between the parts of one build; everything else in their configs must be the same.
PART_FIELDS = ("out", "overwrite", "shard_index")


def merge_sequences(config: MergeConfig) -> dict[str, Any]:
    """Join the parts of a sharded build: epoch e's rows are every part's rows of epoch e (hard links to the parts'
    files where the file system allows, else copies: the parts stay as they are), and its counts are their sums.

    Refused, naming the part: a folder that is not a part, parts of another build (another config, tokenizer or
    context), and a set that lacks a part or holds one twice, which would train on part of a corpus as if whole."""
    started = time.perf_counter()
    out = Path(config.out)
    _refuse_filled(out, config.overwrite, {"a part": config.parts})
    folders = [Path(part) for part in config.parts]
    indexes = [_part_index(folder) for folder in folders]
    first = indexes[0]
    shared = {key: value for key, value in first["config"].items() if key not in PART_FIELDS}
    tokenizer = storage.content_digest(folders[0] / "tokenizer")
    for folder, index in zip(folders[1:], indexes[1:]):
        differing = sorted(key for key in set(shared) | set(index["config"]) - set(PART_FIELDS)
                           if index["config"].get(key) != shared.get(key))
        if differing:
            raise ValueError(f"{folder}: a part of another build than {folders[0]} (it differs in "
                             f"{', '.join(differing)})")
        if storage.content_digest(folder / "tokenizer") != tokenizer:
            raise ValueError(f"{folder}: its tokenizer differs from {folders[0]}'s")
    num_shards = shared["num_shards"]
    by_index: dict[int, list[Path]] = collections.defaultdict(list)
    for folder, index in zip(folders, indexes):
        by_index[index["config"]["shard_index"]].append(folder)
    twice = next(((number, found) for number, found in by_index.items() if len(found) > 1), None)
    if twice:
        raise ValueError(f"{twice[1][1]}: the same part ({twice[0]} of {num_shards}) as {twice[1][0]}")
    absent = [str(number) for number in range(num_shards) if number not in by_index]
    if absent:
        raise ValueError(f"{folders[0]}: the build has {num_shards} parts and part(s) {', '.join(absent)} are not "
                         f"given; merge every --shard-index")
    order = sorted(range(len(folders)), key=lambda i: indexes[i]["config"]["shard_index"])
    with storage.atomic_path(out, replace=config.overwrite) as building:
        building.mkdir(parents=True)
        shutil.copytree(folders[0] / "tokenizer", building / "tokenizer")
        merged = {key: value for key, value in first.items()
                  if key not in ("epochs", "wall_sec", *SPEECH_INPUTS)}
        merged["config"] = {**shared, "out": str(out), "num_shards": 1, "shard_index": 0}
        merged["merged_from"] = {"num_shards": num_shards,
                                 "parts": [storage.portable_path(folders[i], out) for i in order]}
        for key in (*SPEECH_INPUTS, TEXT_CORPUS_FILE):
            if key in first:
                merged[key] = {**first[key], **storage.portable_path(storage.placed_path(first[key], folders[0]), out)}
        merged["epochs"] = [_merge_epoch(building, [(folders[i], indexes[i]["epochs"][epoch]) for i in order])
                            for epoch in range(len(first["epochs"]))]
        merged["wall_sec"] = round(time.perf_counter() - started, 3)
        merged["parts_wall_sec"] = [indexes[i].get("wall_sec") for i in order]
        storage.write_json(building / "index.json", merged)
    return merged


def _part_index(folder: Path) -> dict[str, Any]:
    index = read_index(folder)
    if index.get("format") != 2 or "num_shards" not in index.get("config", {}):
        raise ValueError(f"{folder}: not a part of a sharded build (`sequences build --num-shards N "
                         f"--shard-index i` makes one)")
    return index


def _merge_epoch(building: Path, parts: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """One epoch of the merged folder: the parts' shard files in part order, renumbered, and their counts summed."""
    epoch = parts[0][1]["epoch"]
    folder = building / f"epoch-{epoch:03d}"
    folder.mkdir()
    entry: dict[str, Any] = {"epoch": epoch, "shards": [], "position_shards": []}
    for part, part_entry in parts:
        for names, prefix, key in ((entry["shards"], "shard", "shards"),
                                   (entry["position_shards"], "positions", "position_shards")):
            for name in part_entry[key]:
                names.append(f"{prefix}-{len(names):05d}.npy")
                _link_or_copy(part / f"epoch-{epoch:03d}" / name, folder / names[-1])
        for key, value in part_entry.items():
            if key in ("epoch", "shards", "position_shards"):
                continue
            if isinstance(value, dict):
                totals = entry.setdefault(key, {})
                for name, count in value.items():
                    totals[name] = totals.get(name, 0) + count
            else:
                entry[key] = entry.get(key, 0) + value
    return entry


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def part_note(built: dict[str, Any]) -> str | None:
    """What a sequences folder's build config (index.json's `config`) says when the folder is one part of a build
    in parts, which is a whole sequences folder by design: a forgotten merge would use a share of the corpus."""
    if built.get("num_shards", 1) == 1:
        return None
    return (f"part {built.get('shard_index', 0)} of the {built['num_shards']} of a build in parts; `simslm sequences "
            f"merge` joins them into the whole corpus")


def _refuse_filled(out: Path, overwrite: bool, inputs: dict[str, Any]) -> None:
    """Stop before any work when the output folder holds something and replacing it was not asked for, when it
    holds something other than sequences (`--overwrite` replaces a build, not any folder), or when replacing it
    would delete one of the build's own `inputs` (what names it: its path or paths): `--overwrite` into the units
    folder replaced the units with the sequences built from them."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: a file, where a folder is needed")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"{out} is not empty; pass --overwrite to replace it")
    for option, paths in inputs.items():
        for given in paths if isinstance(paths, (list, tuple)) else [paths]:
            if given is not None and Path(given).exists() and Path(given).resolve().is_relative_to(out.resolve()):
                raise ValueError(f"{out}: holds {given} ({option}), which --overwrite would delete; write to "
                                 f"another --out")
    storage.check_replaceable(out, "index.json", "sequences `simslm sequences build` made", "write to another --out")


# The speech inputs a sequences folder records relative to itself (index.json key: build config field).
SPEECH_INPUTS = {"units_folder": "units", "manifest_file": "manifest"}
# The text corpus, when it is a file: recorded as the speech inputs are, with the slice of its lines the build took.
TEXT_CORPUS_FILE = "text_corpus_file"


def speech_units_folder(data: str | os.PathLike) -> Path | None:
    """The units folder a sequences folder was built from (None for text only)."""
    return _speech_input(data, "units_folder")


def speech_manifest(data: str | os.PathLike) -> Path | None:
    """The manifest a sequences folder was built from (None for text only)."""
    return _speech_input(data, "manifest_file")


def text_corpus(data: str | os.PathLike) -> str | None:
    """The text corpus a sequences folder was built from, as a corpus spec that reads from here: a file's path found
    relative to the folder (after the two moved together), with its slice; an asset's name, or what folders built
    before the index recorded it hold, as the build config gave it."""
    index = storage.read_json(Path(data) / "index.json")
    if TEXT_CORPUS_FILE in index:
        return placed_corpus(index[TEXT_CORPUS_FILE], data)
    return index["config"].get("text_corpus")


def _speech_input(data: str | os.PathLike, key: str) -> Path | None:
    """Where the index records a speech input, relative to the folder (so it is found after the two move together),
    else as the build config gave it (folders built before the index recorded it)."""
    index = storage.read_json(Path(data) / "index.json")
    if key in index:
        return storage.placed_path(index[key], data)
    given = index["config"].get(SPEECH_INPUTS[key]) \
        if {"interleaved", "speech"} & set(index["config"].get("streams", ())) else None
    return Path(given) if given else None


def _build_into(building: Path, config: BuildConfig, vocabulary: Vocabulary, streams: list[str],
                shares: dict[str, float], utterances: list[Utterance], units_by_id: dict[str, UtteranceUnits],
                texts: list[tuple[str, str]]) -> dict[str, Any]:
    vocabulary.save(building / "tokenizer")
    # format 2: rows of whole documents with a positions file beside each token shard.
    index: dict[str, Any] = {"config": config.to_dict(), "format": 2, "vocab_size": len(vocabulary),
                             "context_length": config.context_length, "epochs": []}
    if {"interleaved", "speech"} & set(streams):
        # The config keeps the paths as given; these move with the folders (see _speech_input).
        for key, given in SPEECH_INPUTS.items():
            index[key] = storage.portable_path(getattr(config, given), config.out)
    if recorded := portable_corpus(config.text_corpus, config.out):  # a path, not an asset's name (a file wins)
        index[TEXT_CORPUS_FILE] = recorded
    fixed = build_fixed_streams(streams, vocabulary, utterances, units_by_id, texts)
    usable, unusable = usable_utterances(utterances, units_by_id) if "interleaved" in streams else ([], {})
    drawn = None  # the interleaved samples and skips of the epoch whose spans this one takes
    # Parts of a sharded build order and mix their streams with draws of their own (an unsharded build's are as
    # they always were).
    part = () if config.num_shards == 1 else (config.num_shards, config.shard_index)
    for epoch in jobs.progress(range(config.num_epochs), "sequences build (epochs)"):
        samples = dict(fixed)
        skipped = collections.Counter(unusable)
        if "interleaved" in streams:
            if drawn is None or config.span_draws == "epoch":
                drawn = build_interleaved_epoch(config, vocabulary, epoch, usable, units_by_id)
            samples["interleaved"], span_skips = drawn
            skipped.update(span_skips)
            if not samples["interleaved"]:
                hint = "; `simslm align` adds word timings" if SkipReason.NO_TIMINGS.value in skipped else ""
                raise ValueError(f"{config.manifest}: no utterance could be interleaved "
                                 f"({dict(skipped) or 'no utterances'}){hint}")
        # Each epoch takes its stream samples in a new order, cuts them to the context as slamkit does before it
        # mixes its streams, then draws the mixture piece by piece.
        pieces = {}
        for name in samples:
            order = np.random.default_rng([config.seed, epoch, STREAMS.index(name), *part]).permutation(
                len(samples[name]))
            samples[name] = [samples[name][i] for i in order]
            pieces[name] = context_pieces(samples[name], config.context_length)
        chosen, taken = mix_streams(pieces, shares, np.random.default_rng([config.seed, epoch, 1, *part]),
                                    by=config.mix_by)
        stream_of = {id(piece): name for name, stream in pieces.items() for piece in stream}
        drawn_pieces = collections.Counter(stream_of[id(piece)] for piece in chosen)
        chunks, positions, counts = pack(chosen, config.context_length, vocabulary)
        folder = building / f"epoch-{epoch:03d}"
        folder.mkdir()
        shard_names, position_names = [], []
        for number, start in enumerate(range(0, len(chunks), config.chunks_per_shard)):
            for names, prefix, array in ((shard_names, "shard", chunks), (position_names, "positions", positions)):
                names.append(f"{prefix}-{number:05d}.npy")
                np.save(folder / names[-1], array[start:start + config.chunks_per_shard])
        interleaved = samples.get("interleaved", [])
        index["epochs"].append({
            "epoch": epoch, "shards": shard_names, "position_shards": position_names, "num_chunks": int(len(chunks)),
            "num_documents": len(chosen), "token_counts": counts,
            "tokens_by_stream": taken, "samples_by_stream": {n: len(v) for n, v in samples.items()},
            "pieces_by_stream": {n: len(v) for n, v in pieces.items()},
            # The mixture ends when its first stream runs out: what it drew of each stream it mixes (a stream may end
            # it before any piece of another is drawn).
            "pieces_drawn_by_stream": {n: drawn_pieces[n] for n in pieces if shares.get(n, 0) > 0},
            "skipped": dict(skipped),
            "interleaved_words": int(sum(s.num_words for s in interleaved)),
            "interleaved_speech_words": int(sum(s.num_speech_words for s in interleaved)),
        })
    return index
