"""What `simslm train`'s check that packed documents stay apart (`train.build.documents_moved`) sees and costs, per
kernel.

    .venv/bin/python benchmarks/bench_documents_apart.py [--device cuda] [--kernels sdpa,eager,flex_attention]

For each model shape (one layer of a config shaped as the family's: the demo's width, SmolLM2-135M, Llama-3.2-1B,
Qwen2.5-7B) and each kernel, in the layout `train` gives that kernel and at the precision a run there takes: how far
packing moves a document's hidden states (0 up to rounding where the documents stay apart; a run is refused above
`train.build.PROBE_TOLERANCE`), and the wall time of the check, the first call's (a kernel's set-up, such as flex
attention's compile) and a later one's. Nothing is downloaded: the configs are written out here.
"""

from __future__ import annotations

import argparse
import time

SHAPES = {  # name -> (config class, its arguments): the attention as the family has it; the rest does not matter
    "demo d4": ("LlamaConfig", dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=8)),
    "SmolLM2-135M": ("LlamaConfig", dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3)),
    "Llama-3.2-1B": ("LlamaConfig", dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                                         rope_theta=5e5)),
    "Qwen2.5-7B": ("Qwen2Config", dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6)),
}


def main() -> None:
    import transformers

    from simslm.train.build import ONE_ROW_KERNELS, PROBE_TOLERANCE, attention_kernel, documents_moved, uses_bf16

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kernels", default="sdpa,eager", help="comma-separated; `auto` as `train` chooses it")
    args = parser.parse_args()
    bf16 = uses_bf16("auto", args.device)
    print(f"transformers {transformers.__version__}, {args.device}, {'bf16 autocast' if bf16 else 'fp32'}; "
          f"a run is refused above {PROBE_TOLERANCE}")
    print(f"{'shape':<14} {'kernel':<16} {'moved':>9} {'first call':>11} {'later call':>11}")
    for name, (class_name, arguments) in SHAPES.items():
        config = getattr(transformers, class_name)(vocab_size=64, intermediate_size=64, num_hidden_layers=1,
                                                   **arguments)
        for choice in args.kernels.split(","):
            kernel = attention_kernel(choice, args.device, bf16=bf16)
            timings = []
            for _ in range(2):
                started = time.perf_counter()
                moved = documents_moved(config, kernel, args.device, bf16, kernel in ONE_ROW_KERNELS)
                timings.append(time.perf_counter() - started)
            print(f"{name:<14} {kernel:<16} {moved:>9.2g} {timings[0] * 1e3:>9.0f} ms {timings[1] * 1e3:>8.0f} ms",
                  flush=True)


if __name__ == "__main__":
    main()
