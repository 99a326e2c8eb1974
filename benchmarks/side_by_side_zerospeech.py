"""Side by side with ZeroSpeech's own evaluator: sWUGGY and sBLIMP scores from the same per-file scores.

    python3 -m venv /tmp/zrvenv && /tmp/zrvenv/bin/pip install zerospeech-benchmarks==0.9.4 pandas==2.0.3 numpy==1.26.4
    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/side_by_side_zerospeech.py --zerospeech /tmp/zrvenv/bin/python
    # a sWUGGY or sBLIMP folder simslm built, read by ZeroSpeech's evaluator as it is:
    .venv/bin/python benchmarks/side_by_side_zerospeech.py --zerospeech /tmp/zrvenv/bin/python --built FOLDER

ZeroSpeech's code (`zerospeech-benchmarks`, its `LexicalTask` and `SyntacticTask`, and the leaderboard's summary of
their tables in `submissions/sLM21.py`) is run in its own environment, not copied: it pins pydantic below 2. Its
import fetches a repository index from the network unless a copy more than a week old is in `$HOME/zr-data`, so
the script gives it a scratch home with an empty one.

The inputs are ZeroSpeech-shaped folders written here, each a `gold.csv` and its audio files (empty: nothing is
listened to), and a submission of one score per file drawn from a seeded generator, rounded so that ties occur:
- lexical: items with 1 to 4 voices each, some with two non-words in one voice, word counts on every edge of
  ZeroSpeech's frequency bands (0, 1, 4, 5, 19, 20, 99, 100, 1000);
- syntactic: items in 1 to 3 voices, with ids that repeat across phenomena and subtypes, correct and incorrect
  rows one after the other (ZeroSpeech pairs them by position).
simslm reads the same folders with `simslm.eval.layouts.load`, takes each pair's outcome from the same scores, and
aggregates as `simslm eval --aggregation items` does (and `macro` for the by-type mean).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from simslm.eval.layouts import LAYOUTS, load
from simslm.eval.scoring import accuracy_with_ci, pair_outcomes

ZEROSPEECH_SIDE = r"""
import json, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import numpy as np
from zerospeech.tasks.lm.lexical import LexicalTask
from zerospeech.tasks.lm.syntactic import SyntacticTask

lexical, syntactic = Path(sys.argv[1]), Path(sys.argv[2])
data = LexicalTask.load_and_format(lexical / "submission.txt", lexical / "gold.csv")  # (submission, gold)
by_pair = LexicalTask.eval_by_pair(data)
by_frequency = LexicalTask.eval_by_frequency(by_pair)
in_vocab = by_frequency[by_frequency["frequency"] != "oov"]
by_pair_syntactic, by_type = SyntacticTask().run_syntactic_comparison(syntactic / "gold.csv",
                                                                        syntactic / "submission.txt")
