"""Each process's peak memory in an FSDP run of two processes (torchrun over gloo), started and then resumed.

    .venv/bin/python benchmarks/bench_fsdp_memory.py --data DEMO/sequences/interleaved --width 1024 --layers 12 \
        --compare /tmp/old/src

Makes a random Llama of `--width` x `--layers` (seeded) with the data's own tokenizer saved beside it, then trains it
under `--fsdp` for 4 steps of one row (a checkpoint every 2), removes the result and the last checkpoint, and
trains again, which resumes from step 2. Each rank reports its peak resident memory before its first step (VmHWM
then: loading, sharding, resuming) and in all (`ru_maxrss` at exit), and the seconds from its start to its first
step. On the CPU the training state itself is in
the host's memory; on GPUs the set-up's is the host's peak.
`--compare SRC` runs the same with another simslm source tree (say a worktree of an older commit) on PYTHONPATH,
alternating the two, `--repeats` times each. `--formats full,sharded` runs each contender with each
`--checkpoint-format`, alternated likewise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import atexit, os, resource, sys, time
started = time.perf_counter()
import simslm.train.loop
from simslm.cli import main

set_up = []
learning_rate = simslm.train.loop.learning_rate


def first_step(*args, **kwargs):  # called as each step starts: the peak before the first is the set-up's
    if not set_up:
        set_up.append(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
        set_up.append(time.perf_counter() - started)
    return learning_rate(*args, **kwargs)


def report():
    with open(sys.argv[1], "a") as handle:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        handle.write(f"{os.environ['RANK']} {set_up[0] / 1e6:.3f} {peak / 1e6:.3f} {set_up[1]:.2f}\\n")


simslm.train.loop.learning_rate = first_step
atexit.register(report)
sys.exit(main(sys.argv[2:]))
"""


def make_model(folder: Path, data: Path, width: int, layers: int) -> int:
    """A seeded random Llama with the data's text tokenizer; its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # The text tokenizer the data was built with (its tokenizer/ folder holds the units too).
    tokenizer = AutoTokenizer.from_pretrained(json.loads((data / "index.json").read_text())["config"]["tokenizer"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                                         num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                                         max_position_embeddings=4096))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def run(source: str, work: Path, model: Path, data: Path, label: str, checkpoint_format: str = "full"
        ) -> dict[str, list[float]]:
    """Peak RSS in GB and the seconds to the first step, fresh and resumed: rank 0's RSS before its first step and
    in all and its seconds, then rank 1's."""
    run_dir = work / f"run-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    context = json.loads((data / "index.json").read_text())["context_length"]
    (work / "config.json").write_text(json.dumps({
        "run_dir": str(run_dir), "data": str(data), "base_model": str(model), "budget_tokens": 4 * 2 * context,
        "batch_size": 1, "checkpoint_every": 2, "num_checkpoints_kept": 5, "fsdp": True,
        **({"checkpoint_format": checkpoint_format} if checkpoint_format != "full" else {})}))
    peaks = {}
    for phase in ("fresh", "resumed"):
        log = work / f"{label}-{phase}.log"
        log.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": source}
        completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                    "2", str(work / "probe.py"), str(log), "train", "--config",
                                    str(work / "config.json")], env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            sys.exit(completed.stderr[-3000:])
        ranks = {line.split()[0]: [float(value) for value in line.split()[1:]] for line in log.read_text().splitlines()}
        peaks[phase] = ranks["0"] + ranks["1"]
        if phase == "fresh":
            for name in ("result.json", "model", "checkpoints/step-00000004"):
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="a sequences folder")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--compare", help="another simslm source tree (its src folder)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--formats", default="full", help="comma-separated --checkpoint-format values to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        (work / "probe.py").write_text(PROBE)
        parameters = make_model(work / "model", args.data, args.width, args.layers)
        print(f"random Llama, {parameters / 1e6:.0f}M parameters ({parameters * 4 / 1e9:.2f} GB in fp32); "
              f"peak RSS in GB of rank 0 / rank 1, before the first step [in all], and seconds from start to the "
              f"first step")
        sources = [("this", str(REPO / "src"))] + ([("compare", args.compare)] if args.compare else [])
        contenders = [(f"{label}/{form}" if "," in args.formats else label, source, form)
                      for label, source in sources for form in args.formats.split(",")]
        for repeat in range(args.repeats):
            for label, source, form in contenders if repeat % 2 == 0 else contenders[::-1]:
                peaks = run(source, work, work / "model", args.data, label.replace("/", "-"), form)
                print(f"{label:14s}" + "".join(f"   {phase} {p[0]:.2f} / {p[3]:.2f} [{p[1]:.2f} / {p[4]:.2f}] "
                                              f"{p[2]:.1f} / {p[5]:.1f} s"
                                              for phase, p in peaks.items()), flush=True)


if __name__ == "__main__":
    main()
