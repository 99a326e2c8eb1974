"""Offline re-creations of the spoken benchmarks, synthesised with espeak-ng in the published layouts.

sBLIMP-style sets from the BLiMP files (a fixed sample per phenomenon), tSC-style sets
from held-out stories (context, right ending, the last sentence of another story), and
sWUGGY-style sets of a corpus's words, each beside a non-word made from it.
"""

from __future__ import annotations

import collections
import csv
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np

from simslm import assets, jobs, machine, storage
from simslm.config import Config, check_positive
from simslm.eval.layouts import BENCH_FILE, BenchError, frequency_band, load
from simslm.speech import text as text_lib
from simslm.speech.corpus import portable_corpus, read_corpus, split_corpus_spec
from simslm.speech.manifest import iter_utterances
from simslm.speech.synth import synth_task, synthesize_one


@dataclass(frozen=True, kw_only=True)
class BenchBuildConfig(Config):
    """What `simslm bench build` does."""

    kind: str = field(metadata={"choices": lambda: tuple(BENCH_KINDS)})
    """sblimp (from BLiMP), tsc (from held-out stories, with its cross-modal items) or swuggy (a corpus's words,
    each with a non-word made from it)."""
    out: str
    """Output folder (the benchmark, in the published layout, plus bench.json)."""
    voices: Literal["single", "heldout", "train"] = "single"
    """single (one voice), heldout (multi-speaker, voices never used in training), or train (the
    training voices: an in-domain diagnostic, not a held-out benchmark)."""
    source: str = ""
    """sblimp: BLiMP asset or folder of jsonl (default blimp); tsc: corpus[start:stop] of held-out
    stories (default tinystories-sample[2000:]); swuggy: the corpus whose words are tested and counted, as
    ZeroSpeech's are LibriSpeech's (default tinystories-sample: the training text's own words)."""
    exclude: str = ""
    """tsc: comma-separated training manifests, corpora or sequences folders (the manifest and text corpus each was
    built from): building fails if an item shares a story with them."""
    per_phenomenon: int = 10
    """sblimp: pairs per BLiMP phenomenon (a fixed seeded sample)."""
    num_items: int = 200
    """tsc: stories to use (at most); swuggy: words (at most), drawn evenly from ZeroSpeech's frequency bands."""
    counted_in: str = ""
    """swuggy: the corpus the words' frequencies are counted in, as ZeroSpeech counts them in LibriSpeech, the
    training data (default --source); a word of --source it lacks counts 0, out of vocabulary (ZeroSpeech's oov
    band, left out of the in-vocab score)."""
    nonwords: Literal["wuggy", "spelling"] = "wuggy"
    """swuggy: how non-words are made. wuggy: as ZeroSpeech 2021 made sWUGGY's (Wuggy on the CMU dictionary's
    phonetic forms, the candidate phone n-grams tell least apart, word and non-word spoken from phonemes; words the
    dictionary lacks are left out); spelling: one run of vowel or consonant letters replaced by another seen in that
    place, spoken from its letters (this toolkit's first re-creation, before 2026-12-06's thirty-first session)."""
    context_sentences: int = 4
    """tsc: sentences of context before the ending (the published StoryCloze has 4); 0 = whole story."""
    slamkit_pairs: bool = False
    """Also write `slamkit/`: the same pairs as slamkit's speech-only evaluator reads them (ModellingMetricDataset:
    `<n><sep>...wav`, sorted by n and paired in order; here the positive at an even n, its negative at the next,
    so the file system's order cannot swap them; sep '+' for sBLIMP, in a sub-folder per phenomenon, and '_' for
    tSC, whose sides are whole stories: what slamkit's sblimp and tstorycloze configs read)."""
    audio_format: Literal["flac", "wav"] = "flac"
    """Audio files to write; wav makes a tsc folder's audio/ one that slamkit's cross-modal evaluator
    (`cm_storycloze`, `*_correct.wav` with `_incorrect` and `_mutual` beside, and their .txt) reads as it is."""
    seed: int = 0
    """Seed of the item sample, the wrong endings and the voices."""
    num_workers: int = 0
    """Worker processes; 0 = one per core."""

    def check(self) -> None:
        check_positive(self, "per_phenomenon", "num_items")
        check_positive(self, "context_sentences", "num_workers", allow_zero=True)


