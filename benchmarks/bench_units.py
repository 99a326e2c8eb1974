"""Unit extraction speed (logmel and a HuBERT-base-sized random model) and logmel unit quality.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_units.py --stories 120

Synthesises `--stories` TinyStories stories (training voices), fits k=500 on them, then
times extraction with 1 and 2 workers side by side (k-means assignment included), a
HuBERT-base-sized randomly initialised model on a few stories, and PNMI with a shuffled
baseline. Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from simslm.speech.manifest import read_manifest, write_manifest
from simslm.speech.synth import SynthConfig, synthesize_corpus
from simslm.units import quality as unit_quality
from simslm.units.extract import ExtractConfig, extract_units
from simslm.units.fit import FitConfig, fit_codebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=120)
    parser.add_argument("--hubert-stories", type=int, default=6)
    parser.add_argument("--quality-stories", type=int, default=50)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        synthesize_corpus(SynthConfig(out=str(scratch / "speech"), limit=args.stories))
        manifest = scratch / "speech" / "manifest.jsonl"
        codebook = fit_codebook(FitConfig(manifest=str(manifest), out=str(scratch / "km500"), num_units=500))
        reports = {}
        for workers in (1, 2):
            reports[workers] = extract_units(ExtractConfig(
                manifest=str(manifest), codebook=str(codebook), out=str(scratch / f"units{workers}"),
                num_workers=workers))
            report = reports[workers]
            rows.append((f"logmel extraction + k=500 assignment, {workers} worker(s), {report.num_encoded} stories "
                         f"({report.audio_sec / 60:.0f} min)",
                         f"{report.realtime_factor:.0f}x real time ({report.wall_sec:.1f} s)"))
        rows.append(("logmel dedup ratio (frames per unit)",
                     f"{reports[2].num_frames / reports[2].num_units:.3f}"))

        from transformers import HubertConfig, HubertModel

        hubert_dir = scratch / "hubert-base-random"
        model = HubertModel(HubertConfig())  # the defaults are HuBERT-base: 12 layers, 768 wide
        model.save_pretrained(hubert_dir)
        num_parameters = sum(p.numel() for p in model.parameters())
        small = scratch / "small.jsonl"
        speech_dir = manifest.parent
        write_manifest(small, [replace(u, audio=str(u.audio_path(speech_dir)))
                               for u in read_manifest(manifest)[:args.hubert_stories]])
        hubert_codebook = fit_codebook(FitConfig(
            manifest=str(small), out=str(scratch / "hubert_km500"), num_units=500, encoder="hubert-base-l9",
            max_frames_per_utterance=5000,
            model_path=str(hubert_dir)))
        hubert = extract_units(ExtractConfig(manifest=str(small), codebook=str(hubert_codebook),
                                                         out=str(scratch / "hubert_units"), num_workers=2))
        rows.append((f"HuBERT-base-sized random model ({num_parameters / 1e6:.0f}M parameters, layer 9), fp32 CPU, "
                     f"2 workers, {hubert.num_encoded} stories ({hubert.audio_sec / 60:.1f} min)",
                     f"{hubert.realtime_factor:.1f}x real time ({hubert.wall_sec:.1f} s)"))

        quality = unit_quality.unit_quality(unit_quality.QualityConfig(
            manifest=str(manifest), units=str(scratch / "units2"), max_utterances=args.quality_stories))
        for name in ("units", "shuffled_baseline"):
            scores = quality[name]
            rows.append((f"logmel k=500 {name.replace('_', ' ')}, {quality['num_utterances_scored']} stories, "
                         f"{quality['num_frames_scored']} frames of 10 ms",
                         f"PNMI {scores['pnmi']:.4f}, phone purity {scores['phone_purity']:.4f}, "
                         f"cluster purity {scores['cluster_purity']:.4f}"))
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
