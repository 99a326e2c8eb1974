"""Peak memory of a HuBERT forward pass against the length of the recording, on the CPU, in float32.

    .venv/bin/python benchmarks/bench_hubert_memory.py --seconds 30 60 120

HuBERT encodes a recording whole (simslm as slamkit does), so memory grows with its length; the README's advice to
cut long recordings (`simslm segment`) and the size of a recording a memory limit lets through rest on this. The
model has HuBERT-base's convolutional feature extractor (`HubertConfig`'s defaults: 512 channels, strides 5, 2, 2,
2, 2, 2, 2, group norm) and a tiny random transformer (hidden size 32, 3 layers), which no offline weights stand in
for. The real model's 768-wide transformer adds its own activations, about 3 KB a frame (50 a second) for each
hidden state kept, not measured here: these numbers are a floor. Each length runs in a process of its own, and the
peak resident memory above the process's own after the model is built is what is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_ONE_LENGTH = """
import json, resource, sys, torch
from transformers import HubertConfig, HubertModel
torch.manual_seed(0)
model = HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).eval()
seconds = float(sys.argv[1])
samples = torch.randn(1, int(seconds * 16000)) * 0.1
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    model(samples, output_hidden_states=True)
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "peak_mb": round(peak), "mb_per_second": round(peak / seconds, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 60.0, 120.0])
    args = parser.parse_args()
    print("| seconds of audio | peak memory above the model's (MB) | MB per second |")
    print("| --- | --- | --- |")
    for seconds in args.seconds:
        done = subprocess.run([sys.executable, "-c", _ONE_LENGTH, str(seconds)], capture_output=True, text=True,
                              check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {row['seconds']:g} | {row['peak_mb']:,} | {row['mb_per_second']} |")


if __name__ == "__main__":
    main()
