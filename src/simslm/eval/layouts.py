"""Spoken benchmark sets: loaders for the published layouts and offline re-creations.

Every set becomes a list of `Pair`s: a positive and a negative side, each a sequence of
`Part`s (speech audio or text), scored by `simslm.evaluate`. Layouts read:

- `slm21`: ZeroSpeech 2021 sBLIMP (`gold.csv` with `id`, `filename`, `type`, `correct`,
  audio beside it); pairs share an `id` (and `voice`, when the file has that column).
- `slm21-lexical`: ZeroSpeech 2021 sWUGGY (`lexical/dev`: `gold.csv` with `id`, `filename`,
  `voice`, `frequency`, `word`, `correct`): a word and its non-word share an `id` and a
  `voice`; the word's LibriSpeech count puts the pair in a frequency band.
- `storycloze`: the Spoken StoryCloze folders (sSC, tSC): `<id>_correct.wav` and
  `<id>_incorrect.wav`, found recursively; a sub-folder name (a speaker) becomes the group.
- `hf-parquet`: the multi-speaker StoryCloze as the hub stores it
  (`slprl/multispeaker-storycloze`): parquet shards per task and speaker with the audio
  bytes in the rows.
- `cross-modal`: `<id>_mutual`, `<id>_correct`, `<id>_incorrect`, each as `.wav`/`.flac` and
  `.txt`: the context and the two endings, so S, S→T, T→S and T (the paper's Table 2) are
  four ways of pairing the same items.
- `slamkit-pairs`: slamkit's own speech-only sets (`<n>+...wav` for sBLIMP, `<n>_...wav` for
  sWUGGY and StoryCloze), in one folder or in sub-folders, taken two by two in order of n.
- `salmon`: SALMon's acoustic consistency and alignment parts, a sub-folder each, where the two
  files of sample n (`<name>_<n>_...wav`) sorted by path are its positive and negative.

A published set can also be named by its Hugging Face hub id (`bench_folder`): it is
downloaded once into the hub's cache and read by the same loaders.

`simslm bench build` writes offline re-creations in these same layouts (sBLIMP-style from
BLiMP, tSC-style from held-out TinyStories stories, sWUGGY-style from a corpus's words and
non-words made from them), so one loader serves them all. They are re-creations with espeak-ng
voices, not the published sets; `bench.json` says so.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import operator
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

from simslm import assets, storage
from simslm.speech.audio import AUDIO_SUFFIXES

BENCH_FILE = "bench.json"
# The paper's Table 2 columns: context modality -> ending modality.
CrossMode = Literal["S", "S2T", "T2S", "T"]
CROSS_MODES: dict[str, tuple[str, str]] = {"S": ("speech", "speech"), "S2T": ("speech", "text"), "T2S": ("text", "speech"), "T": ("text", "text")}


@dataclass(frozen=True)
class Part:
    """A stretch of one modality: text, or the audio file that speaks it (transcript optional)."""

    modality: str
    text: str | None = None
    audio: str | None = None


@dataclass(frozen=True)
class Pair:
    """One minimal pair: the positive side should score higher than the negative."""

    id: str
    group: str
    positive: tuple[Part, ...]
    negative: tuple[Part, ...]
    item: str | None = None
    """The item this pair speaks in one voice of several (ZeroSpeech averages an item's voices before the mean
    over items); None: the pair is an item of its own."""


class BenchError(ValueError):
    """A benchmark folder that cannot be read; the message names the file and the problem."""


def _is_audio(path: Path) -> bool:
    """An audio file by its ending, in either case (TIMIT's and many recorders' files end in .WAV)."""
    return path.suffix.lower() in AUDIO_SUFFIXES


def _audio_file(folder: Path, name: str) -> Path:
    path = folder / name
    if _is_audio(path) and path.exists():
        return path
    for suffix in (*AUDIO_SUFFIXES, *(suffix.upper() for suffix in AUDIO_SUFFIXES)):
        if path.with_name(path.name + suffix).exists():
            return path.with_name(path.name + suffix)
    raise BenchError(f"{folder}: audio '{name}' ({', '.join(AUDIO_SUFFIXES)}) is missing")


# --- loaders ----------------------------------------------------------------------------------


def _gold_rows(gold: Path, needed: set[str]) -> list[dict[str, str]]:
    try:
        with open(gold, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise BenchError(f"{gold}: not a CSV file in UTF-8 ({error.__class__.__name__}: {error})") from None
    missing = needed - set(reader.fieldnames or ())
    if missing:
        raise BenchError(f"{gold}: no column(s) {', '.join(sorted(missing))}")
    if not rows:
        raise BenchError(f"{gold}: no rows under its header")
    return rows


def _is_correct(row: dict[str, str]) -> bool:
    return row["correct"].strip() in ("1", "True", "true")


def _gold_sides(gold: Path, rows: list[dict[str, str]], key: Callable[[dict[str, str]], tuple[str, ...]],
                many: bool) -> dict[tuple[str, ...], dict[str, Any]]:
    """The positive and negative files of each key, with the first row of each key; a second file on one side is
    an error unless `many`."""
    sides: dict[tuple[str, ...], dict[str, Any]] = {}
    for line, row in enumerate(rows, start=2):
        side = "positive" if _is_correct(row) else "negative"
        entry = sides.setdefault(key(row), {"row": row, "positive": [], "negative": []})
        if entry[side] and not many:
            raise BenchError(f"{gold}:{line}: a second {side} file for id {row['id']}")
        entry[side].append(Part("speech", audio=str(_audio_file(gold.parent, row["filename"]))))
    for entry in sides.values():
        if not entry["positive"] or not entry["negative"]:
            lacking = "negative" if entry["positive"] else "positive"
            raise BenchError(f"{gold}: id {entry['row']['id']} has no {lacking} file")
    return sides


def load_slm21(folder: Path) -> list[Pair]:
    """ZeroSpeech 2021 sBLIMP: a correct and an incorrect row of one item (type, subtype, id) and voice form a
    pair; its group is the phenomenon (`type`). ZeroSpeech pairs the k-th correct row with the k-th incorrect
    one, which is the same pairing on its own files; keyed, a file in another order still pairs right."""
    gold = folder / "gold.csv"
    rows = _gold_rows(gold, {"id", "filename", "correct"})
    item = lambda row: tuple(row[c] for c in ("type", "subtype", "id") if row.get(c))  # noqa: E731
    pairs = []
    for key, entry in _gold_sides(gold, rows, lambda row: (*item(row), row.get("voice", "")), many=False).items():
        row, voice = entry["row"], key[-1]
        name = "/".join(item(row))
        pairs.append(Pair(f"{name}/{voice}" if voice else name, row.get("type") or row.get("subtype") or "all",
                          tuple(entry["positive"]), tuple(entry["negative"]), item=name))
    return pairs


# ZeroSpeech 2021's lexical frequency bands (`evaluate_by_frequency`): the word's count in LibriSpeech in
# [0, 1), [1, 5), [5, 20), [20, 100), [100, inf), under its own labels (so a count of 5 is in "6-20"). A
# word with no count, or a negative one, is in no band: in the score over all pairs, not in in-vocab.
FREQUENCY_BANDS = ((1, "oov"), (5, "1-5"), (20, "6-20"), (100, "21-100"), (math.inf, ">100"))
NO_BAND = "no frequency"


def frequency_band(count: str | None) -> str:
    """The ZeroSpeech 2021 frequency band of a word's LibriSpeech count."""
    try:
        value = float(count) if count not in (None, "") else math.nan
    except ValueError:
        return NO_BAND
    if not value >= 0:  # NaN and negative counts
        return NO_BAND
    return next(label for upper, label in FREQUENCY_BANDS if value < upper)