def _speak_all(tasks: list[dict[str, Any]], num_workers: int) -> dict[str, dict[str, Any]]:
    records = {}
    workers = min(num_workers or machine.default_workers(), max(1, len(tasks)))
    for record in jobs.parallel_map(synthesize_one, tasks, num_workers=workers, total=len(tasks),
                                    description="bench build (synth)"):
        records[record["id"]] = record
    return records


def blimp_pairs(source: str, per_phenomenon: int, seed: int) -> list[dict[str, Any]]:
    """`per_phenomenon` seeded pairs of each phenomenon of BLiMP (a folder of .jsonl files, one a phenomenon, each
    line with `sentence_good` and `sentence_bad`), in file order; a BenchError naming what is not BLiMP."""
    if source and Path(source).is_file():
        raise BenchError(f"{source}: a file, where BLiMP's folder is needed (a .jsonl file a phenomenon)")
    folder = Path(source) if source and Path(source).is_dir() else assets.resolve(source or "blimp").root
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise BenchError(f"{folder}: no .jsonl files (BLiMP's folder holds one a phenomenon)")
    chosen = []
    for number, path in enumerate(files):
        rows = []
        for line_number, (line, problem) in enumerate(storage.text_lines(path), start=1):
            if line is not None and not line.strip():
                continue
            try:
                row = json.loads(line) if line is not None else None
            except json.JSONDecodeError:
                row = None
            if not (isinstance(row, dict) and all(isinstance(row.get(key), str) and row[key].strip()
                                                  for key in ("sentence_good", "sentence_bad"))):
                # A manifest or another folder's .jsonl given as --source: a KeyError's "'sentence_good'" was all
                # it said.
                raise BenchError(f"{path}:{line_number}: {problem or 'not a BLiMP pair'} (a JSON object with "
                                 f"sentence_good and sentence_bad)")
            rows.append(row)
        order = np.random.default_rng([seed, number]).permutation(len(rows))[:per_phenomenon]
        chosen.extend(rows[i] for i in sorted(order))
    return chosen


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"”'])\s+")


def split_sentences(story: str) -> list[str]:
    """Sentences of a story (split after . ! ? and any closing quote)."""
    return [s.strip() for s in _SENTENCE_END.split(story.strip()) if s.strip()]


def story_key(text: str) -> str:
    return " ".join(text_lib.words(text_lib.speakable(text))).lower()


def _is_manifest(path: Path) -> bool:
    with open(path, encoding="utf-8-sig") as handle:
        return "transcript" in handle.readline()


def _sequences_sources(folder: Path) -> list[str]:
    """The speech manifest and the text corpus a `simslm sequences build` folder was built from."""
    from simslm.sequences.build import speech_manifest, text_corpus

    sources = [str(manifest)] if (manifest := speech_manifest(folder)) is not None else []
    if corpus := text_corpus(folder):
        name = split_corpus_spec(corpus)[0]
        if not (Path(name).exists() or name in assets.REGISTRY):  # moved without it, or older and built elsewhere
            raise ValueError(f"{folder}: its text corpus {corpus} is not found from here; name it in --exclude")
        sources.append(corpus)
    return sources


def training_stories(exclude: str) -> set[str]:
    """Normalised texts of the training manifests, corpora or sequences folders (what each was built from) named in
    `exclude`."""
    keys: set[str] = set()
    named = [s.strip() for s in exclude.split(",") if s.strip()]
    sources = [found for source in named for found in
               (_sequences_sources(Path(source)) if (Path(source) / "index.json").is_file() else [source])]
    for source in sources:
        if source.endswith(".jsonl") and Path(source).exists() and _is_manifest(Path(source)):
            found = {story_key(u.transcript) for u in iter_utterances(source)}
        else:
            found = {story_key(value) for _, value, _ in read_corpus(source) if value}
        if not found - {""}:  # an eval.json or a table given by mistake excluded nothing, and the build went on
            raise BenchError(f"{source}: no text in it to exclude (--exclude takes training manifests, text corpora "
                             f"and sequences folders)")
        keys |= found
    return keys


