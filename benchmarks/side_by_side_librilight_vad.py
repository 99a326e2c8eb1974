"""Side by side with Libri-Light's own `cut_by_vad.py`: `simslm segment --by librilight-vad`.

    git -C LIBRI_LIGHT_CHECKOUT show HEAD:data_preparation/cut_by_vad.py > /tmp/cut_by_vad.py
    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/side_by_side_librilight_vad.py \
        --cut-by-vad /tmp/cut_by_vad.py

A made-up Libri-Light tree (`SPEAKER/BOOK/FILE.flac` with the `FILE.json` Libri-Light ships beside each file:
`speaker`, `book_meta.id`, `voice_activity`) is cut twice: by Libri-Light's script, run as it is in its own
process (`--input_dir ... --output_dir ... --target_len_sec ... --n_workers 1`), and by `simslm manifest import
--untranscribed` then `simslm segment --by librilight-vad --max-sec` the same target. The recordings are the
three LibriSpeech utterances of the offline mirror joined in several orders with silences between them; their
voice activity is random stretches rounded to 4 decimals as Libri-Light's JSON holds them (`puts_json.py`), so
every onset lands between samples and `int()` against `round()` would show. Every recording's pieces are
compared: their number, and each piece's samples as 16-bit integers.
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
import soundfile

from simslm import assets
from simslm.speech import audio

UTTERANCES = ("1272-128104-0000", "2412-153948-0000", "61-70968-0000")


def make_tree(root: Path, num_recordings: int, rng: np.random.Generator) -> None:
    """`num_recordings` made-up Libri-Light files over two speakers and books."""
    sources = [audio.load_audio(assets.resolve("librispeech-samples").file(f"{name}.flac")) for name in UTTERANCES]
    for number in range(num_recordings):
        order = rng.permutation(len(sources)).tolist() * int(rng.integers(1, 4))
        parts = []
        for index in order:
            parts += [np.zeros(int(rng.integers(0, 3 * audio.TARGET_SAMPLE_RATE)), dtype=np.float32), sources[index]]
        samples = np.concatenate(parts)
        duration = len(samples) / audio.TARGET_SAMPLE_RATE
        edges = np.sort(rng.uniform(0, duration, size=2 * int(rng.integers(1, 40))))
        stretches = [(round(float(a), 4), round(float(b), 4)) for a, b in edges.reshape(-1, 2) if round(a, 4) < round(b, 4)]
        if rng.random() < 0.3:  # a stretch longer than any target: a piece of its own
            stretches = [(0.0, round(duration, 4))]
        folder = root / f"{100 + number % 2}" / f"book_{number % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(folder / f"chapter_{number:02d}.flac"), samples, audio.TARGET_SAMPLE_RATE, subtype="PCM_16")
        (folder / f"chapter_{number:02d}.json").write_text(json.dumps({
            "speaker": folder.parent.name, "book_meta": {"id": folder.name}, "snr": 10.0,
            "voice_activity": stretches}))


def pieces_of_theirs(out: Path) -> dict[str, list[np.ndarray]]:
    """Their pieces by recording, SPEAKER_BOOK_FILE (their SPEAKER/BOOK/FILE_NNNN.flac), in order."""
    found: dict[str, list[np.ndarray]] = {}
    for path in sorted(out.rglob("*.flac")):
        recording = "_".join([*path.parts[-3:-1], path.stem.rsplit("_", 1)[0]])
        found.setdefault(recording, []).append(soundfile.read(str(path), dtype="int16")[0])
    return found


def pieces_of_ours(manifest: Path) -> dict[str, list[np.ndarray]]:
    """Ours by recording (the folder importer's id: SPEAKER_BOOK_FILE), in order."""
    found: dict[str, list[np.ndarray]] = {}
    for line in manifest.read_text().splitlines():
        record = json.loads(line)
        found.setdefault(record["meta"]["recording"], []).append(
            soundfile.read(str(manifest.parent / record["audio"]), dtype="int16")[0])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut-by-vad", required=True, type=Path, help="Libri-Light's data_preparation/cut_by_vad.py")
    parser.add_argument("--recordings", type=int, default=12)
    parser.add_argument("--targets", type=int, nargs="+", default=[5, 10, 60])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    tree = work / "small"
    make_tree(tree, args.recordings, np.random.default_rng(args.seed))
    simslm = [sys.executable, "-m", "simslm"]
    subprocess.run([*simslm, "manifest", "import", "--source", str(tree), "--out", str(work / "recordings.jsonl"),
                    "--format", "folder", "--untranscribed"], check=True, capture_output=True)
    print("| target (s) | recordings | pieces (Libri-Light) | pieces (simslm) | recordings with equal pieces | "
          "samples compared |\n| --- | --- | --- | --- | --- | --- |")
    all_equal = True
    for target in args.targets:
        theirs_dir, ours = work / f"theirs-{target}", work / f"ours-{target}" / "segments.jsonl"
        subprocess.run([sys.executable, str(args.cut_by_vad), "--input_dir", str(tree), "--output_dir", str(theirs_dir),
                        "--target_len_sec", str(target), "--n_workers", "1", "--out_extension", ".flac"],
                       check=True, capture_output=True, env={**os.environ, "TQDM_DISABLE": "1"})
        subprocess.run([*simslm, "segment", "--manifest", str(work / "recordings.jsonl"), "--out", str(ours),
                        "--by", "librilight-vad", "--max-sec", str(target), "--num-workers", "1"],
                       check=True, capture_output=True)
        theirs, mine = pieces_of_theirs(theirs_dir), pieces_of_ours(ours)
        equal = [name for name in theirs if len(theirs[name]) == len(mine.get(name, []))
                 and all(np.array_equal(a, b) for a, b in zip(theirs[name], mine[name]))]
        all_equal &= len(equal) == len(theirs) == len(mine)
        print(f"| {target} | {len(theirs)} | {sum(map(len, theirs.values()))} | {sum(map(len, mine.values()))} | "
              f"{len(equal)} of {len(theirs)} | {sum(len(p) for pieces in theirs.values() for p in pieces):,} |")
    print(f"\nevery piece identical: {all_equal}")


if __name__ == "__main__":
    main()