def load_slm21_lexical(folder: Path) -> list[Pair]:
    """ZeroSpeech 2021 sWUGGY: every word row with every non-word row of the same id and voice is a pair (as
    its lexical task merges them); the pair's group is the word's frequency band, its item the id."""
    gold = folder / "gold.csv"
    rows = _gold_rows(gold, {"id", "filename", "correct"})
    # The band of an item is its word's (ZeroSpeech keeps the word row's frequency), the first word row's where
    # voices disagree, so that every voice of an item falls in one band.
    bands: dict[str, str] = {}
    for row in rows:
        if _is_correct(row):
            bands.setdefault(row["id"], frequency_band(row.get("frequency")))
    pairs = []
    for (item_id, voice), entry in _gold_sides(gold, rows, lambda row: (row["id"], row.get("voice", "")),
                                               many=True).items():
        name = f"{item_id}/{voice}" if voice else item_id
        several = len(entry["positive"]) * len(entry["negative"]) > 1
        for positive in entry["positive"]:
            for negative in entry["negative"]:
                pair_id = f"{name}/{Path(positive.audio).stem}/{Path(negative.audio).stem}" if several else name
                pairs.append(Pair(pair_id, bands[item_id], (positive,), (negative,), item=item_id))
    return pairs


def _gold_columns(folder: Path) -> set[str]:
    """The header of a folder's gold.csv (empty without one)."""
    try:
        with open(folder / "gold.csv", newline="", encoding="utf-8-sig") as handle:
            return set(next(csv.reader(handle), []))
    except (OSError, UnicodeDecodeError):
        return set()