def _tsc_items(config: BenchBuildConfig) -> list[dict[str, Any]]:
    source = config.source or "tinystories-sample[2000:]"
    stories, problems = [], collections.Counter()
    for index, value, problem in read_corpus(source):
        if value:
            stories.append((index, text_lib.speakable(value)))
        else:
            problems[problem or "empty"] += 1
    training = training_stories(config.exclude)
    shared = [index for index, story in stories if story_key(story) in training]
    if shared:
        raise BenchError(f"{len(shared)} stories of {config.source or 'tinystories-sample[2000:]'} are in the "
                         f"training data ({config.exclude}), e.g. line {shared[0]}; use held-out stories")
    usable = []
    for index, story in stories:
        sentences = split_sentences(story)
        if len(sentences) >= 2 and len(text_lib.words(sentences[-1])) >= 3:
            context = sentences[:-1][-config.context_sentences:] if config.context_sentences else sentences[:-1]
            usable.append({"line": index, "context": " ".join(context), "ending": sentences[-1]})
    if len(usable) < 2:  # a manifest or a table given as --source built a benchmark of no item, and said "built"
        found = "; ".join(f"{count} line(s): {problem}" for problem, count in problems.most_common(3))
        raise BenchError(f"{source}: {len(usable)} stor{'y' if len(usable) == 1 else 'ies'} usable for tSC, and it "
                         f"takes 2 or more (a story of two sentences or more, its last of 3 words or more; a .jsonl "
                         f"corpus holds each under \"text\", a .txt one a line){f'; {found}' if found else ''}")
    usable = usable[:config.num_items]
    rng = np.random.default_rng(config.seed)
    for position, item in enumerate(usable):
        # The wrong ending is the last sentence of a random other held-out story (tSC's recipe).
        other = (position + 1 + int(rng.integers(len(usable) - 1))) % len(usable)
        item["wrong_ending"] = usable[other]["ending"]
    return usable


def _build_sblimp(config: BenchBuildConfig, out: Path) -> tuple[dict[str, dict[str, Any]], int, dict[str, Any]]:
    """BLiMP pairs spoken, in the ZeroSpeech sLM21 layout (gold.csv beside the audio: id, voice, filename, type,
    subtype, transcription, correct)."""
    rows = blimp_pairs(config.source, config.per_phenomenon, config.seed)
    tasks = []
    for index, row in enumerate(rows):
        for side in ("good", "bad"):
            tasks.append(synth_task(f"{index:05d}-{side}", row[f"sentence_{side}"], config.voices, config.seed,
                                    index, out, audio_format=config.audio_format))
    records = _speak_all(tasks, config.num_workers)
    # ZeroSpeech's sLM21 syntactic gold.csv, column for column and in its order: its evaluator
    # (`SyntacticTask.syntactic_by_pair`) reads type, subtype and the transcriptions by position.
    gold_rows = [{"id": f"{index:05d}", "voice": records[f"{index:05d}-{side}"].get("speaker", ""),
                  "filename": f"audio/{index:05d}-{side}", "type": row["UID"],
                  "subtype": row.get("linguistics_term", ""), "transcription": row[f"sentence_{side}"],
                  "correct": int(side == "good")}
                 for index, row in enumerate(rows) for side in ("good", "bad")
                 if all("skipped" not in records[f"{index:05d}-{s}"] for s in ("good", "bad"))]
    storage.write_text(out / "gold.csv", _csv(gold_rows))
    return records, len(gold_rows) // 2, {}


