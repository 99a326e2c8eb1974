"""Side by side with GSLM's own Self-BLEU2 and Auto-BLEU2 (fairseq's `self_auto_bleu.py`), on random transcripts.

    git clone https://github.com/facebookresearch/fairseq /tmp/fairseq   # only two files of it are read
    .venv/bin/python benchmarks/side_by_side_gslm_bleu.py \
        --gslm-metrics /tmp/fairseq/examples/textless_nlp/gslm/metrics/asr_metrics

GSLM's module is imported from the checkout, with its `misc/bleu_utils.py` beside it, not copied. Its
`get_self_bleu2_*` and `get_auto_bleu2_*` take word lists, which its `main` makes by splitting each ASR line on
whitespace; their mean over transcripts is the number it prints (before its x100). simslm's side is
`simslm.eval.generation.self_bleu2` and `gslm_auto_bleu2` on the same lines. nltk, which both use, is a dependency
of simslm.

The sets: per seed, a vocabulary of 3 to 200 words and 2 to 12 transcripts of 0 to 40 words, so that sets with
empty and one-word transcripts, with no bigram in common and with every unigram in common all occur, and small
vocabularies give runs of one word ("a a a"), where overlapping bigrams are what sets GSLM's Auto-BLEU apart.
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from pathlib import Path

import numpy as np

from simslm.eval.generation import gslm_auto_bleu2, self_bleu2


def random_set(seed: int) -> list[str]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(rng.choice([3, 8, 30, 200]))]
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.choice([0, 1, 2, 3, 5, 10, 40])))
            for _ in range(rng.randint(2, 12))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gslm-metrics", required=True, type=Path,
                        help="fairseq's examples/textless_nlp/gslm/metrics/asr_metrics folder")
    parser.add_argument("--seeds", type=int, default=300)
    args = parser.parse_args()
    sys.path.insert(0, str(args.gslm_metrics))
    warnings.filterwarnings("ignore")  # NLTK warns of zero counts, as GSLM's main silences
    import self_auto_bleu as gslm

    contenders = {
        "Self-BLEU2": ((gslm.get_self_bleu2_geometric, lambda t: self_bleu2(t, "geometric")),
                       (gslm.get_self_bleu2_arithmetic, lambda t: self_bleu2(t, "arithmetic"))),
        "Auto-BLEU2": ((gslm.get_auto_bleu2_geometric, lambda t: gslm_auto_bleu2(t, "geometric")),
                       (gslm.get_auto_bleu2_arithmetic, lambda t: gslm_auto_bleu2(t, "arithmetic"))),
    }
    failed = False
    for metric, modes in contenders.items():
        worst, compared, differing = 0.0, 0, []
        for seed in range(args.seeds):
            transcripts = random_set(seed)
            words = [line.strip().split() for line in transcripts]
            for mode, (theirs_of, ours_of) in zip(("geometric", "arithmetic"), modes):
                theirs, ours = float(np.mean(theirs_of(words))), ours_of(transcripts)
                compared += 1
                worst = max(worst, abs(theirs - ours))
                if abs(theirs - ours) > 1e-12:
                    differing.append(f"seed {seed}, {mode}: GSLM {theirs!r}, simslm {ours!r}")
        print(f"{compared} {metric} values ({args.seeds} sets x geometric and arithmetic); largest difference "
              f"{worst:.2e}; differing beyond 1e-12: {len(differing)}")
        print("\n".join(differing[:10]))
        failed |= bool(differing)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