def _transcript(audio_path: Path) -> str | None:
    text_path = audio_path.with_suffix(".txt")
    return text_path.read_text(encoding="utf-8-sig").strip() if text_path.exists() else None


def load_storycloze(folder: Path) -> list[Pair]:
    """Spoken StoryCloze: every `<id>_correct.*` with its `<id>_incorrect.*`; sub-folders are groups."""
    pairs = []
    for positive in sorted(p for p in folder.rglob("*_correct.*") if _is_audio(p)):
        stem = positive.name[:-len("_correct" + positive.suffix)]
        try:
            negative = _audio_file(positive.parent, f"{stem}_incorrect")
        except BenchError:
            raise BenchError(f"{positive}: no matching {stem}_incorrect audio") from None
        group = str(positive.parent.relative_to(folder)) if positive.parent != folder else "all"
        pairs.append(Pair(f"{group}/{stem}" if group != "all" else stem, group,
                          (Part("speech", _transcript(positive), str(positive)),),
                          (Part("speech", _transcript(negative), str(negative)),)))
    return pairs


def _has_storycloze_pair(folder: Path) -> bool:
    """Whether some `<id>_correct` audio has its `<id>_incorrect` beside it. slamkit's numbered pairs
    (`2n_<name>_correct.wav`, `2n+1_<name>_incorrect.wav`) end the same way and have none."""
    for positive in folder.rglob("*_correct.*"):
        stem = positive.name[:-len("_correct" + positive.suffix)]
        if _is_audio(positive):
            try:
                _audio_file(positive.parent, f"{stem}_incorrect")
                return True
            except BenchError:
                continue
    return False


def load_cross_modal(folder: Path, mode: str = "S") -> list[Pair]:
    """Cross-modal StoryCloze items paired for one mode: S, S2T, T2S or T."""
    if mode not in CROSS_MODES:
        raise BenchError(f"unknown cross-modal mode '{mode}'; known: {', '.join(CROSS_MODES)}")
    context_modality, ending_modality = CROSS_MODES[mode]
    pairs = []
    for mutual_text in sorted(folder.rglob("*_mutual.txt")):
        stem = mutual_text.name[:-len("_mutual.txt")]
        parts = {}
        for role in ("mutual", "correct", "incorrect"):
            text_path = mutual_text.with_name(f"{stem}_{role}.txt")
            if not text_path.exists():
                raise BenchError(f"{mutual_text.parent}: item {stem} has no {stem}_{role}.txt")
            audio_path = _audio_file(mutual_text.parent, f"{stem}_{role}")
            parts[role] = (text_path.read_text(encoding="utf-8-sig").strip(), str(audio_path))
        part = lambda role, modality: Part(modality, parts[role][0],  # noqa: E731
                                           parts[role][1] if modality == "speech" else None)
        group = str(mutual_text.parent.relative_to(folder)) if mutual_text.parent != folder else "all"
        pairs.append(Pair(stem, group, (part("mutual", context_modality), part("correct", ending_modality)),
                          (part("mutual", context_modality), part("incorrect", ending_modality))))
    return pairs