def _build_tsc(config: BenchBuildConfig, out: Path) -> tuple[dict[str, dict[str, Any]], int, dict[str, Any]]:
    """Held-out stories spoken, in the cross-modal layout (context, right and wrong ending, with transcripts)."""
    items = _tsc_items(config)
    tasks, texts = [], {}
    for position, item in enumerate(items):
        stem = f"tsc-{item['line']:06d}"
        for role, text in (("mutual", item["context"]), ("correct", item["ending"]),
                           ("incorrect", item["wrong_ending"])):
            tasks.append(synth_task(f"{stem}_{role}", text, config.voices, config.seed, position, out,
                                    audio_format=config.audio_format))
            texts[f"{stem}_{role}"] = text
    records = _speak_all(tasks, config.num_workers)
    bad_stems = {key.rsplit("_", 1)[0] for key, record in records.items() if "skipped" in record}
    for key, text in texts.items():
        if key.rsplit("_", 1)[0] not in bad_stems:
            storage.write_text(out / "audio" / f"{key}.txt", text + "\n")
    return records, len(items) - len(bad_stems), {}


# sWUGGY-style items (after Wuggy, Keuleers & Brysbaert 2010, which made ZeroSpeech 2021's sWUGGY non-words): a
# word split into runs of vowel and consonant letters ('y' a vowel but at a word's start), and one run replaced by
# another of its kind seen in the same place (first, inside, last) in the corpus's words, drawn by their counts. A
# non-word is kept only if it is no English word and sounds like none: not a word of the corpus nor of the CMU
# Pronouncing Dictionary (134,000 words, which pocketsphinx ships; English words the corpus lacks must not pass for
# non-words either, as a TWIST model's text LM may know them), its espeak-ng phonemes no corpus word's (its own
# word's included), its ARPAbet (espeak-ng's phonemes mapped as `align` maps them) no dictionary pronunciation. A
# word none of whose draws passes is left out. Wuggy matches syllables' sub-segments and transition frequencies in
# a phonetic lexicon: this is a re-creation from spelling, not Wuggy.
_WORD_LETTERS = re.compile(r"[a-z]{3,12}")
_NONWORD_TRIES = 200


def _letter_runs(word: str) -> list[tuple[str, str, str]]:
    """(letters, kind: v or c, place: first, inside or last) of each run of one kind of letter in `word`."""
    runs: list[list[str]] = []
    for position, letter in enumerate(word):
        kind = "v" if letter in "aeiou" or (letter == "y" and position > 0 and word[position - 1] not in "aeiou") \
            else "c"
        if runs and runs[-1][1] == kind:
            runs[-1][0] += letter
        else:
            runs.append([letter, kind])
    return [(letters, kind, "first" if index == 0 else "last" if index == len(runs) - 1 else "inside")
            for index, (letters, kind) in enumerate(runs)]


def _word_counts(corpus: str) -> tuple[collections.Counter[str], set[str]]:
    """Each word's count in a corpus (lower-cased), and the words written in lower case somewhere in it (names,
    Lily and Tom, are written capitalised only)."""
    counts: collections.Counter[str] = collections.Counter()
    written_lower: set[str] = set()
    for _, value, _ in read_corpus(corpus):
        for word in text_lib.words(text_lib.speakable(value or "")):
            counts[word.lower()] += 1
            if word.islower():
                written_lower.add(word)
    if not counts:
        raise BenchError(f"{corpus}: no words in it (a .jsonl corpus holds its texts under \"text\", a .txt one a line)")
    return counts, written_lower


def _counted_words(source: str, counted_in: str | None) -> tuple[collections.Counter[str], set[str],
                                                                  collections.Counter[str]]:
    """`source`'s word counts and its words written in lower case, and the counts of `counted_in` (default: the
    same), which place a word in its frequency band."""
    counts, written_lower = _word_counts(source)
    return counts, written_lower, _word_counts(counted_in)[0] if counted_in else counts


