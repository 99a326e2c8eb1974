"""The MFU denominator: the matrix-product FLOP/s this process achieves on its device (fp32, or bf16), measured,
or given once for many runs by the environment.
"""

from __future__ import annotations

import math
import os
import sys
import time

# The MFU denominator in FLOP/s, when measured once for many runs (the local sweep executor sets it).
PEAK_FLOPS_VARIABLE = "SIMSLM_PEAK_FLOPS"


# The bf16 products' peak, for a CPU run in bf16 (`PEAK_FLOPS_VARIABLE` holds fp32's): a sweep measures it once
# for all its bf16 runs, as it measures fp32's.
PEAK_FLOPS_BF16_VARIABLE = "SIMSLM_PEAK_FLOPS_BF16"


def given_peak_flops(variable: str = PEAK_FLOPS_VARIABLE) -> float | None:
    """The peak FLOP/s in the environment `variable`, if set."""
    value = os.environ.get(variable)
    if value is None:
        return None
    try:
        peak = float(value)
    except ValueError:
        peak = math.nan
    if not 0 < peak < math.inf:
        raise ValueError(f"{variable}={value}: not a positive number of FLOP/s")
    return peak


def measure_peak_flops(device: str, size: int | None = None, seconds: float = 0.5, bf16: bool | None = None) -> float:
    """Achieved fp32 (bf16 on CUDA, or with `bf16`) matrix-multiply FLOP/s on this device: the MFU denominator.

    Timed after a warm-up of half as long: a GPU's clocks climb from idle under load, and the first products
    pay for library setup. On the lent H200 this gives 673-681 TFLOP/s, as the cold measurement did (670),
    against the 769-798 of the device notes (docs/LOG.md 2026-12-04, ninth session): MFUs here are against
    what this process achieves, not against a datasheet."""
    import torch

    on_cuda = str(device).startswith("cuda")
    dtype = torch.bfloat16 if (on_cuda if bf16 is None else bf16) else torch.float32
    # 1024^3 saturates two CPU cores but leaves an H100 at a fraction of its peak (docs/LOG.md).
    size = size or (8192 if on_cuda else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    synchronize = torch.cuda.synchronize if on_cuda else (lambda: None)
    # On a GPU, rounds of 10, each waited for: the host never queues far ahead of the GPU. On a CPU, a product is
    # done when it returns, and one at a time: a CPU without native bf16 takes seconds a product (1.3-2.5 s on the
    # 2026-12-07 machine), and rounds of 10 made each bf16 run on such a CPU start with 26-51 s of measuring
    # (docs/BENCHMARKS.md, benchmarks/bench_peak_flops.py).
    round_size = 10 if on_cuda else 1

    def products_for(duration: float) -> tuple[int, float]:
        count, started = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - started < duration:
            for _ in range(round_size):
                a @ b
            synchronize()
            count += round_size
        return count, time.perf_counter() - started

    products_for(seconds / 2)
    count, elapsed = products_for(seconds)
    return 2 * size ** 3 * count / elapsed


def warn_if_slow_bf16(bf16_flops: float, fp32_flops: float) -> None:
    """`--precision bf16` on a CPU whose bf16 products are slower than its fp32 ones: said once, trained as asked."""
    if bf16_flops < fp32_flops:
        print(f"simslm train: warning: --precision bf16: this CPU's bf16 matrix products run at "
              f"{bf16_flops / 1e9:.1f} GFLOP/s against {fp32_flops / 1e9:.1f} in fp32 (no native bf16): "
              f"--precision fp32 trains faster here", file=sys.stderr, flush=True)

