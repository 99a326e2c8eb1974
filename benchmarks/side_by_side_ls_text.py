"""LibriSpeech transcripts as slamkit's helper reads them (`slamkit/utils/data_prep.py`, `parse_ls_text`) beside
`simslm manifest import` of the same tree (its default `--case auto` lowercases a LibriSpeech tree).

    git -C SLAMKIT_GIT show HEAD:slamkit/utils/data_prep.py > /tmp/slamkit_dp/slamkit_data_prep.py
    PYTHONPATH=/tmp/slamkit_dp .venv/bin/python benchmarks/side_by_side_ls_text.py LIBRISPEECH_TREE

slamkit's file is read as it is, from its own repository; it imports nothing outside the standard library.
"""

import argparse
import tempfile
from pathlib import Path

from slamkit_data_prep import parse_ls_text

from simslm.speech.importers import ImportManifestConfig, import_manifest
from simslm.speech.manifest import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", help="a LibriSpeech tree (SPEAKER/CHAPTER/*.trans.txt and the audio)")
    tree = Path(parser.parse_args().tree)
    theirs = parse_ls_text(f"{tree}/")  # it globs data_path + "**/*.trans.txt"
    with tempfile.TemporaryDirectory() as folder:
        import_manifest(ImportManifestConfig(source=str(tree), out=f"{folder}/manifest.jsonl"))
        ours = {u.id: u.transcript for u in read_manifest(f"{folder}/manifest.jsonl")}
    differing = sorted(key for key in set(theirs) | set(ours) if theirs.get(key) != ours.get(key))
    print(f"slamkit {len(theirs)} transcripts, simslm {len(ours)}; the same: {len(theirs) - len(differing)}")
    for key in differing[:10]:
        print(f"  {key}: slamkit {theirs.get(key)!r} / simslm {ours.get(key)!r}")


if __name__ == "__main__":
    main()