def lexical_items(source: str, num_items: int, seed: int, counted_in: str | None = None) -> list[dict[str, Any]]:
    """Up to `num_items` words of the corpus `source` with a non-word each and the word's count in `counted_in`
    (default `source`; a word it lacks counts 0, out of vocabulary), drawn round-robin from ZeroSpeech's frequency
    bands (seeded), in the order drawn."""
    from simslm.speech.align import espeak_arpabet, pocketsphinx_lexicon
    from simslm.speech.espeak import Espeak

    counts, written_lower, frequency = _counted_words(source, counted_in)
    dictionary_words, dictionary_sounds = pocketsphinx_lexicon()
    known = set(counts) | set(frequency) | dictionary_words
    engine = Espeak.instance()
    sounds = {engine.phonemes(word) for word in set(counts) | set(frequency)}
    runs_seen: collections.Counter[tuple[str, str, str]] = collections.Counter()
    eligible = sorted(word for word in written_lower if _WORD_LETTERS.fullmatch(word))
    for word in eligible:
        for letters, kind, place in _letter_runs(word):
            runs_seen[letters, kind, place] += counts[word]
    by_place: dict[tuple[str, str], list[tuple[str, int]]] = collections.defaultdict(list)
    for (letters, kind, place), count in sorted(runs_seen.items()):
        by_place[kind, place].append((letters, count))

    def nonword(word: str, rng: np.random.Generator) -> str | None:
        runs = _letter_runs(word)
        for _ in range(_NONWORD_TRIES):
            index = int(rng.integers(len(runs)))
            letters, kind, place = runs[index]
            others = [(other, count) for other, count in by_place[kind, place]
                      if other != letters and abs(len(other) - len(letters)) <= 1]
            if not others:
                continue
            weights = np.array([count for _, count in others], dtype=float)
            chosen = others[int(rng.choice(len(others), p=weights / weights.sum()))][0]
            candidate = "".join(chosen if i == index else run[0] for i, run in enumerate(runs))
            sound = engine.phonemes(candidate)
            if (candidate not in known and sound and sound not in sounds and re.search(r"(.)\1\1", candidate) is None
                    and espeak_arpabet(candidate) not in dictionary_sounds):
                return candidate
        return None

    items: list[dict[str, Any]] = []
    for word in _drawn_by_band(eligible, frequency, seed):
        if len(items) == num_items:
            break
        made = nonword(word, np.random.default_rng([seed, zlib.crc32(word.encode())]))  # the word's own
        if made is not None:
            items.append({"word": word, "nonword": made, "frequency": frequency[word]})
    if not items:
        raise BenchError(f"{source}: no word of 3 to 12 letters, written in lower case, that a non-word could be "
                         f"made from")
    return items


def _drawn_by_band(words: list[str], frequency: collections.Counter[str], seed: int) -> Iterator[str]:
    """`words` round-robin over ZeroSpeech's frequency bands of their counts, each band in a seeded order."""
    rng = np.random.default_rng(seed)
    bands: dict[str, list[str]] = collections.defaultdict(list)
    for word in words:
        bands[frequency_band(str(frequency[word]))].append(word)
    queues = [list(rng.permutation(band)) for _, band in sorted(bands.items())]
    while any(queues):
        for queue in queues:
            if queue:
                yield str(queue.pop(0))


