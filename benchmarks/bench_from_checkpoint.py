"""`simslm model from-checkpoint` at a real model's shape: time and peak memory against the weights' size.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_from_checkpoint.py [--repeats 2]

A run's checkpoint is laid out as `simslm train --precision bf16-weights` saves one of Qwen2.5-0.5B's shape (24
layers, width 896, 152,167 rows, tied embeddings; random bf16 weights, 0.99 GB), once whole (`model.safetensors`)
and once sharded (`torch.distributed.checkpoint`, as `--checkpoint-format sharded` writes it, here by one process),
in a run folder whose data folder holds a vocabulary of tok512 and 500 units. Each format is made a model folder in
a process of its own (`python -m simslm model from-checkpoint`), alternating, `--repeats` times each; wall time and
the process's peak resident memory are reported, and the model folder's weights are checked equal to the
checkpoint's, bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def write_run(run: Path) -> dict:
    """A run folder with one whole and one sharded checkpoint of the same weights; returns the weights."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from simslm.sequences.vocabulary import Vocabulary

    data = run.parent / "data"
    Vocabulary.build("stories260K", 500).save(data / "tokenizer")
    (data / "index.json").write_text(json.dumps({"config": {}}))
    config = Qwen2Config(vocab_size=152_167, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                         tie_word_embeddings=True, rope_theta=1e6)
    with torch.device("meta"):
        skeleton = Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    weights = {name: (0.02 * torch.randn(tensor.shape, generator=generator)).to(torch.bfloat16)
               for name, tensor in skeleton.state_dict().items() if name != "lm_head.weight"}
    buffers = {name: torch.zeros(buffer.shape) for name, buffer in skeleton.named_buffers()}
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_dir": str(run), "data": str(data)}))
    for name, sharded in (("step-00000100", False), ("step-00000200", True)):
        folder = run / "checkpoints" / name
        folder.mkdir(parents=True)
        if sharded:
            dcp.save({"model": weights}, checkpoint_id=str(folder / "sharded"), no_dist=True)
            files = [f"sharded/{path.name}" for path in (folder / "sharded").iterdir()]
        else:
            save_file(weights, str(folder / "model.safetensors"))
            files = ["model.safetensors"]
        config.to_json_file(folder / "model_config.json", use_diff=False)
        save_file(buffers, str(folder / "buffers.safetensors"))
        (folder / "state.json").write_text(json.dumps({"step": int(name[5:]), "loader": {}, "tokens_seen": 0}))
        files += ["model_config.json", "buffers.safetensors", "state.json"]
        (folder / "checksums.json").write_text(json.dumps(
            {file: hashlib.sha256((folder / file).read_bytes()).hexdigest() for file in files}))
    return weights


def export(checkpoint: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak resident GiB of one export in a process of its own."""
    # VmHWM, the peak of this process's own memory: ru_maxrss starts a child at its parent's size when it was
    # forked (Linux carries the forked copy's peak through exec), and this parent has held the weights.
    script = ("import sys; from simslm.cli import main; code = main(sys.argv[1:]); "
              "print('PEAK', *[line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')]); "
              "sys.exit(code)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, "model", "from-checkpoint", str(checkpoint), str(out)],
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    return seconds, int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK"))) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        weights = write_run(run)
        size = sum(tensor.numel() * tensor.element_size() for tensor in weights.values()) / 2**30
        bare = subprocess.run([sys.executable, "-c", "import simslm.cli, simslm.train.loop, transformers, torch; print("
                               "*[line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')])"],
                              capture_output=True, text=True, check=True)
        print(f"weights {size:.2f} GiB (bf16); a process with simslm's imports alone peaks at "
              f"{int(bare.stdout) / 2**20:.2f} GiB")
        for repeat in range(args.repeats):
            for name, label in (("step-00000100", "whole"), ("step-00000200", "sharded")):
                out = Path(scratch) / f"{label}-{repeat}"
                seconds, peak = export(run / "checkpoints" / name, out)
                exported = load_file(str(out / "model.safetensors"))
                same = exported.keys() == weights.keys() and all(torch.equal(exported[key], weights[key])
                                                                 for key in weights)
                print(f"{label:8} {seconds:6.1f} s  peak {peak:.2f} GiB  weights equal: {same}")


if __name__ == "__main__":
    main()
