"""Training throughput and MFU for several model sizes, and our loop vs a Hugging Face Trainer.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_train.py --depths 2,4,8 --steps 30 \
        [--compile [--compile-modes auto,default]] [--ceilings 1:16,2:16]

Data: TinyStories text through tok512, packed to 256 tokens. Each size trains for
`--steps` steps of batch 8 in fp32 on the CPU; tokens/s is the median over steps after
the first 3. MFU divides 6N x tokens/s by the fp32 matrix-multiply FLOP/s measured in the
same run. The Trainer comparison uses the same model, batches, optimiser settings and
schedule, alternating the runs, and reports the median step (after 3 warm-up steps) and
the whole loop (compiling included) of each, as ratios to the Trainer's.

Every training run is a fresh process of its own (spawned), so no contender inherits
another's state: simslm keeps freed memory for reuse (`jobs.keep_freed_memory`, glibc's
malloc settings, once per process), a plain Trainer runs on glibc's defaults ("HF Trainer,
freed memory kept" shows the Trainer with simslm's setting), and compiled kernels stay
with the run that compiled them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simslm import jobs
from simslm import model as model_lib
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.loader import PackedLoader
from simslm.sequences.vocabulary import Vocabulary
from simslm.train import TrainConfig, measure_peak_flops, train


def isolated(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a fresh interpreter (see the module's docstring)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def our_loop(data: str, depth: int, steps: int, run_dir: Path, compile_mode: str | None = None,
             aspect_ratio: int = model_lib.FAMILY_ASPECT_RATIO) -> tuple[float, float, float]:
    """Median step throughput and MFU after 3 warm-up steps, and whole-loop throughput (compiling included)."""
    train(TrainConfig(run_dir=str(run_dir), data=data, base_model=model_lib.family_source(depth, aspect_ratio),
                      init="random",
                      budget_tokens=steps * 8 * 256, batch_size=8, checkpoint_every=10 ** 9,
                      compile=compile_mode is not None, compile_mode=compile_mode or "auto"))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loop_seconds = sum(8 * 256 / m["tokens_per_sec"] for m in lines)
    return (statistics.median(m["tokens_per_sec"] for m in lines[3:]), statistics.median(m["mfu"] for m in lines[3:]),
            steps * 8 * 256 / loop_seconds)


def hf_trainer(data: str, depth: int, steps: int, scratch: Path, documents_apart: bool = False,
               keep_memory: bool = False) -> tuple[float, float]:
    """Median step throughput after 3 warm-up steps, and whole-loop throughput.

    `keep_memory`: with simslm's malloc settings (`jobs.keep_freed_memory`) instead of glibc's defaults.

    `documents_apart`: the rows' position ids go in too, so transformers keeps each packed document to itself
    as simslm does (slamkit's Trainer does the same through `DataCollatorWithFlattening`); a plain Trainer on
    packed rows attends across documents, which skips the mask and so costs less per step."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if keep_memory:
        jobs.keep_freed_memory()
    vocabulary = Vocabulary.load(Path(data) / "tokenizer")
    model = model_lib.build_family_model(depth, len(vocabulary), seed=0, context_length=256)
    loader = PackedLoader(data, 8)
    chunks = np.asarray(loader.chunks(0)).astype(np.int64)
    positions = np.asarray(loader.positions(0)).astype(np.int64) if documents_apart else None

    class Chunks(torch.utils.data.Dataset):
        def __len__(self):
            return len(chunks)

        def __getitem__(self, index):
            ids = torch.from_numpy(chunks[index])
            extra = {"position_ids": torch.from_numpy(positions[index])} if documents_apart else {}
            return {"input_ids": ids, "labels": ids, **extra}

    class LoopTimer(TrainerCallback):
        """Wall time of the training loop, from its start to its end (data loading included), and of each step."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.steps = time.perf_counter(), []

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.step_started)

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.started

    timer = LoopTimer()
    arguments = TrainingArguments(output_dir=str(scratch / "hf"), per_device_train_batch_size=8, max_steps=steps,
                                  learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=max(1, round(0.01 * steps)),
                                  max_grad_norm=0.5, report_to=[], save_strategy="no", logging_strategy="no",
                                  dataloader_num_workers=0, use_cpu=True, seed=0, disable_tqdm=True)
    Trainer(model=model, args=arguments, train_dataset=Chunks(), callbacks=[timer]).train()
    return 8 * 256 / statistics.median(timer.steps[3:]), steps * 8 * 256 / timer.seconds


def matmul_ceiling(depth: int, vocab_size: int, aspect_ratio: int, peak: float, tokens: int = 8 * 256,
                   seconds: float = 1.0) -> float:
    """The most MFU a training step of this family member could reach on this machine: its matrix products
    alone (forward, and backward to inputs and to weights, for every linear layer and the tied output layer),
    timed back to back with nothing else in the step, as a fraction of the measured peak. Attention, norms,
    activations, the loss and the optimiser only add time to a real step."""
    import torch

    config = model_lib.family_config(depth, vocab_size, aspect_ratio=aspect_ratio)
    width, ffn = config["hidden_size"], config["intermediate_size"]
    # Per layer: q, k, v, o (as many key-value heads as query heads), gate and up, down; then the output layer.
    shapes = depth * ([(width, width)] * 4 + [(width, ffn)] * 2 + [(ffn, width)]) + [(width, vocab_size)]
    products = []
    for inputs, outputs in shapes:
        x, w, grad = torch.randn(tokens, inputs), torch.randn(inputs, outputs), torch.randn(tokens, outputs)
        products += [(x, w), (grad, w.t()), (x.t(), grad)]
    flops = sum(2 * tokens * inputs * outputs for inputs, outputs in shapes) * 3
    for a, b in products:  # warm up
        a @ b
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for a, b in products:
            a @ b
        repeats += 1
    return flops * repeats / (time.perf_counter() - started) / peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,4,8")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compare-depths", default="2,4")
    parser.add_argument("--compile", action="store_true", help="also race simslm train --compile")
    parser.add_argument("--compile-modes", default="auto",
                        help="with --compile: the --compile-mode values to race, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ceilings", default="",
                        help="family members DEPTH:RATIO,... whose matrix-product MFU ceiling to measure (the demo's: "
                             "1:16,2:16,3:16,4:16)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = str(scratch / "data")
        build_sequences(BuildConfig(out=data, streams=("text",), text_corpus="tinystories-sample",
                                                        context_length=256))
        vocab_size = len(Vocabulary.load(Path(data) / "tokenizer"))
        peak = measure_peak_flops("cpu", seconds=2.0)
        rows = [("fp32 matmul peak measured (1024^3, 2 s)", f"{peak / 1e9:.1f} GFLOP/s")]
        for member in args.depths.split(","):
            depth, ratio = model_lib.parse_family_source(member)
            parameters = model_lib.family_parameters(depth, vocab_size, ratio)
            for mode in [None, *(args.compile_modes.split(",") if args.compile else [])]:
                tokens_per_sec, mfu, _ = isolated(our_loop, data, depth, args.steps, scratch / f"ours-{member}-{mode}",
                                                  mode, aspect_ratio=ratio)
                rows.append((f"simslm train{' --compile' if mode else ''}, depth {depth}, width {depth * ratio} "
                             f"({parameters / 1e3:,.0f}k params), batch 8 x 256, fp32 CPU",
                             f"{tokens_per_sec:,.0f} tokens/s, MFU {100 * mfu:.1f}%"))
        for member in filter(None, args.ceilings.split(",")):
            depth, ratio = model_lib.parse_family_source(member)
            parameters = model_lib.family_parameters(depth, vocab_size, ratio)
            ceiling = matmul_ceiling(depth, vocab_size, ratio, peak)
            rows.append((f"MFU ceiling of depth {depth}, width {depth * ratio} ({parameters / 1e3:,.0f}k params): its "
                         f"matrix products alone, batch 8 x 256", f"{100 * ceiling:.1f}%"))
        # Alternate the contenders so drift in the machine's speed hits all alike; compare whole training loops
        # (first step to last, data loading and compiling included) and median steps, on the same model and data.
        for depth in [int(d) for d in args.compare_depths.split(",")]:
            runs: dict[str, list[tuple[float, float]]] = {"simslm": [], "HF Trainer": [],
                                                          "HF Trainer, documents apart": [],
                                                          "HF Trainer, freed memory kept": []}
            modes = args.compile_modes.split(",") if args.compile else []
            for mode in modes:
                runs[f"simslm --compile --compile-mode {mode}"] = []
            for repeat in range(args.repeats):
                runs["simslm"].append(isolated(our_loop, data, depth, args.steps, scratch / f"a-{depth}-{repeat}")[0::2])
                for mode in modes:
                    runs[f"simslm --compile --compile-mode {mode}"].append(
                        isolated(our_loop, data, depth, args.steps, scratch / f"c-{depth}-{mode}-{repeat}", mode)[0::2])
                runs["HF Trainer"].append(isolated(hf_trainer, data, depth, args.steps, scratch))
                runs["HF Trainer, documents apart"].append(isolated(hf_trainer, data, depth, args.steps, scratch, True))
                runs["HF Trainer, freed memory kept"].append(isolated(hf_trainer, data, depth, args.steps, scratch,
                                                                      keep_memory=True))
            hf_step = statistics.median(step for step, _ in runs["HF Trainer"])
            hf_loop = statistics.median(loop for _, loop in runs["HF Trainer"])
            for name, values in runs.items():
                step = statistics.median(v[0] for v in values)
                loop = statistics.median(v[1] for v in values)
                rows.append((f"depth {depth}, {args.steps} steps, {name} (median of {args.repeats}, alternated)",
                             f"step {step:,.0f} tokens/s ({step / hf_step:.2f}x HF), whole loop {loop:,.0f} tokens/s "
                             f"({loop / hf_loop:.2f}x HF)"))
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