# A hub set's two sides: the multi-speaker StoryCloze's columns (with `id` and `<side>_text` beside them), or SALMon's
# (`slprl/SALMon`: `positive_audio` and `negative_audio`, with `task` and `ind`, the sample's number, beside them, as
# a set derived from it lists its features; a folder per part).
HF_SIDES = (("correct", "negative"), ("positive", "negative"))


def _is_hub_salmon(folder: Path) -> bool:
    """Whether a folder of parquet shards holds SALMon's rows (its sides are `positive_audio` and `negative_audio`)."""
    import pyarrow.parquet as parquet

    shard = next(folder.rglob("*.parquet"), None)
    return shard is not None and {"positive_audio", "negative_audio"} <= set(parquet.read_schema(shard).names)


def _safe_suffix(path: Any) -> str:
    suffix = Path(str(path or "")).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".wav"


def load_hf_parquet(folder: Path) -> list[Pair]:
    """A pairwise set as the HF hub stores it: the multi-speaker StoryCloze (`slprl/multispeaker-storycloze`) or
    SALMon (`slprl/salmon`).

    Parquet shards per task and speaker or part (e.g. `sSC/bm/train-*.parquet`); each row has `correct_audio` and
    `negative_audio` ({bytes, path}) with `id`, `correct_text` and `negative_text`, or SALMon's `positive_audio`
    and `negative_audio` (its `ind`, else the row's number, is then the id). The shard's folder is the pair's group. Audio bytes are
    written once to the cache as files, so extraction reads them like any benchmark audio.
    """
    import pyarrow.parquet as parquet

    shards = sorted(folder.rglob("*.parquet"))
    digest = hashlib.sha256("\n".join(f"{s.resolve()}:{s.stat().st_size}" for s in shards).encode()).hexdigest()
    cache = assets.cache_dir() / "bench-audio" / digest[:16]
    pairs = []
    for shard in shards:
        table = parquet.read_table(shard)
        sides = next((sides for sides in HF_SIDES if {f"{side}_audio" for side in sides} <= set(table.column_names)),
                     None)
        if sides is None:
            raise BenchError(f"{shard}: no column(s) correct_audio and negative_audio (the multi-speaker StoryCloze: "
                             f"with id, correct_text, negative_text), nor positive_audio and negative_audio (SALMon)")
        group = str(shard.parent.relative_to(folder)) if shard.parent != folder else "all"
        columns = [c for side in sides for c in (f"{side}_audio", f"{side}_text") if c in table.column_names]
        named = next((name for name in ("id", "ind") if name in table.column_names), None)
        for number, row in enumerate(table.select(columns + [named] * bool(named)).to_pylist()):
            row_id = str(row[named] if named else number)
            parts = []
            for side, role in zip(sides, ("correct", "negative")):
                blob = row[f"{side}_audio"] or {}
                if not blob.get("bytes"):
                    raise BenchError(f"{shard}: row {row_id} has no {side}_audio bytes")
                path = cache / group / f"{storage.safe_file_name(row_id)}_{role}{_safe_suffix(blob.get('path'))}"
                if not path.exists():
                    with storage.atomic_path(path) as temporary:
                        temporary.write_bytes(blob["bytes"])
                parts.append(Part("speech", row.get(f"{side}_text"), str(path)))
            pairs.append(Pair(f"{group}/{row_id}", group, (parts[0],), (parts[1],)))
    return pairs


# slamkit's speech-only sets (`ModellingMetricDataset`): every .wav name starts with a number and a separator,
# '+' for sBLIMP, '_' for sWUGGY and StoryCloze (`modelling_metric.py`).
SLAMKIT_NAME = re.compile(r"\d+(?P<separator>[_+])")


