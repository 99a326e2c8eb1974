"""Side by side with torchaudio's own `functional.resample`, the resampling slamkit's extraction applies.

    .venv/bin/pip download torchaudio==2.11.0 --no-deps -d /tmp/torchaudio   # the wheel only, not its torch
    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/side_by_side_resample.py \
        --torchaudio-wheel /tmp/torchaudio/torchaudio-2.11.0-*.whl

torchaudio does not load beside this project's torch (its C++ extension is built for another release), but its
resampling is plain torch: the script reads `torchaudio/functional/functional.py` out of the wheel and runs its
`resample` with the two functions it calls (taken out of the module with `ast`, since importing the module
imports the extension), not copied. simslm's side is `simslm.speech.audio.resample(..., "sinc-hann")`; libsoxr's
HQ (`soxr`, simslm's resampler before, and still logmel's) is measured against the same reference.

Signals: a LibriSpeech utterance from the offline mirror brought to each rate with libsoxr's VHQ (speech as it
comes from a corpus at that rate), and random uniform noise of lengths 1 to 9,999 (every phase of the filter,
the edges, a signal shorter than the filter). The output lengths are compared too, including a 68 s length
whose float32 output count falls one short of the exact ceil.
"""

from __future__ import annotations

import argparse
import ast
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import soxr
import torch

from simslm import assets
from simslm.speech import audio

RATES = (8000, 11025, 22050, 24000, 32000, 44100, 48000)


def torchaudio_resample(wheel: Path):
    """torchaudio's `resample`, run from the wheel's own source."""
    name = "torchaudio/functional/functional.py"
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(name).decode()
    wanted = {"_get_sinc_resample_kernel", "_apply_sinc_resample_kernel", "resample"}
    tree = ast.parse(source)
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {node.name for node in body} == wanted, "the wheel's functional.py no longer has these functions"
    from typing import Optional, Tuple  # the annotations functional.py's signatures name

    namespace = {"torch": torch, "math": math, "Tensor": torch.Tensor, "Optional": Optional, "Tuple": Tuple,
                 "_CPU": torch.device("cpu")}
    exec(compile(ast.Module(body=body, type_ignores=[]), f"{wheel}!{name}", "exec"), namespace)
    return lambda samples, source_rate, target_rate: namespace["resample"](
        torch.from_numpy(samples)[None], source_rate, target_rate)[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchaudio-wheel", required=True, type=Path)
    args = parser.parse_args()
    reference = torchaudio_resample(args.torchaudio_wheel)
    recordings = assets.resolve("librispeech-samples").paths
    speech = audio.load_audio(recordings[min(key for key in recordings if key.endswith(".flac"))])
    rng = np.random.default_rng(0)
    print("| from | to | signal | samples | simslm sinc-hann: max abs difference | soxr HQ: RMS difference / RMS |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst, lengths_equal, cases = 0.0, 0, 0
    for source_rate in RATES:
        for target_rate in (16000,) if source_rate != 32000 else (16000, 8000):
            signals = [("speech", soxr.resample(speech, 16000, source_rate, quality="VHQ").astype(np.float32))]
            signals += [(f"noise {n}", rng.uniform(-1, 1, n).astype(np.float32)) for n in (1, 7, 441, 9999)]
            for label, samples in signals:
                ours = audio.resample(samples, source_rate, target_rate, "sinc-hann")
                theirs = reference(samples, source_rate, target_rate)
                cases += 1
                lengths_equal += len(ours) == len(theirs)
                difference = float(np.abs(ours - theirs).max()) if len(ours) == len(theirs) else math.inf
                worst = max(worst, difference)
                if label == "speech":
                    libsoxr = audio.resample(samples, source_rate, target_rate, "soxr")[:len(theirs)]
                    rms = np.sqrt(np.mean((libsoxr - theirs[:len(libsoxr)]) ** 2) / np.mean(theirs ** 2))
                    print(f"| {source_rate} | {target_rate} | {label} | {len(samples)} | {difference:.1e} | "
                          f"{rms:.2%} |")
    long = 3_000_010
    ours, theirs = (len(f(np.zeros(long, np.float32), 44100, 16000)) for f in
                    (lambda *a: audio.resample(*a, "sinc-hann"), reference))
    print(f"\n{cases} signals: lengths equal in {lengths_equal}, largest difference {worst:.1e}; "
          f"{long} samples at 44.1 kHz: simslm {ours}, torchaudio {theirs}, exact ceil {-(-long * 160 // 441)}")
    ten_minutes = rng.uniform(-1, 1, 44100 * 600).astype(np.float32)
    for label, function in (("simslm sinc-hann", lambda x: audio.resample(x, 44100, 16000, "sinc-hann")),
                            ("torchaudio", lambda x: reference(x, 44100, 16000)),
                            ("soxr HQ", lambda x: audio.resample(x, 44100, 16000, "soxr"))) * 2:
        started = time.perf_counter()
        function(ten_minutes)
        print(f"{label}: 10 min of 44.1 kHz in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
