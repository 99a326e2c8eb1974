"""Reading a large manifest: time and peak memory of `read_manifest` and of units' `_records`, each in its own process.

    .venv/bin/python benchmarks/bench_manifest.py --utterances 200000 --words 30

A manifest of N synthetic utterances of W timed words each (Libri-Light's 10-second segments hold about 30 words) is
written to a temporary folder; each reader then runs in a fresh interpreter, which reports its wall time and its peak
resident memory (`ru_maxrss`). The readers:
- `read_manifest`: the whole manifest as Utterance objects, as sequences build and align hold it;
- `units records`: the ids, audio paths and durations `units fit` and `units extract` keep (`extract._records`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

READERS = {
    "read_manifest": "from simslm.speech.manifest import read_manifest as read",
    "units records": "from simslm.units.extract import _records as read",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=200_000)
    parser.add_argument("--words", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.jsonl"
        write_manifest(manifest, args.utterances, args.words)
        print(f"{args.utterances} utterances of {args.words} words, {manifest.stat().st_size / 1e6:.0f} MB")
        for name, imports in READERS.items():
            out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports), str(manifest)],
                                 capture_output=True, text=True, check=True).stdout.split()
            print(f"{name:>14}: {float(out[1]):6.1f} s, peak {float(out[2]):.2f} GB "
                  f"({float(out[2]) * 1e9 / args.utterances:,.0f} bytes per utterance)")


if __name__ == "__main__":
    main()