def _slamkit_folders(folder: Path) -> list[Path]:
    """The folders of a slamkit pairs set: the folder itself when it holds .wav files, else each sub-folder that
    does (slamkit's `subfolder: true`, as its sBLIMP and sWUGGY configs read theirs)."""
    if next(folder.glob("*.wav"), None) is not None:
        return [folder]
    return [sub for sub in sorted(folder.iterdir()) if sub.is_dir() and next(sub.glob("*.wav"), None) is not None]


def _slamkit_separator(folders: list[Path]) -> str | None:
    """The separator every .wav name of a slamkit pairs set (`_slamkit_folders`) uses after its number (None: not
    such a set)."""
    names = [path.name for sub in folders for path in sub.glob("*.wav")]
    found = {match["separator"] if (match := SLAMKIT_NAME.match(name)) else None for name in names}
    return found.pop() if len(found) == 1 and None not in found else None


def load_slamkit_pairs(folder: Path) -> list[Pair]:
    """slamkit's speech-only layout (ModellingMetricDataset): `<n><sep>...wav` sorted by n, taken two by two as
    (positive, negative), in the folder or in each of its sub-folders (each then a group). The separator is the
    folder's bench.json's, else the one every name uses.

    slamkit concatenates its sub-folders' sorted files before taking them two by two, so a sub-folder with an odd
    count would pair its last file with the next sub-folder's first; here that is an error naming it."""
    meta, folders = folder / BENCH_FILE, _slamkit_folders(folder)
    separator = storage.read_json(meta).get("separator", "_") if meta.exists() else _slamkit_separator(folders) or "_"
    pairs = []
    for sub in folders:
        files = list(sub.glob("*.wav"))
        try:
            files.sort(key=lambda path: int(path.name.split(separator)[0]))
        except ValueError:
            raise BenchError(f"{sub}: a .wav name does not start with a number and '{separator}'") from None
        if len(files) % 2:
            raise BenchError(f"{sub}: {len(files)} .wav files cannot form pairs")
        group = sub.name if sub != folder else "all"
        pairs += [Pair(f"{group}/{files[i].stem}" if sub != folder else files[i].stem, group,
                       (Part("speech", audio=str(files[i])),), (Part("speech", audio=str(files[i + 1])),))
                  for i in range(0, len(files), 2)]
    return pairs


# SALMon's parts (Maimon et al. 2024, slp-rl/salmon's `salmon.py`; slamkit's `salmon` metric reads the same).
SALMON_PARTS = ("bg_alignment", "bg_all_consistency", "bg_domain_consistency", "gender_consistency",
                "rir_consistency", "sentiment_alignment", "sentiment_consistency", "speaker_consistency")


def load_salmon(folder: Path) -> list[Pair]:
    """SALMon as its `SalmonDataset` reads a downloaded copy: in each part's sub-folder, the .wav files of sample n
    (the number after the first '_' of the name) sorted by path, the first the positive and the second the negative.
    A pair's group is its part."""
    pairs = []
    for part in SALMON_PARTS:
        samples: dict[int, list[str]] = {}
        for path in (folder / part).glob("*.wav"):
            try:
                number = int(path.stem.split("_")[1])
            except (IndexError, ValueError):
                raise BenchError(f"{path}: a SALMon file is named <name>_<sample number>_...wav") from None
            samples.setdefault(number, []).append(str(path))
        for number, files in sorted(samples.items()):
            if len(files) != 2:
                raise BenchError(f"{folder / part}: sample {number} has {len(files)} .wav files, not a positive and "
                                 f"a negative")
            first, second = sorted(files)
            pairs.append(Pair(f"{part}/{number}", part, (Part("speech", audio=first),),
                              (Part("speech", audio=second),)))
    return pairs


def _one_group_is_all(pairs: list[Pair]) -> list[Pair]:
    """Sub-folders name groups (speakers, say); files that all sit in one folder form the group `all`."""
    return [replace(pair, group="all") for pair in pairs] if len({p.group for p in pairs}) == 1 else pairs