def phonetic_lexical_items(source: str, num_items: int, seed: int,
                           counted_in: str | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Up to `num_items` words of the corpus `source` that the CMU dictionary pronounces, each with a non-word as
    ZeroSpeech 2021 made sWUGGY's (`nonwords` module), drawn round-robin from ZeroSpeech's frequency bands of their
    counts in `counted_in` (default `source`); and the share of the pairs a phone unigram and bigram model of the
    counted corpus score right (the balance's result: near 0.5)."""
    from simslm.eval import nonwords
    from simslm.speech.align import cmu_pronunciations, espeak_arpabet

    counts, written_lower, frequency = _counted_words(source, counted_in)
    dictionary = cmu_pronunciations()
    wuggy = nonwords.dictionary_wuggy()
    # A corpus's words the dictionary lacks are words too: a candidate sounding like one is no non-word.
    undictionary = {tuple(espeak_arpabet(word).split()) for word in set(counts) | set(frequency)
                    if word not in dictionary}
    tokens: collections.Counter[tuple[str, ...]] = collections.Counter()
    for word, count in frequency.items():
        if word in dictionary:
            tokens[nonwords.stressless(dictionary[word][0])] += count
    balancer = nonwords.Balancer(nonwords.PhoneNgrams(tokens))
    eligible = sorted(word for word in written_lower if _WORD_LETTERS.fullmatch(word) and word in dictionary)
    items: list[dict[str, Any]] = []
    for word in _drawn_by_band(eligible, frequency, seed):
        if len(items) == num_items:
            break
        pronunciation = dictionary[word][0]
        phones = nonwords.stressless(pronunciation)
        candidates = [candidate.phones for candidate in wuggy.candidates(phones, seed)
                      if candidate.phones not in undictionary]
        if not candidates:
            continue
        made = balancer.choose(frequency_band(str(frequency[word])), phones, candidates)
        stresses = nonwords.stress_digits(pronunciation)
        # A non-word has no spelling: ZeroSpeech's gold.csv leaves its `word` empty and gives its phones.
        items.append({"word": word, "nonword": "", "frequency": frequency[word],
                      "word_phones": " ".join(phones), "nonword_phones": " ".join(made),
                      "word_espeak": nonwords.espeak_mnemonics(phones, stresses),
                      "nonword_espeak": nonwords.espeak_mnemonics(made, stresses)})
    if not items:
        raise BenchError(f"{source}: no word of 3 to 12 letters, written in lower case and in the CMU dictionary, "
                         f"that a non-word could be made from")
    return items, balancer.accuracies()


def _build_swuggy(config: BenchBuildConfig, out: Path) -> tuple[dict[str, dict[str, Any]], int, dict[str, Any]]:
    """A corpus's words and their non-words spoken, in the ZeroSpeech sLM21 lexical layout (gold.csv beside the
    audio: id, filename, voice, frequency, word, phones, length, correct), the word and its non-word in one
    voice."""
    source, counted_in = config.source or "tinystories-sample", config.counted_in or None
    notes: dict[str, Any] = {}
    if config.nonwords == "wuggy":
        items, accuracies = phonetic_lexical_items(source, config.num_items, config.seed, counted_in)
        notes["phone_ngram_accuracy"] = {name: round(value, 4) for name, value in accuracies.items()}
    else:
        from simslm.speech.align import espeak_arpabet

        items = [{**item, "word_phones": espeak_arpabet(item["word"]), "nonword_phones": espeak_arpabet(item["nonword"])}
                 for item in lexical_items(source, config.num_items, config.seed, counted_in)]
    # The phonemes are spoken where there are mnemonics (wuggy's items), the text elsewhere.
    tasks = [synth_task(f"{index:05d}-{side}", item[side] or item[f"{side}_phones"].replace(" ", "").lower(),
                        config.voices, config.seed, index, out, audio_format=config.audio_format,
                        phonemes=item.get(f"{side}_espeak", ""))
             for index, item in enumerate(items) for side in ("word", "nonword")]
    records = _speak_all(tasks, config.num_workers)
    # ZeroSpeech's sLM21 lexical gold.csv, column for column (its evaluator, `LexicalTask.load_and_format`, reads
    # `phones` and `length` too): the frequency on the word's row only, the length the word's in phones.
    gold_rows = [{"id": f"{index:05d}", "filename": f"audio/{index:05d}-{side}",
                  "voice": records[f"{index:05d}-{side}"].get("speaker", ""),
                  "frequency": item["frequency"] if side == "word" else "", "word": item[side],
                  "phones": item[f"{side}_phones"], "length": len(item["word_phones"].split()),
                  "correct": int(side == "word")}
                 for index, item in enumerate(items) for side in ("word", "nonword")
                 if all("skipped" not in records[f"{index:05d}-{s}"] for s in ("word", "nonword"))]
    storage.write_text(out / "gold.csv", _csv(gold_rows))
    return records, len(gold_rows) // 2, notes


@dataclass(frozen=True)
class BenchKind:
    """A benchmark that `simslm bench build` re-creates: its builder and the layout it writes."""

    build: Callable[[BenchBuildConfig, Path], tuple[dict[str, dict[str, Any]], int, dict[str, Any]]]
    """Writes the benchmark into the folder: the synthesis records, the items written, and what bench.json adds."""
    layout: str


BENCH_KINDS: dict[str, BenchKind] = {"sblimp": BenchKind(_build_sblimp, "slm21"),
                                     "tsc": BenchKind(_build_tsc, "cross-modal"),
                                     "swuggy": BenchKind(_build_swuggy, "slm21-lexical")}
# The separator slamkit's metric functions split file names on (metric/modelling_metric.py), and whether its
# metric config reads the pairs from sub-folders (config/metric/sblimp.yaml and swuggy_inter.yaml: `subfolder:
# true`; tstorycloze.yaml: false), so that its own configs read the folder as it is.
SLAMKIT_SEPARATORS = {"sblimp": "+", "tsc": "_", "swuggy": "_"}
SLAMKIT_SUBFOLDERS = {"sblimp": True, "tsc": False, "swuggy": True}


def write_slamkit_pairs(out: Path, kind: str) -> int:
    """The benchmark's pairs again under `out/slamkit`, speech only, named as slamkit's evaluator pairs them: sBLIMP
    in a sub-folder per phenomenon, as slamkit's sblimp config reads it."""
    from simslm.speech import audio

    separator = SLAMKIT_SEPARATORS[kind]
    folder = out / "slamkit"
    _, pairs = load(out, "S")

    def safe(text: str, also: str = "") -> str:
        """Letters, digits, '-' and '.' kept; a folder's name may keep '_' too (no separator is looked for in it)."""
        return "".join(char if char.isalnum() or char in "-." + also else "-" for char in text)

    for number, pair in enumerate(pairs):
        where = folder / safe(pair.group, "_") if SLAMKIT_SUBFOLDERS[kind] else folder
        for offset, (side, role) in enumerate(((pair.positive, "correct"), (pair.negative, "incorrect"))):
            # A tSC side is its context and ending spoken one after the other: the whole story.
            samples = np.concatenate([audio.load_audio(part.audio) for part in side])
            audio.write_audio(where / f"{2 * number + offset}{separator}{safe(pair.id)}_{role}.wav", samples)
    storage.write_json(folder / BENCH_FILE, {"layout": "slamkit-pairs", "separator": separator,
                                             "note": "speech-only pairs in slamkit's ModellingMetricDataset naming"})
    return len(pairs)


def build_benchmark(config: BenchBuildConfig) -> dict[str, Any]:
    """Synthesise an offline benchmark in its published layout; return what bench.json records.

    Built whole beside `--out` and moved into place: a build again into a benchmark's folder (fewer items, another
    seed) replaces it, where writing into it kept the earlier build's items beside the new ones, and `eval` scored
    both. A folder that holds something other than a benchmark simslm built is not replaced but refused."""
    out = Path(config.out)
    storage.check_replaceable(out, BENCH_FILE, "a benchmark `simslm bench build` made", "build into a new --out")
    kind = BENCH_KINDS[config.kind]
    with storage.atomic_path(out) as staging:
        staging.mkdir()
        records, num_items, notes = kind.build(config, staging)
        if config.slamkit_pairs:
            write_slamkit_pairs(staging, config.kind)
        skipped = sum(1 for record in records.values() if "skipped" in record)
        meta = {"layout": kind.layout, "kind": config.kind, "num_items": num_items, "num_files_skipped": skipped,
                "config": config.to_dict(), "inputs": recorded_inputs(config), **notes,
                "note": "offline re-creation with espeak-ng voices; not the published benchmark"}
        storage.write_json(staging / BENCH_FILE, meta)
    return meta


def recorded_inputs(config: BenchBuildConfig) -> dict[str, Any]:
    """The files and folders a build read, as bench.json records them beside its config (which keeps them as given,
    relative to where the build ran): relative to the benchmark's folder, so found when the two move together,
    and absolute (`portable_corpus`). An asset's name is left out: it reads the same from anywhere."""
    given = {"source": config.source, "counted_in": config.counted_in}
    inputs: dict[str, Any] = {name: recorded for name, spec in given.items()
                              if (recorded := portable_corpus(spec, config.out))}
    excluded = [recorded for spec in config.exclude.split(",") if (recorded := portable_corpus(spec.strip(),
                                                                                                 config.out))]
    return {**inputs, **({"exclude": excluded} if excluded else {})}


def _csv(rows: list[dict[str, Any]]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["id", "filename", "type", "correct"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
