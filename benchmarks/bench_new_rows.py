"""New embedding rows: mean-resizing (slamkit's, the default) against per-dimension normal draws.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_new_rows.py --stories 120 --steps 73

Synthesises `--stories` TinyStories stories (training voices) and 20 held-out ones, fits
logmel units (k = 100), builds interleaved + speech + text sequences (the reference recipe,
context 256) and validation speech, then trains stories260K with TWIST for `--steps` steps
with each way of starting the new rows, for seeds 0, 1 and 2 (alternated), and reports the
validation loss on speech and on text after training.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from simslm.sequences.build import BuildConfig, build_sequences
from simslm.speech.synth import SynthConfig, synthesize_corpus
from simslm.train.loop import train
from simslm.train.plan import TrainConfig
from simslm.units.extract import ExtractConfig, extract_units
from simslm.units.fit import FitConfig, fit_codebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=120)
    parser.add_argument("--steps", type=int, default=73)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        synthesize_corpus(SynthConfig(out=str(scratch / "speech"), corpus=f"tinystories-sample[:{args.stories}]"))
        synthesize_corpus(SynthConfig(out=str(scratch / "held"), corpus="tinystories-sample[2100:2120]"))
        codebook = fit_codebook(FitConfig(manifest=str(scratch / "speech" / "manifest.jsonl"),
                                          out=str(scratch / "km100"), num_units=100))
        for name in ("speech", "held"):
            extract_units(ExtractConfig(manifest=str(scratch / name / "manifest.jsonl"), codebook=str(codebook),
                                        out=str(scratch / f"units-{name}")))
        common = {"context_length": 256, "tokenizer": "stories260K"}
        build_sequences(BuildConfig(out=str(scratch / "data"), manifest=str(scratch / "speech" / "manifest.jsonl"),
                                    units=str(scratch / "units-speech"), text_corpus="tinystories-sample[1000:1300]",
                                    mix_by="tokens", **common))
        build_sequences(BuildConfig(out=str(scratch / "validation"), manifest=str(scratch / "held" / "manifest.jsonl"),
                                    units=str(scratch / "units-held"), text_corpus="tinystories-sample[2200:2260]",
                                    streams=("speech", "text"), mix_by="tokens", **common))
        results: dict[str, list[tuple[float, float]]] = {"mean": [], "normal": []}
        for seed in range(args.seeds):
            for new_rows in results:
                run = train(TrainConfig(run_dir=str(scratch / f"{new_rows}-{seed}"), data=str(scratch / "data"),
                                        validation_data=str(scratch / "validation"), base_model="stories260K",
                                        new_rows=new_rows, seed=seed, batch_size=8,
                                        budget_tokens=args.steps * 8 * 256, num_validation_batches=8))
                results[new_rows].append((run.validation.loss_speech, run.validation.loss_text))
    print(f"| new rows | speech CE after {args.steps} steps (seeds) | text CE after (seeds) |\n| --- | --- | --- |")
    for name, values in results.items():
        speech, text = [v[0] for v in values], [v[1] for v in values]
        print(f"| {name} | {statistics.mean(speech):.3f} ({', '.join(f'{v:.3f}' for v in speech)}) | "
              f"{statistics.mean(text):.3f} ({', '.join(f'{v:.3f}' for v in text)}) |")


if __name__ == "__main__":
    main()
