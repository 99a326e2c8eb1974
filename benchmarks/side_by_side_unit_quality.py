"""Side by side with fairseq's own `measure_teacher_quality.py` (HuBERT's PNMI and purities), on the same labels.

    git clone https://github.com/facebookresearch/fairseq /tmp/fairseq   # one file of it is read
    .venv/bin/python benchmarks/side_by_side_unit_quality.py --fairseq-hubert /tmp/fairseq/examples/hubert
    # and on real units, phone-aligned by pocketsphinx (here the demo's):
    .venv/bin/python benchmarks/side_by_side_unit_quality.py --fairseq-hubert /tmp/fairseq/examples/hubert \
        --manifest DEMO/speech/manifest.jsonl --units DEMO/units/speech --max-utterances 50

Their module is imported from the checkout, not copied (it needs `tabulate`, which the venv has). For each set of
utterances the script writes their three inputs: a phone tsv (`uid<TAB>phone,phone,...`, one phone per 10 ms frame),
a manifest tsv (a root line, then `uid.wav<TAB>frames`) and a label file (each utterance's unit frames on a line).
It reads them with their `read_phn` and `read_lab(..., upsample)` and computes what their `_main` prints: "MI/H(ref)",
"ref pur" and "hyp pur". simslm's side is `simslm.units.quality` on the same phone tsv: `read_phone_labels` (what
`units quality --phone-labels` reads), `frame_pairs` and `phone_unit_scores`; the tsv itself is written with
`phone_frames`, which labels pocketsphinx's alignments in `units quality`.

The synthetic sets: per seed, 1 to 8 utterances of random phones, some with stress digits (3 to 25 frames each,
some gaps left to 'SIL'), units at 100, 50, 25 or 12.5 Hz (upsample 1, 2, 4 or 8) from 2 to 300 labels, with 0 to 3
unit frames more or fewer than the phones cover, so that both of their cuts to the shorter side occur.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from simslm.units import quality

PHONES = "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()


def random_utterance(rng: random.Random, frame_rate_hz: float, num_units: int):
    """Timed phones in seconds (as pocketsphinx gives them) and unit frames that cover about as long."""
    timed, frame = [], 0
    for _ in range(rng.randint(1, 30)):
        frame += rng.choice([0, 0, 0, 2])  # a gap, labelled 'SIL'
        length = rng.randint(3, 25)
        timed.append((rng.choice(PHONES) + rng.choice(["", "", "0", "1"]), frame / 100, (frame + length) / 100))
        frame += length
    upsample = round(100 / frame_rate_hz)
    frames = max(1, -(-frame // upsample) + rng.randint(-3, 3))
    return timed, np.array([rng.randrange(num_units) for _ in range(frames)])


def write_inputs(folder: Path, utterances: dict) -> None:
    """fairseq's three inputs: the phone tsv, the manifest tsv and the label file."""
    with open(folder / "phones.tsv", "w") as tsv:
        for uid, (timed, _) in utterances.items():
            tsv.write(f"{uid}\t{','.join(quality.phone_frames(timed))}\n")
    with open(folder / "valid.tsv", "w") as tsv, open(folder / "valid.km", "w") as labels:
        tsv.write("/root\n")
        for uid, (_, units) in utterances.items():
            tsv.write(f"{uid}.wav\t{len(units)}\n")
            labels.write(" ".join(map(str, units)) + "\n")


def theirs(module, folder: Path, frame_rate_hz: float) -> dict[str, float]:
    """fairseq's numbers, from their readers."""
    refs = module.read_phn(str(folder / "phones.tsv"))
    hyps = module.read_lab(str(folder / "valid.tsv"), str(folder / "valid.km"), 0, round(100 / frame_rate_hz))
    p_xy, *_ = module.comp_joint_prob(refs, hyps)
    _, ref_purity = module.comp_purity(p_xy, axis=0)
    _, hyp_purity = module.comp_purity(p_xy, axis=1)
    _, mi_by_ref, *_ = module.comp_norm_mutual_info(p_xy)
    return {"pnmi": float(mi_by_ref), "phone_purity": float(ref_purity), "cluster_purity": float(hyp_purity)}


def ours(folder: Path, utterances: dict, frame_rate_hz: float) -> tuple[dict[str, float], int]:
    """simslm's numbers, from the same phone tsv (what `units quality --phone-labels` reads), and how many phone
    labels the scored frames have."""
    labels = quality.read_phone_labels(folder / "phones.tsv")
    pairs = [quality.frame_pairs(labels[uid], units, frame_rate_hz) for uid, (_, units) in utterances.items()]
    phones = np.concatenate([p for p, _ in pairs])
    return quality.phone_unit_scores(phones, np.concatenate([u for _, u in pairs])), len(set(phones))


def real_utterances(args) -> tuple[dict, float]:
    """The first utterances of a units folder with pocketsphinx's phones, as `simslm units quality` aligns them."""
    from simslm.speech.manifest import read_manifest
    from simslm.units.folder import read_units

    by_id = {u.id: u for u in read_manifest(args.manifest)}
    items = [u for u in read_units(args.units) if u.id in by_id][:args.max_utterances]
    phones_by_id, skipped = quality.phone_alignments(args.manifest, by_id, items)
    print(f"{len(phones_by_id)} utterances phone-aligned, {len(skipped)} not")
    return {u.id: (phones_by_id[u.id], u.frame_units()) for u in items if u.id in phones_by_id}, items[0].frame_rate_hz


def compare(module, sets) -> None:
    worst, compared, differing, undefined = 0.0, 0, [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for label, utterances, rate in sets:
            write_inputs(Path(scratch), utterances)
            theirs_ = theirs(module, Path(scratch), rate)
            ours_, num_phones = ours(Path(scratch), utterances, rate)
            if num_phones == 1:
                # One phone label: H(phone) = 0 and PNMI is undefined. Their epsilons make it
                # 1e-8 / -1e-8 = -1; simslm says 0. The purities are compared as usual.
                undefined += 1
                del theirs_["pnmi"]
            for name in theirs_:
                compared += 1
                gap = abs(theirs_[name] - ours_[name])
                worst = max(worst, gap)
                if gap > 1e-12:
                    differing.append(f"{label}, {name}: fairseq {theirs_[name]!r}, simslm {ours_[name]!r}")
    print(f"{compared} values (PNMI, phone purity, cluster purity of {len(sets)} sets; PNMI left out of {undefined} "
          f"with one phone label); largest difference {worst:.2e}; differing beyond 1e-12: {len(differing)}")
    print("\n".join(differing[:10]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fairseq-hubert", required=True, type=Path, help="fairseq's examples/hubert folder")
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--manifest", type=Path, help="also compare on these real units (with --units)")
    parser.add_argument("--units", type=Path)
    parser.add_argument("--max-utterances", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(args.fairseq_hubert))
    import measure_teacher_quality as fairseq

    sets = []
    for seed in range(args.seeds):
        rng = random.Random(seed)
        rate, num_units = rng.choice([100.0, 50.0, 25.0, 12.5]), rng.choice([2, 5, 50, 300])
        sets.append((f"seed {seed} ({rate:g} Hz)", {f"utt{i}": random_utterance(rng, rate, num_units)
                                                    for i in range(rng.randint(1, 8))}, rate))
    compare(fairseq, sets)
    if args.manifest:
        utterances, rate = real_utterances(args)
        compare(fairseq, [("real units", utterances, rate)])


if __name__ == "__main__":
    main()
