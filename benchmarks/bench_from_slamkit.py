"""`simslm model from-slamkit` at a real model's shape: time, peak memory and size on disk, against an earlier commit.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_from_slamkit.py [--before 2d5e31d]

The checkpoint is laid out as slamkit's trainer saves a UnitLM of Qwen2.5-0.5B's shape (24 layers, width 896,
151,665 text tokens plus 500 units and `<speech>`, `<text>`, tied embeddings), with random bf16 weights under
`lm.`: 0.94 GB. Each contender converts it in a process of its own (`python -m simslm model from-slamkit`),
today's code and the code of `--before` (a `git worktree` of that commit, removed afterwards), alternating,
`--repeats` times each; wall time and the process's peak resident memory are reported, with the converted
folder's size and the largest difference between the two conversions' weights (read in fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def write_checkpoint(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151_665 + 502, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                         tie_word_embeddings=True, rope_theta=1e6)
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in Qwen2ForCausalLM(config).state_dict().items()
                  if name != "lm_head.weight"}
    generator = torch.Generator().manual_seed(0)
    folder.mkdir()
    save_file({f"lm.{name}": (0.02 * torch.randn(shape, generator=generator)).to(torch.bfloat16)
               for name, shape in shapes.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({
        "model_type": "speech_language_model", "architectures": ["UnitLM"], "vocab_size": config.vocab_size,
        "twist_init": True, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "base_config": {**config.to_dict(), "torch_dtype": "bfloat16"}}))


def convert(source: Path, checkpoint: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak resident GiB of one conversion in a process of its own."""
    # VmHWM, the peak of this process's own memory: ru_maxrss starts a child at its parent's size when it was
    # forked (Linux carries the forked copy's peak through exec), and this parent has held the weights.
    script = ("import sys; from simslm.cli import main; code = main(sys.argv[1:]); "
              "print('PEAK', *[line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')]); "
              "sys.exit(code)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, "model", "from-slamkit", "--checkpoint", str(checkpoint),
                           "--out", str(out)], env={**os.environ, "PYTHONPATH": str(source)},
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    peak_kib = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK")))
    return seconds, peak_kib / 2**20


def largest_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert first.keys() == second.keys(), "the two conversions hold other weights"
    return max((first[name].float() - second[name].float()).abs().max().item() for name in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="2d5e31d", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        write_checkpoint(scratch / "unitlm")
        worktree = scratch / "before"
        subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "-q", "--detach", str(worktree),
                        args.before], check=True)
        try:
            contenders = {"before": worktree / "src", "now": REPOSITORY / "src"}
            results = {name: [] for name in contenders}
            for repeat in range(args.repeats):
                for name, source in contenders.items():
                    out = scratch / f"{name}-{repeat}"
                    results[name].append(convert(source, scratch / "unitlm", out))
            print(f"checkpoint: {sum(f.stat().st_size for f in (scratch / 'unitlm').iterdir()) / 1e9:.2f} GB")
            print("| code | seconds | peak memory (GiB) | converted folder (GB) |")
            print("| --- | --- | --- | --- |")
            for name in contenders:
                size = sum(f.stat().st_size for f in (scratch / f"{name}-0").iterdir()) / 1e9
                print(f"| {name} ({args.before if name == 'before' else 'working tree'}) | "
                      f"{' / '.join(f'{s:.1f}' for s, _ in results[name])} | "
                      f"{' / '.join(f'{m:.2f}' for _, m in results[name])} | {size:.2f} |")
            print(f"largest weight difference, before vs now: "
                  f"{largest_difference(scratch / 'before-0', scratch / 'now-0'):.1e}")
        finally:
            subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(worktree)],
                           check=True)


if __name__ == "__main__":
    main()