print(json.dumps({
    # sLM21ScoreDir.lexical_scores and syntactic_scores: the leaderboard's numbers.
    "lexical_all": float(by_pair["score"].mean()),
    "lexical_invocab": float(np.average(in_vocab["score"].to_numpy(), weights=in_vocab["n"].to_numpy())),
    "lexical_items": int(len(by_pair)),
    "lexical_bands": {str(row["frequency"]): [float(row["score"]), int(row["n"])] for _, row in by_frequency.iterrows()
                      if row["n"] > 0},
    "syntactic": float(by_pair_syntactic["score"].mean()),
    "syntactic_items": int(len(by_pair_syntactic)),
    "syntactic_by_type_mean": float(by_type["score"].mean()),
}))
"""

BAND_EDGES = (0, 1, 4, 5, 19, 20, 99, 100, 1000)


def _write(folder: Path, rows: list[dict], scores: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    for row in rows:
        (folder / f"{row['filename']}.wav").touch()
    with open(folder / "gold.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "submission.txt").write_text("".join(f"{name} {score}\n" for name, score in scores.items()))


def lexical_set(folder: Path, num_items: int, rng: np.random.Generator) -> None:
    rows, scores = [], {}
    for item in range(num_items):
        count = int(rng.choice(BAND_EDGES))
        for voice in range(int(rng.integers(1, 5))):
            sides = [(1, "w"), (0, "n1")] + [(0, "n2")] * (item % 7 == 0 and voice == 0)
            for correct, tag in sides:
                name = f"x{item:04d}{tag}v{voice}"
                rows.append({"id": f"w{item}", "filename": name, "voice": f"v{voice}", "frequency": count,
                             "word": f"word{item}" if correct else f"nonword{item}{tag}", "phones": "a b",
                             "length": 2, "correct": correct})
                scores[name] = round(float(rng.normal()), 1)  # one decimal: ties happen
    _write(folder, rows, scores)


def built_set(built: Path, folder: Path, rng: np.random.Generator) -> None:
    """A folder `simslm bench build` wrote (swuggy or sblimp), as it is (its gold.csv, its audio linked), with a
    seeded score for each of its files."""
    folder.mkdir(parents=True)
    (folder / "audio").symlink_to((built / "audio").resolve())
    (folder / "gold.csv").write_bytes((built / "gold.csv").read_bytes())
    with open(built / "gold.csv", newline="") as handle:
        names = [row["filename"] for row in csv.DictReader(handle)]
    (folder / "submission.txt").write_text("".join(f"{name} {round(float(rng.normal()), 1)}\n" for name in names))


def syntactic_set(folder: Path, num_items: int, rng: np.random.Generator) -> None:
    rows, scores = [], {}
    for item in range(num_items):
        # Phenomena of unequal sizes (type4 has 3/7 of the items), so the by-type mean differs from the item mean;
        # ids repeat across phenomena and subtypes, and (type, subtype, id) is still one item.
        phenomenon, subtype, item_id = f"type{min(item % 7, 4)}", f"sub{item % 7}", str(item // 7)
        for voice in range(int(rng.integers(1, 4))):
            for correct in (1, 0):  # one after the other, as ZeroSpeech pairs them by position
                name = f"s{item:04d}v{voice}c{correct}"
                # Columns in the order ZeroSpeech's by-pair table reads by position (id, voice, type, subtype,
                # transcription: its `x.iat[0, 2]` is the type); simslm reads them by name.
                rows.append({"id": item_id, "voice": f"v{voice}", "filename": name, "type": phenomenon,
                             "subtype": subtype, "transcription": "a b .", "correct": correct})
                scores[name] = round(float(rng.normal()), 1)
    _write(folder, rows, scores)


def simslm_side(lexical: Path, syntactic: Path) -> dict:
    """simslm's numbers for the same folders and scores."""
    def outcomes(folder: Path):
        layout, pairs = load(folder)
        score = {Path(line.split()[0]).name: float(line.split()[1])  # a built folder's names are audio/<stem>
                 for line in (folder / "submission.txt").read_text().splitlines()}
        of = lambda side: np.array([score[Path(pair_side[0].audio).stem] for pair_side in side])  # noqa: E731
        return LAYOUTS[layout], pairs, pair_outcomes(of([p.positive for p in pairs]), of([p.negative for p in pairs]))

    layout, pairs, results = outcomes(lexical)
    groups, items = [p.group for p in pairs], [p.item for p in pairs]
    whole = accuracy_with_ci(results, groups, items=items, aggregation="items", num_resamples=10)
    (_, keep), = layout.subsets
    at = [i for i, group in enumerate(groups) if keep(group)]
    in_vocab = accuracy_with_ci(results[at], [groups[i] for i in at], items=[items[i] for i in at],
                                aggregation="items", num_resamples=10)
    _, pairs_s, results_s = outcomes(syntactic)
    groups_s, items_s = [p.group for p in pairs_s], [p.item for p in pairs_s]
    syntactic_items = accuracy_with_ci(results_s, groups_s, items=items_s, aggregation="items", num_resamples=10)
    by_type = accuracy_with_ci(results_s, groups_s, items=items_s, aggregation="macro", num_resamples=10)
    contrast = f"mean over pairs instead (slamkit's): sWUGGY {results.mean():.6f}, sBLIMP {results_s.mean():.6f}"
    return {"contrast": contrast, "lexical_all": whole.accuracy, "lexical_invocab": in_vocab.accuracy, "lexical_items": whole.num_items,
            "lexical_bands": {band: [entry["accuracy"], entry["num_items"]] for band, entry in whole.per_group.items()},
            "syntactic": syntactic_items.accuracy, "syntactic_items": syntactic_items.num_items,
            "syntactic_by_type_mean": by_type.accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zerospeech", required=True, help="the python of an environment with zerospeech-benchmarks")
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--built", help="a sWUGGY or sBLIMP folder `simslm bench build` wrote, scored in place of "
                                        "the made-up set of its kind (ZeroSpeech's evaluator reads its gold.csv as "
                                        "it is)")
    args = parser.parse_args()
    built = None
    if args.built:
        meta = Path(args.built) / "bench.json"
        built = json.loads(meta.read_text()).get("kind") if meta.is_file() else None
        if built not in ("swuggy", "sblimp"):
            sys.exit(f"{args.built}: not a sWUGGY or sBLIMP folder `simslm bench build` wrote (its bench.json's kind)")
    home = Path(tempfile.mkdtemp())
    index = home / "zr-data" / "repo.json"  # an index "more than a week old": ZeroSpeech then does not fetch one
    index.parent.mkdir()
    index.write_text(json.dumps({"last_modified": "2023-01-01T00:00:00", "datasets": [], "checkpoints": [],
                                 "samples": []}))
    os.utime(index, (time.time() - 30 * 86400,) * 2)
    print("| seed | number | ZeroSpeech | simslm | same |\n| --- | --- | --- | --- | --- |")
    worst, contrasts = 0.0, []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        root = Path(tempfile.mkdtemp())
        if built == "swuggy":
            built_set(Path(args.built), root / "lexical", rng)
        else:
            lexical_set(root / "lexical", args.items, rng)
        if built == "sblimp":
            built_set(Path(args.built), root / "syntactic", rng)
        else:
            syntactic_set(root / "syntactic", args.items, rng)
        run = subprocess.run([args.zerospeech, "-c", ZEROSPEECH_SIDE, str(root / "lexical"), str(root / "syntactic")],
                             capture_output=True, text=True, env={**os.environ, "HOME": str(home)})
        if run.returncode:
            sys.exit(f"ZeroSpeech's side failed:\n{run.stderr}")
        theirs = json.loads(run.stdout.splitlines()[-1])
        ours = simslm_side(root / "lexical", root / "syntactic")
        contrasts.append(f"seed {seed}: {ours.pop('contrast')}")
        for key in theirs:
            if key == "lexical_bands":
                for band, (score, count) in sorted(theirs[key].items()):
                    mine = ours[key].get(band, [float("nan"), 0])
                    worst = max(worst, abs(score - mine[0]))
                    print(f"| {seed} | sWUGGY band {band} (items) | {score:.6f} ({count}) | {mine[0]:.6f} ({mine[1]}) "
                          f"| {abs(score - mine[0]) < 1e-12 and count == mine[1]} |")
                continue
            worst = max(worst, abs(theirs[key] - ours[key]))
            shown = "{:d}" if isinstance(theirs[key], int) else "{:.6f}"
            print(f"| {seed} | {key} | {shown.format(theirs[key])} | {shown.format(ours[key])} "
                  f"| {abs(theirs[key] - ours[key]) < 1e-12} |")
    print(f"\nlargest difference: {worst:.2e}\n" + "\n".join(contrasts))
    sys.exit(0 if worst < 1e-12 else 1)


if __name__ == "__main__":
    main()
