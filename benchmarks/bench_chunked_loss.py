"""Peak memory and time of one training step with the cross-entropy in chunks, against all at once.

    .venv/bin/python benchmarks/bench_chunked_loss.py --vocab 151936 --tokens 2048 --chunks 0,1024,256

A random Qwen2 of hidden size 64 and 2 layers with Qwen2.5's vocabulary (151,936 rows), one
sequence of `--tokens` tokens, forward and backward in fp32 on the CPU, through the same
`train.loss._token_losses` the training loop calls. Each setting runs in its own process (peak
RSS is per process), alternating, `--repeats` times; the table gives the median of the
peak RSS growth over the step and of the step time. Small hidden sizes make the logits
dominate, which is the case the option is for (at 2048 tokens a full fp32 logits tensor
is 2048 x 151,936 x 4 bytes = 1.24 GB, and its gradient as much again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time


def one_step(vocab: int, tokens: int, chunk: int) -> dict[str, float]:
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from simslm.train.loss import _token_losses, chunked_loss_module

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=tokens,
                                         tie_word_embeddings=False))
    core = chunked_loss_module(model, chunk) if chunk else model

    class Vocab:  # what _token_losses reads of a Vocabulary
        unit_offset, num_units, speech_id, text_id, pad_id = vocab - 600, 500, vocab - 2, vocab - 3, vocab - 1

        class tokenizer:
            all_special_ids: list[int] = []

    ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab - 3, (1, tokens + 1)))
    positions = torch.arange(tokens + 1).unsqueeze(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    loss, _ = _token_losses(core, ids, positions, Vocab, contextlib.nullcontext(), chunked=bool(chunk))
    loss.backward()
    seconds = time.perf_counter() - started
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"loss": float(loss) / tokens, "seconds": seconds, "peak_growth_mb": grown_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--chunks", default="0,1024,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process: one setting
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_step(args.vocab, args.tokens, args.one)))
        return
    chunks = [int(c) for c in args.chunks.split(",")]
    results: dict[int, list[dict[str, float]]] = {c: [] for c in chunks}
    for _ in range(args.repeats):
        for chunk in chunks:  # alternating, each in a fresh process
            out = subprocess.run([sys.executable, __file__, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
                                  "--one", str(chunk)], capture_output=True, text=True, check=True).stdout
            results[chunk].append(json.loads(out.strip().splitlines()[-1]))
    print(f"vocab {args.vocab}, {args.tokens} tokens, fp32 CPU, median of {args.repeats}")
    print(f"{'chunk':>6} {'peak growth MB':>15} {'step s':>8} {'loss':>10}")
    for chunk in chunks:
        rows = results[chunk]
        print(f"{chunk or 'all':>6} {statistics.median(r['peak_growth_mb'] for r in rows):>15.0f} "
              f"{statistics.median(r['seconds'] for r in rows):>8.2f} {rows[0]['loss']:>10.6f}")


if __name__ == "__main__":
    main()