@dataclass(frozen=True)
class Layout:
    """A benchmark layout: how to recognise a folder in it, how to read its pairs, how to report them."""

    name: str
    recognise: Callable[[Path], bool]
    load: Callable[[Path, str | None], list[Pair]]
    modes: tuple[str | None, ...] = (None,)
    """The ways of pairing one folder's items (the cross-modal modes), each scored and reported alone."""
    aggregation: str = "pairs"
    """How its accuracy is averaged unless asked otherwise."""
    groups_are_folders: bool = True
    """Whether sub-folders name the groups (speakers); otherwise the layout's own field does."""
    subsets: tuple[tuple[str, Callable[[str], bool]], ...] = ()
    """Named subsets of the pairs, by group, each also reported alone from the same scores (`LABEL/NAME`)."""
    zerospeech: bool = False
    """Whether a ZeroSpeech `gold.csv` names the files (`eval --write-scores` then also writes a submission)."""


# Tried in this order; the first that recognises the folder reads it (a bench.json names its layout).
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    # ZeroSpeech 2021's scores (its leaderboard's `lexical_all`, `lexical_invocab` and `syntactic`): the mean over
    # items of each item's mean over its voices; in-vocab weighs the bands other than oov by their items, which
    # is the mean over their items.
    Layout("slm21-lexical", lambda folder: bool({"word", "frequency"} & _gold_columns(folder)),
           lambda folder, mode: load_slm21_lexical(folder), aggregation="items", groups_are_folders=False,
           subsets=(("in-vocab", lambda group: group not in ("oov", NO_BAND)),), zerospeech=True),
    Layout("slm21", lambda folder: (folder / "gold.csv").exists(), lambda folder, mode: load_slm21(folder),
           aggregation="items", groups_are_folders=False, zerospeech=True),
    Layout("cross-modal", lambda folder: next(folder.rglob("*_mutual.txt"), None) is not None,
           lambda folder, mode: load_cross_modal(folder, mode or "S"), modes=tuple(CROSS_MODES)),
    Layout("storycloze", lambda folder: _has_storycloze_pair(folder), lambda folder, mode: load_storycloze(folder)),
    # SALMon from the hub is reported as its own folders are: each part alone (SALMon's numbers), and all together.
    Layout("salmon-hub", _is_hub_salmon, lambda folder, mode: load_hf_parquet(folder), aggregation="macro",
           groups_are_folders=False,
           subsets=tuple((part, functools.partial(operator.eq, part)) for part in SALMON_PARTS)),
    Layout("hf-parquet", lambda folder: next(folder.rglob("*.parquet"), None) is not None,
           lambda folder, mode: load_hf_parquet(folder)),
    # SALMon reports each part alone (its leaderboard's columns; slamkit's `salmon` too, with no whole); the whole
    # set is the mean over parts, except under the reference preset, whose every whole is the mean over pairs.
    Layout("salmon", lambda folder: any(next((folder / part).glob("*.wav"), None) for part in SALMON_PARTS),
           lambda folder, mode: load_salmon(folder), aggregation="macro", groups_are_folders=False,
           subsets=tuple((part, functools.partial(operator.eq, part)) for part in SALMON_PARTS)),
    # Last: only names that start with a number and one separator throughout.
    Layout("slamkit-pairs", lambda folder: _slamkit_separator(_slamkit_folders(folder)) is not None,
           lambda folder, mode: load_slamkit_pairs(folder)),
)}


# A dataset on the Hugging Face hub, optionally one folder of it: `org/name[:folder]`.
HUB_DATASET = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<folder>[\w.-]+(?:/[\w.-]+)*))?")


# A benchmark's own text files are read whole into its digest (gold.csv, bench.json, tSC's transcripts); audio and
# parquet files by name and size, which a rebuild with other items changes too.
_DIGESTED_WHOLE = (".csv", ".json", ".txt", ".tsv")


def bench_digest(folder: Path) -> str:
    """What a benchmark folder holds, as a digest: each file's path in it and size, and its text files' contents.
    A result records it, so a result of a folder built again since (other items, another seed) is known stale."""
    folder = Path(folder).resolve()
    return _digest(str(folder), folder.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(folder: str, mtime_ns: int) -> str:  # a folder built again is another directory: another mtime
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}\0{size}\0".encode("utf-8", "surrogateescape"))
        if path.suffix in _DIGESTED_WHOLE and size < 1 << 20:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def bench_label(target: str) -> str:
    """The name results are filed under when --bench gives none: a folder's name, or a hub dataset's name (and
    folder)."""
    hub = None if Path(target).exists() else HUB_DATASET.fullmatch(target)
    if hub is None:
        return Path(target).name
    return hub["repo"].split("/")[1] + (f"/{hub['folder']}" if hub["folder"] else "")


