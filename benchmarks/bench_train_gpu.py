"""GPU path of `simslm train`: throughput and MFU in bf16, and bf16/fp32 x SDPA/eager side by side.

    # here: build the data (the GPU machine has no ../shared)
    SIMSLM_MIRROR=../shared/data .venv/bin/simslm sequences build --out .gpu/data --streams text \
        --text-corpus tinystories-sample --context-length 2048
    # on the GPU machine
    PYTHONPATH=src python3 benchmarks/bench_train_gpu.py --data .gpu/data

Each family member trains through `simslm.train.loop.train` (bf16 autocast on CUDA, the same
code path as a real run, checkpoint and saved model included) for `--steps` steps of
batch 8 x 2048 tokens; tokens/s and MFU are medians over the steps after the first 5. The
MFU denominator is the bf16 8192^3 matrix-product rate measured in the same run. The
side-by-side table times forward + backward + AdamW on one model, alternating settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from simslm import model as model_lib
from simslm.sequences.loader import PackedLoader
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.loop import train
from simslm.train.peak import measure_peak_flops
from simslm.train.plan import TrainConfig


def step_seconds(depth: int, data: str, *, bf16: bool, attention: str, steps: int, batch_size: int) -> float:
    """Median seconds of one training step (forward, backward, AdamW) under the given settings."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    vocabulary = Vocabulary.load(Path(data) / "tokenizer")
    loader = PackedLoader(data, batch_size)
    context_length = int(loader.index["context_length"])
    config = LlamaConfig(**model_lib.family_config(depth, len(vocabulary), context_length))
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, fused=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    for _ in range(steps):
        batch = torch.from_numpy(next(loader).tokens.astype(np.int64)).cuda()
        torch.cuda.synchronize()
        started = time.perf_counter()
        with autocast:
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--depths", default="8,16,24")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compare-depth", type=int, default=16)
    args = parser.parse_args()
    rows = [("device", torch.cuda.get_device_name()), ("torch", torch.__version__)]
    peak = measure_peak_flops("cuda", seconds=2.0)
    rows.append(("bf16 matmul peak measured (8192^3, 2 s)", f"{peak / 1e12:.0f} TFLOP/s"))
    context_length = int(json.loads((Path(args.data) / "index.json").read_text())["context_length"])
    with tempfile.TemporaryDirectory() as scratch:
        for depth in [int(d) for d in args.depths.split(",")]:
            run_dir = Path(scratch) / f"depth-{depth}"
            result = train(TrainConfig(run_dir=str(run_dir), data=args.data, base_model=f"family:{depth}",
                                       init="random", device="cuda", batch_size=args.batch_size,
                                       budget_tokens=args.steps * args.batch_size * context_length,
                                       checkpoint_every=args.steps))
            lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            tokens_per_sec = statistics.median(m["tokens_per_sec"] for m in lines[5:])
            mfu = statistics.median(m["mfu"] for m in lines[5:])
            rows.append((f"simslm train on CUDA, depth {depth} ({result.parameters.total / 1e6:.1f}M params), "
                         f"batch {args.batch_size} x {context_length}, bf16 autocast, SDPA",
                         f"{tokens_per_sec:,.0f} tokens/s, MFU {100 * mfu:.1f}%, loss {lines[0]['loss']:.2f} -> "
                         f"{lines[-1]['loss']:.2f}, saved model {'ok' if (run_dir / 'model').exists() else 'MISSING'}"))
    tokens = args.batch_size * (context_length - 1)
    settings = [(True, "sdpa"), (False, "sdpa"), (True, "eager"), (False, "eager")]
    seconds: dict[tuple[bool, str], list[float]] = {s: [] for s in settings}
    for _ in range(2):  # alternate, so drift hits every setting alike
        for bf16, attention in settings:
            seconds[(bf16, attention)].append(step_seconds(args.compare_depth, args.data, bf16=bf16,
                                                           attention=attention, steps=15,
                                                           batch_size=args.batch_size))
    base = statistics.median(seconds[(True, "sdpa")])
    for (bf16, attention), values in seconds.items():
        median = statistics.median(values)
        rows.append((f"side by side, depth {args.compare_depth}: {'bf16 autocast' if bf16 else 'fp32 (TF32 off)'}, "
                     f"{attention} attention", f"{tokens / median:,.0f} tokens/s ({median / base:.2f}x the "
                                               f"bf16+SDPA step time)"))
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
