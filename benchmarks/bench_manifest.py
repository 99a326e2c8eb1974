"""Reading a large corpus: time and peak memory of reading its manifest and its units, each reader in its own process.

    .venv/bin/python benchmarks/bench_manifest.py --utterances 200000 --words 30 --units 250

A manifest of N synthetic utterances of W timed words each (Libri-Light's 10-second segments hold about 30 words) is
written to a temporary folder; each reader then runs in a fresh interpreter, which reports its wall time and its peak
resident memory (`ru_maxrss`). The readers:
- `read_manifest`: the whole manifest as Utterance objects, as sequences build and align hold it;
- `units records`: the ids, audio paths and durations `units fit` and `units extract` read (`extract.manifest_records`),
  streamed as they stream them (before the fifteenth session they kept the list);
- `read_units`: a units folder of the same utterances (`--units` units each), all of it, and the 16th of it that a
  part of `sequences build --num-shards 16` keeps (`read_units(out, ids)`);
- `units quality`: PNMI of that folder against phone labels given for 20 of its utterances;
- `units extract, shards written`: `simslm units extract` into that units folder once every shard is written, as
  the last of an extraction's processes ends: a pass over the manifest for its header, and one over the manifest
  and the shards for the report's totals;
- `units extract, a later process`: the same, run once before the timing, as a requeued job or a re-run finds it;
- `units extract, a later process, counts kept`: the same over a folder whose shards have their counts beside them
  (`shard-NNNNN.totals.json`, which extractions write since the sixteenth session);
- `units extract, one of an array`: a process of a two-task array whose shards are all written while one of the
  other's is not (a copy of the folder without it), run once before the timing: how every task but the last ends;
- `units extract, one of 8 with work`: task 0 of an 8-task array with its 25 shards to do (their audio is missing, so
  every utterance is skipped at once), after task 1 has checked the manifest: how a task reads its shards' lines;
- `sequences build, a part of 16`: part 0 of a 16-part build of the interleaved stream, its units folder's
  units.json stamping the manifest (as an extraction that checked it writes); `--build-parts N` builds part 0 of N
  instead, so that the part's memory can be read against the utterances it holds;
- `units records, checked`: the first of those passes, which parses and checks every line as a manifest line
  (`manifest_records(checked=True)`); the plain `units records` is the quick pass that reads only each line's JSON;
- `write_manifest`: writing the manifest's utterances, read before the timing starts (`Utterance.to_json`);
- `read_ctm` and `ctm index`: a CTM of the same utterances' words, grouped in memory as `read_ctm` does, and indexed
  by byte ranges as `align --method ctm` now reads it (`align._CtmIndex`);
- `align --keep-existing`: `simslm align` of the manifest, whose utterances all have timings already, so what is
  measured is the reading, ordering and writing of the manifest, not an aligner.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

READERS = {
    "read_manifest": "from simslm.speech.manifest import read_manifest as read",
    "units records": "from simslm.units.extract import manifest_records\n"
                     "read = lambda m: range(sum(1 for _ in manifest_records(m)))",
    "units records, checked": "from simslm.units.extract import manifest_records\n"
                              "read = lambda m: range(sum(1 for _ in manifest_records(m, checked=True)))",
    "write_manifest": "import sys\nfrom pathlib import Path\n"
                      "from simslm.speech.manifest import iter_utterances, write_manifest\n"
                      "utterances = list(iter_utterances(sys.argv[1]))  # before the timing\n"
                      "read = lambda m: write_manifest(Path(m).parent / 'written.jsonl', utterances) or utterances",
    "read_ctm": "from pathlib import Path\nfrom simslm.speech.align import read_ctm\n"
                "read = lambda m: read_ctm(Path(m).parent / 'words.ctm')",
    "ctm index": "from pathlib import Path\nfrom simslm.speech.align import _CtmIndex\n"
                 "read = lambda m: _CtmIndex(str(Path(m).parent / 'words.ctm')).ranges",
    "read_units, all": "from simslm.units.folder import read_units\nread = lambda m: list(read_units(m))",
    "read_units, a 16th": "from simslm.units.folder import read_units\n"
                          "class Part:\n    __contains__ = lambda self, i: int(i[1:]) % 16 == 0\n"
                          "read = lambda m: list(read_units(m, Part()))",
    # the whole corpus, given phone labels for 20 of its utterances (as LibriSpeech dev-clean's forced alignments)
    "units quality": "from pathlib import Path\nfrom simslm.units.quality import QualityConfig, unit_quality\n"
                     "read = lambda m: range(unit_quality(QualityConfig(manifest=m, units=str(Path(m).parent / 'units'), "
                     "phone_labels=str(Path(m).parent / 'phones.tsv')))['num_utterances_scored'])",
    "align --keep-existing": "from pathlib import Path\nfrom simslm.speech.align import AlignConfig, align_manifest\n"
                             "read = lambda m: range(align_manifest(AlignConfig(manifest=m, out=str(Path(m).parent / "
                             "'aligned.jsonl'), keep_existing=True)).num_kept)",
    "units extract, shards written": "from pathlib import Path\n"
                                     "from simslm.units.extract import ExtractConfig, extract_units\n"
                                     "read = lambda m: range(extract_units(ExtractConfig(manifest=m, codebook=str("
                                     "Path(m).parent / 'codebook.npy'), out=str(Path(m).parent / 'units'), "
                                     "shard_size=1000)).num_encoded)",
    # The same, run once before the timing: what a later process (a requeued job, a re-run) does there.
    "units extract, a later process": "from pathlib import Path\nimport sys\n"
                                      "from simslm.units.extract import ExtractConfig, extract_units\n"
                                      "config = ExtractConfig(manifest=sys.argv[1], codebook=str(Path(sys.argv[1]).parent"
                                      " / 'codebook.npy'), out=str(Path(sys.argv[1]).parent / 'units'), "
                                      "shard_size=1000)\nextract_units(config)  # before the timing\n"
                                      "read = lambda m: range(extract_units(config).num_encoded)",
    # The same, with each shard's counts kept beside it, as an extraction since the sixteenth session writes them
    # (written here before the timing, from the shards and the manifest).
    "units extract, a later process, counts kept": "from pathlib import Path\nimport json, shutil, sys\n"
                                                   "from simslm import storage\n"
                                                   "from simslm.units import extract\n"
                                                   "folder = Path(sys.argv[1]).parent\n"
                                                   "shutil.copytree(folder / 'units', folder / 'kept', "
                                                   "dirs_exist_ok=True)\n"
                                                   "config = extract.ExtractConfig(manifest=sys.argv[1], codebook=str("
                                                   "folder / 'codebook.npy'), out=str(folder / 'kept'), "
                                                   "shard_size=1000)\n"
                                                   "extract.extract_units(config)  # before the timing\n"
                                                   "for i, shard in enumerate(extract._chunks(extract.manifest_records("
                                                   "sys.argv[1]), 1000)):\n"
                                                   "    path = folder / 'kept' / 'shards' / f'shard-{i:05d}.jsonl'\n"
                                                   "    storage.write_json(extract._totals_path(path), "
                                                   "extract.shard_totals(map(json.loads, "
                                                   "path.read_text().splitlines()), shard))\n"
                                                   "read = lambda m: range(extract.extract_units(config).num_encoded)",
    # A process of a 2-task array whose shards are all written while the other's last is not, run once before the
    # timing (as the first process to start, which checks the manifest): the end of every task but the last.
    "units extract, one of an array": "from pathlib import Path\nimport shutil, sys\n"
                                      "from simslm.units.extract import ExtractConfig, extract_units\n"
                                      "folder = Path(sys.argv[1]).parent\n"
                                      "shutil.copytree(folder / 'units', folder / 'array', dirs_exist_ok=True)\n"
                                      "(folder / 'array' / 'shards' / 'shard-00001.jsonl').unlink(missing_ok=True)\n"
                                      "config = ExtractConfig(manifest=sys.argv[1], codebook=str(folder / "
                                      "'codebook.npy'), out=str(folder / 'array'), shard_size=1000, num_shards=2, "
                                      "shard_index=0)\nextract_units(config)  # before the timing\n"
                                      "read = lambda m: range(extract_units(config).num_utterances)",
    # Task 0 of an 8-task array with its shards to do (25 of 200) (their audio is missing, so each utterance is skipped at
    # once): the reading of its shards' manifest lines, after another task has checked the manifest.
    "units extract, one of 8 with work": "from pathlib import Path\nimport shutil, sys\n"
                                         "from simslm.units.extract import ExtractConfig, extract_units\n"
                                         "folder = Path(sys.argv[1]).parent\n"
                                         "shutil.copytree(folder / 'units', folder / 'eight', dirs_exist_ok=True)\n"
                                         "config = ExtractConfig(manifest=sys.argv[1], codebook=str(folder / "
                                         "'codebook.npy'), out=str(folder / 'eight'), shard_size=1000, num_shards=8, "
                                         "shard_index=1)\nextract_units(config)  # before the timing: task 1\n"
                                         "shards = len(list((folder / 'eight' / 'shards').glob('shard-*.jsonl')))\n"
                                         "for i in [*range(0, shards, 8), 1]:\n"
                                         "    (folder / 'eight' / 'shards' / f'shard-{i:05d}.jsonl').unlink()\n"
                                         "config = ExtractConfig(manifest=sys.argv[1], codebook=str(folder / "
                                         "'codebook.npy'), out=str(folder / 'eight'), shard_size=1000, num_shards=8, "
                                         "shard_index=0, num_workers=1)\n"
                                         "read = lambda m: range(extract_units(config).num_skipped)",
    # Part 0 of a 16-part `sequences build` (interleaved stream, stories260K's tokenizer), its units folder's header
    # stamping the manifest as an extraction that checked it does (the stamp is ignored before the sixteenth session).
    "sequences build, a part of 16": "from pathlib import Path\nimport json, os, shutil, sys\n"
                                     "from simslm.sequences.build import BuildConfig, build_sequences\n"
                                     "folder = Path(sys.argv[1]).parent\n"
                                     "shutil.copytree(folder / 'units', folder / 'units16', dirs_exist_ok=True)\n"
                                     "header = json.loads((folder / 'units16' / 'units.json').read_text())\n"
                                     "header.update(k=500, frame_rate_hz=25.0, encoder={'name': 'logmel'})\n"
                                     "try:\n    from simslm.units.folder import manifest_stamp\n"
                                     "    header['manifest_stamp'] = manifest_stamp(sys.argv[1])\n"
                                     "except ImportError:\n    pass\n"
                                     "(folder / 'units16' / 'units.json').write_text(json.dumps(header))\n"
                                     "read = lambda m: range(build_sequences(BuildConfig(out=str(folder / 'seq16'), "
                                     "manifest=m, units=str(folder / 'units16'), streams=('interleaved',), "
                                     "num_shards=int(os.environ['BENCH_BUILD_PARTS']), shard_index=0, "
                                     "overwrite=True))['epochs'][0]"
                                     "['samples_by_stream']['interleaved'])",
}
PROBE = """
import resource, sys, time
{imports}
started = time.perf_counter()
count = len(read(sys.argv[1]))
print(count, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
"""


def write_manifest(path: Path, utterances: int, words: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(utterances):
            timed = [{"word": f"w{j}", "start_sec": round(j * 0.3, 3), "end_sec": round(j * 0.3 + 0.25, 3)}
                     for j in range(words)]
            handle.write(json.dumps({"id": f"u{i:08d}", "audio": f"audio/u{i:08d}.flac", "sample_rate": 16000,
                                     "duration_sec": round(words * 0.3 + 0.2, 3), "speaker": f"s{i % 1000}",
                                     "transcript": " ".join(w["word"] for w in timed), "words": timed}) + "\n")


def write_ctm(path: Path, utterances: int, words: int) -> None:
    """The manifest's timed words as CTM lines (`utterance channel start duration word`)."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(utterances):
            handle.write("".join(f"u{i:08d} 1 {j * 0.3:.2f} 0.25 w{j}\n" for j in range(words)))


def write_units(folder: Path, utterances: int, units: int, per_shard: int = 1000) -> None:
    """A `units extract` folder's shards (one JSON line an utterance, its id first) and its units.json."""
    rng = np.random.default_rng(0)
    (folder / "shards").mkdir(parents=True)
    for number, start in enumerate(range(0, utterances, per_shard)):
        with open(folder / "shards" / f"shard-{number:05d}.jsonl", "w", encoding="utf-8") as handle:
            for i in range(start, min(start + per_shard, utterances)):
                handle.write(json.dumps({"id": f"u{i:08d}", "frame_rate_hz": 25.0,
                                         "units": rng.integers(0, 500, units).tolist(),
                                         "durations": rng.integers(1, 4, units).tolist()}) + "\n")
    (folder / "units.json").write_text(json.dumps({"num_shards": -(-utterances // per_shard)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=200_000)
    parser.add_argument("--words", type=int, default=30)
    parser.add_argument("--units", type=int, default=250, help="units an utterance (10 s of 25 Hz units, deduplicated)")
    parser.add_argument("--build-parts", type=int, default=16, help="parts of `sequences build, a part of 16`")
    parser.add_argument("--reader", action="append", choices=list(READERS),
                        help="a reader to run (repeat for several; default: all)")
    args = parser.parse_args()
    chosen = args.reader or list(READERS)
    with tempfile.TemporaryDirectory() as folder:
        manifest, units = Path(folder) / "manifest.jsonl", Path(folder) / "units"
        write_manifest(manifest, args.utterances, args.words)
        write_units(units, args.utterances, args.units)
        from simslm.units.kmeans import Codebook  # a logmel codebook of the units' k, for `units extract`

        Codebook(np.zeros((500, 160), np.float32), {"encoder": {"name": "logmel", "model_path": None, "layer": None,
                                                               "edge_pad": 0}, "frame_rate_hz": 25.0}
                 ).save(Path(folder) / "codebook.npy")
        if {"read_ctm", "ctm index"} & set(chosen):
            write_ctm(Path(folder) / "words.ctm", args.utterances, args.words)
        (Path(folder) / "phones.tsv").write_text("".join(f"u{i:08d}\t{','.join(['AH', 'B'] * 1000)}\n"
                                                         for i in range(0, args.utterances, args.utterances // 20)))
        print(f"{args.utterances} utterances of {args.words} words, {manifest.stat().st_size / 1e6:.0f} MB; units "
              f"{sum(p.stat().st_size for p in units.rglob('*')) / 1e6:.0f} MB")
        for name in chosen:
            imports = READERS[name]
            source = units if name.startswith("read_units") else manifest
            out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports), str(source)],
                                 env={**os.environ, "BENCH_BUILD_PARTS": str(args.build_parts)},
                                 capture_output=True, text=True, check=True).stdout.split()
            print(f"{name:>18}: {float(out[1]):6.1f} s, peak {float(out[2]):.2f} GB "
                  f"({float(out[2]) * 1e9 / args.utterances:,.0f} bytes per utterance)")


if __name__ == "__main__":
    main()
