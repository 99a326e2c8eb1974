"""Synthesis and alignment speed, and espeak-ng vs pocketsphinx word-onset agreement.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_synth_align.py --stories 60

Prints a Markdown table for docs/BENCHMARKS.md. Synthesis is timed with 1 and 2 worker
processes side by side on the same stories; alignment with 2 workers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from simslm import assets
from simslm.speech.align import AlignConfig, align_manifest, read_ctm
from simslm.speech.manifest import Utterance, read_manifest, write_manifest
from simslm.speech.synth import SynthConfig, synthesize_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=60)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        reports = {}
        for workers in (1, 2):
            reports[workers] = synthesize_corpus(SynthConfig(out=str(scratch / f"synth{workers}"),
                                                             limit=args.stories, num_workers=workers))
            report = reports[workers]
            rows.append((f"synth, {workers} worker(s), {report.num_synthesized} stories, "
                         f"{report.audio_sec / 60:.0f} min audio",
                         f"{report.realtime_factor:.0f}x real time ({report.wall_sec:.1f} s)"))
        rows.append(("synth speed-up, 2 vs 1 worker",
                     f"{reports[2].realtime_factor / reports[1].realtime_factor:.2f}x"))

        manifest = scratch / "synth2" / "manifest.jsonl"
        started = time.perf_counter()
        aligned = align_manifest(AlignConfig(manifest=str(manifest), out=str(scratch / "ps.jsonl"), num_workers=2))
        wall = time.perf_counter() - started
        rows.append((f"pocketsphinx alignment, 2 workers, {aligned.num_aligned} stories "
                     f"({aligned.num_skipped} skipped)", f"{aligned.audio_sec / wall:.0f}x real time ({wall:.1f} s)"))
        espeak_words = {u.id: u.words for u in read_manifest(manifest)}
        differences = np.array([abs(a.start_sec - b.start_sec) for u in read_manifest(scratch / "ps.jsonl")
                                for a, b in zip(u.words, espeak_words[u.id], strict=True)])
        rows.append((f"espeak-ng vs pocketsphinx word onsets ({len(differences)} words)",
                     f"median {1000 * np.median(differences):.1f} ms, p90 {1000 * np.quantile(differences, 0.9):.1f} ms, "
                     f"{100 * np.mean(differences <= 0.040):.1f}% within 40 ms"))

        librispeech = assets.resolve("librispeech-samples")
        utterance_id = "1272-128104-0000"
        import soundfile

        info = soundfile.info(librispeech.file(f"{utterance_id}.flac"))
        write_manifest(scratch / "ls.jsonl", [Utterance(
            id=utterance_id, audio=str(librispeech.file(f"{utterance_id}.flac")), sample_rate=info.samplerate,
            duration_sec=info.frames / info.samplerate, transcript=assets.LIBRISPEECH_TRANSCRIPTS[utterance_id])])
        align_manifest(AlignConfig(manifest=str(scratch / "ls.jsonl"), out=str(scratch / "ls_ps.jsonl"), num_workers=1))
        reference = read_ctm(librispeech.file(f"{utterance_id}.ctm"))[utterance_id]
        ours = read_manifest(scratch / "ls_ps.jsonl")[0].words
        onset = [abs(a.start_sec - b[1]) for a, b in zip(ours, reference, strict=True)]
        rows.append((f"pocketsphinx vs MFA reference, LibriSpeech {utterance_id} ({len(onset)} words)",
                     f"median {1000 * statistics.median(onset):.1f} ms, max {1000 * max(onset):.1f} ms"))
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
