"""Sequence build throughput on a speech corpus with units, and the realised speech share.

    SIMSLM_MIRROR=../shared/data .venv/bin/simslm synth --out /tmp/stinystories
    .venv/bin/simslm units fit --manifest /tmp/stinystories/manifest.jsonl --out /tmp/full/km500
    .venv/bin/simslm units extract --manifest /tmp/stinystories/manifest.jsonl \\
        --codebook /tmp/full/km500.npy --out /tmp/full/units
    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_sequences.py \\
        --manifest /tmp/stinystories/manifest.jsonl --units /tmp/full/units

Times `build_sequences` (interleaved + speech + text streams, 2 epochs, context 2048)
after transformers is imported, so the one-off import (~4 s) is reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.show import stats
from simslm.speech.manifest import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--units", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    import transformers  # noqa: F401

    import_sec = time.perf_counter() - started
    rates, index = [], None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            index = build_sequences(BuildConfig(
                out=f"{scratch}/seq", manifest=args.manifest, units=args.units, text_corpus="tinystories-sample",
                num_epochs=args.epochs))
            wall = time.perf_counter() - started
            tokens = sum(e["num_chunks"] for e in index["epochs"]) * index["context_length"]
            rates.append(tokens / wall)
            rows = stats(f"{scratch}/seq")
    lengths = np.array([len(u.words) for u in read_manifest(args.manifest) if u.words])
    print("| measurement | result |\n| --- | --- |")
    print(f"| build, {args.epochs} epochs x 3 streams, {tokens:,} tokens, median of {args.repeats} | "
          f"{statistics.median(rates):,.0f} tokens/s (runs: {', '.join(f'{r:,.0f}' for r in rates)}) |")
    print(f"| one-off `import transformers` before the first build | {import_sec:.1f} s |")
    for row in rows:
        print(f"| epoch {row['epoch']}: speech share of interleaved words (η = 0.3), "
              f"{len(lengths)} stories of {int(np.median(lengths))} words (median) | "
              f"{row['interleaved_speech_word_share']:.4f} |")
        print(f"| epoch {row['epoch']}: speech share of all tokens; tokens by stream | "
              f"{row['speech_token_share']:.3f}; {row['tokens_by_stream']} |")


if __name__ == "__main__":
    main()
