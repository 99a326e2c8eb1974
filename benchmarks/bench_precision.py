"""bf16 against fp32 on a CPU: `simslm train` at each precision, eager and compiled, and SDPA's kernel alone.

    SIMSLM_MIRROR=../shared/data SIMSLM_QUIET=1 .venv/bin/python benchmarks/bench_precision.py --depths 2,4 --steps 40
    SIMSLM_MIRROR=../shared/data SIMSLM_QUIET=1 .venv/bin/python benchmarks/bench_precision.py --depths 8 --steps 30
    .venv/bin/python benchmarks/bench_precision.py --depths '' --kernels 4x32,4x16
    # the demo's shapes (aspect ratio 16, batch 2), eager only:
    SIMSLM_MIRROR=../shared/data SIMSLM_QUIET=1 .venv/bin/python benchmarks/bench_precision.py --depths 1,2,4 \
        --steps 150 --aspect-ratio 16 --batch-size 2 --modes eager --repeats 3

Training: a family member per depth on TinyStories text (context 256), each run its own process (bench_train's
`isolated` and `our_loop`), the contenders alternated `--repeats` times; the median step after 3 warm-up steps.
bf16 runs take `--attention auto`, which is `sdpa_fp32` there.

Kernels (`--kernels HEADSxDIMS,...`): SDPA forward and backward at batch 8 x 256 positions on bf16 inputs and
gradients, in bf16 and in fp32 (the casts to and from fp32 included, as `sdpa_fp32` pays them), with a dense
document mask (packed documents of 60-200 tokens) and plain causal; the median of 20 after 3 warm-ups, 3 rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import Shape, isolated, our_loop  # noqa: E402

from simslm.sequences.build import BuildConfig, build_sequences  # noqa: E402


def kernel_times(heads: int, dims: int, rounds: int = 3) -> list[tuple[str, float, float]]:
    """(mask, bf16 ms, fp32 ms) per round and mask."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    batch, positions = 8, 256
    mask = torch.zeros(batch, 1, positions, positions, dtype=torch.bool)
    for row in range(batch):
        start = 0
        while start < positions:
            length = min(int(torch.randint(60, 200, ())), positions - start)
            mask[row, 0, start:start + length, start:start + length] = torch.tril(torch.ones(length, length,
                                                                                             dtype=torch.bool))
            start += length

    def median_ms(dtype, masked: bool) -> float:
        q, k, v = (torch.randn(batch, heads, positions, dims, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        gradient = torch.randn(batch, heads, positions, dims, dtype=torch.bfloat16)

        def once():
            output = F.scaled_dot_product_attention(*(t.to(dtype) for t in (q, k, v)),
                                                    attn_mask=mask if masked else None, is_causal=not masked)
            output.to(torch.bfloat16).backward(gradient)

        for _ in range(3):
            once()
        times = []
        for _ in range(20):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    return [(("documents" if masked else "causal"), median_ms(torch.bfloat16, masked), median_ms(torch.float32, masked))
            for _ in range(rounds) for masked in (True, False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,4")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="eager,compile", help="eager and/or compile (autotuned)")
    parser.add_argument("--aspect-ratio", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kernels", default="", help="HEADSxDIMS,... of SDPA to time alone")
    args = parser.parse_args()
    modes = [None if mode == "eager" else "auto" for mode in args.modes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = str(scratch / "data")
        if args.depths:
            build_sequences(BuildConfig(out=data, streams=("text",), text_corpus="tinystories-sample",
                                        tokenizer="stories260K", context_length=256))
        for depth in [int(d) for d in filter(None, args.depths.split(","))]:
            runs: dict[tuple[str, str], list[float]] = {}
            for repeat in range(args.repeats):
                for precision in ("fp32", "bf16"):
                    for mode in modes:
                        key = (precision, "compile" if mode else "eager")
                        step, _, _ = isolated(our_loop, data, depth, args.steps, scratch / f"{depth}-{key}-{repeat}",
                                              mode, aspect_ratio=args.aspect_ratio,
                                              shape=Shape(precision=precision, batch_size=args.batch_size))
                        runs.setdefault(key, []).append(step)
            base = next(iter(runs))  # fp32, the first mode
            for (precision, mode), steps in runs.items():
                median = statistics.median(steps)
                ratio = median / statistics.median(runs[base])
                print(f"depth {depth}, {precision} {mode}: median step {median:,.0f} tokens/s ({ratio:.2f}x "
                      f"fp32 {base[1]}), runs {[round(s) for s in steps]}", flush=True)
    for shape in filter(None, args.kernels.split(",")):
        heads, dims = (int(x) for x in shape.split("x"))
        for mask, bf16, fp32 in kernel_times(heads, dims):
            print(f"SDPA 8 x {heads} x 256 x {dims}, {mask}: bf16 {bf16:.2f} ms, fp32 {fp32:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