@functools.cache
def bench_folder(target: str) -> Path:
    """A benchmark folder: a local path, or a published set on the Hugging Face hub as `org/name[:folder]`
    (e.g. `slprl/multispeaker-storycloze:sSC`), downloaded once into the hub's own cache (only that folder) and
    read from there offline."""
    path = Path(target)
    hub = None if path.exists() else HUB_DATASET.fullmatch(target)
    if hub is None or assets.missing_local_path(hub["repo"]):
        if not path.is_dir():
            raise BenchError(f"{target}: benchmark folder does not exist")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, folder = hub["repo"], hub["folder"]
    try:
        root = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[f"{folder}/**"] if folder else None,
                                      local_files_only=assets.offline()))
    except RepositoryNotFoundError:
        raise BenchError(f"{repo}: no such dataset on the Hugging Face hub (or it is private: log in with "
                         f"`hf auth login`)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        why = "downloads are off (SIMSLM_OFFLINE / HF_HUB_OFFLINE)" if assets.offline() else \
            f"the hub cannot be reached ({error.__class__.__name__})"
        raise BenchError(f"{target}: not in the Hugging Face cache and {why}; where there is a network, run "
                         f"`hf download {repo} --repo-type dataset --local-dir DIR`, bring DIR here and pass "
                         f"--bench {bench_label(target)}=DIR{'/' + folder if folder else ''}") from None
    found = root / folder if folder else root
    if not found.is_dir():
        raise BenchError(f"{target}: the dataset {repo} has no folder '{folder}'")
    return found


def detect_layout(folder: Path) -> Layout:
    """The layout of a benchmark folder: its bench.json, else the first layout that recognises its files."""
    if (folder / BENCH_FILE).exists():
        name = storage.read_json(folder / BENCH_FILE).get("layout")
        if name not in LAYOUTS:
            raise BenchError(f"{folder / BENCH_FILE}: unknown layout '{name}' (known: {', '.join(LAYOUTS)})")
        return LAYOUTS[name]
    for layout in LAYOUTS.values():
        if layout.recognise(folder):
            return layout
    # A dataset's root (ZeroSpeech's zr2021/ holds lexical/dev and syntactic/dev): name the folders that are sets.
    inside = sorted(str(path.parent.relative_to(folder)) for pattern in ("*/gold.csv", "*/*/gold.csv", "*/bench.json")
                    for path in folder.glob(pattern))
    hint = f"; these folders inside it are: {', '.join(inside[:6])}" if inside else ""
    raise BenchError(f"{folder}: not a benchmark folder (no bench.json, gold.csv, *_mutual.txt, *_correct.wav, "
                     f"slamkit's numbered <n>_/<n>+ .wav pairs or SALMon's parts){hint}")


def load(folder: str | Path, mode: str | None = None) -> tuple[str, list[Pair]]:
    """(layout name, pairs) of a benchmark folder; `mode` picks the cross-modal pairing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"{folder}: benchmark folder does not exist")
    layout = detect_layout(folder)
    pairs = layout.load(folder, mode)
    pairs = _one_group_is_all(pairs) if layout.groups_are_folders else pairs
    if not pairs:
        raise BenchError(f"{folder}: no pairs found in the {layout.name} layout")
    undecodable = next((part.audio for pair in pairs for part in (*pair.positive, *pair.negative)
                        if part.audio and storage.undecodable_name(part.audio)), None)
    if undecodable is not None:  # soundfile cannot open it, nor JSON hold its pair's id: the whole set is refused
        raise BenchError(f"{storage.shown_path(undecodable)}: its file name is not UTF-8 (rename it); a benchmark is "
                         f"scored whole, so no pair of it is left out")
    return layout.name, pairs
