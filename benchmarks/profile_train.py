"""Where a training step's time goes: `simslm train` on one family member under torch.profiler.

    # the GPU lease (benchmarks/gpu_lease.sh runs it with these options): 8 layers of width 512, about 25M
    # parameters besides the embedding, near the size of the 29M step that took 50 ms on an H200
    PYTHONPATH=src python3 benchmarks/profile_train.py --device cuda --data .gpu/check --member 8:64 \
        --batch-size 16 --context-length 1024 --steps 30
    # here, to check the script (CPU activity only)
    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/profile_train.py --member 1:16 --steps 30

The run trains through `simslm.train.loop.train` (the code path of every run, bf16 autocast on CUDA), with the
profiler on for the whole run; the tables list the operators by their own host time and, on CUDA, by their
own GPU time, with the calls per step. A step's wall time against the GPU's busy time per step says how much
of it the host's launching costs (the GPU idles while Python launches kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from simslm import model as model_lib
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.train.loop import train
from simslm.train.peak import PEAK_FLOPS_VARIABLE, measure_peak_flops
from simslm.train.plan import TrainConfig


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default="", help="a folder with stories.jsonl and tokenizer/ (gpu_check.sh "
                                                   "prepare's); default: the mirror's TinyStories and stories260K")
    parser.add_argument("--member", default="1:16", help="family member DEPTH:WIDTH_PER_LAYER")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="train --compile (its mode auto); the compile's own "
                                                               "first steps are in the tables too")
    parser.add_argument("--precision", default="auto", help="train --precision: auto, fp32 or bf16")
    args = parser.parse_args()
    corpus, tokenizer = ((str(Path(args.data) / "stories.jsonl"), str(Path(args.data) / "tokenizer")) if args.data
                         else ("tinystories-sample", "stories260K"))
    depth, ratio = model_lib.parse_family_source(args.member)
    on_cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as scratch:
        data = str(Path(scratch) / "data")
        build_sequences(BuildConfig(out=data, streams=("text",), text_corpus=corpus, tokenizer=tokenizer,
                                    context_length=args.context_length))
        run_dir = Path(scratch) / "run"
        # Measured here, outside the profile (its matrix products would fill the tables), and given to the run.
        os.environ[PEAK_FLOPS_VARIABLE] = repr(measure_peak_flops("cuda" if on_cuda else "cpu"))
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
        with profile(activities=activities) as profiler:
            train(TrainConfig(run_dir=str(run_dir), data=data, base_model=model_lib.family_source(depth, ratio),
                              init="random", device=args.device, batch_size=args.batch_size,
                              budget_tokens=args.steps * args.batch_size * args.context_length,
                              checkpoint_every=10 ** 9, compile=args.compile,
                              precision=args.precision))
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step = args.batch_size * args.context_length / statistics.median(m["tokens_per_sec"] for m in lines[3:])
    mfu = statistics.median(m["mfu"] for m in lines[3:])
    events = profiler.key_averages()
    print(f"family member {args.member} on {args.device} ({args.precision}), batch {args.batch_size} x "
          f"{args.context_length}, {len(lines)} steps: median step {1e3 * step:.1f} ms, MFU {100 * mfu:.1f}% (profiler on)")
    if on_cuda:
        busy = sum(event.self_device_time_total for event in events) / 1e3 / len(lines)  # microseconds -> ms
        print(f"GPU busy {busy:.1f} ms per step (kernels' own time, the whole run over its steps)")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
