"""Training throughput and MFU for several model sizes, and our loop vs a Hugging Face Trainer.

    SIMSLM_MIRROR=../shared/data .venv/bin/python benchmarks/bench_train.py --depths 2,4,8 --steps 30 \
        [--compile [--compile-modes auto,default]] [--ceilings 1:16,2:16]
    # on a CPU with native bf16 products: both sides in bf16, or simslm also in bf16 beside the fp32 Trainer
    ... --depths '' --compare-depths 2,4 --steps 40 --compile --precision bf16 | --also-precision bf16
    # slamkit's recipe, bf16 weights (no fp32 copy, no autocast casts), the Trainer given the model in bf16 too:
    ... --precision bf16-weights | --also-precision bf16-weights [--options-compiled-only]
    # issue 17's GPU target, on the device machine (`benchmarks/gpu_lease.sh` runs this race there, with the
    # options it uses; `benchmarks/gpu_lease.sh prepare` made .gpu/check here):
    PYTHONPATH=src python3 benchmarks/bench_train.py --device cuda --text-corpus .gpu/check/stories.jsonl \
        --tokenizer .gpu/check/tokenizer --context-length 1024 --batch-size 16 --depths 15:64 \
        --compare-depths 15:64 --steps 40 --repeats 2 --compile [--attentions flex_attention] [--trainers plain]

Data: TinyStories text through tok512, packed to `--context-length` tokens (256). Each size
trains for `--steps` steps of `--batch-size` rows (8), in fp32 on the CPU or with bf16 autocast
on CUDA (as `simslm train` does; the Trainer gets `bf16=True`), or as `--precision` says; tokens/s is
the median over steps after the first 3. MFU divides 6N x tokens/s by the matrix-multiply FLOP/s measured in
the same run (fp32 1024^3 on the CPU, bf16 8192^3 on CUDA). Depth 15 at width 64 per layer is
about 170M parameters, the issue's GPU size. The Trainer comparison uses the same model, batches, optimiser settings and
schedule, alternating the runs, and reports the median step (after 3 warm-up steps) and
the whole loop (compiling included) of each, as ratios to the Trainer's.

Every training run is a fresh process of its own (spawned), so no contender inherits
another's state: simslm keeps freed memory for reuse (`machine.keep_freed_memory`, glibc's
malloc settings, once per process), a plain Trainer runs on glibc's defaults ("HF Trainer,
freed memory kept" shows the Trainer with simslm's setting), and compiled kernels stay
with the run that compiled them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simslm import machine
from simslm import model as model_lib
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.loader import PackedLoader
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.build import uses_bf16, weights_to
from simslm.train.loop import train
from simslm.train.peak import measure_peak_flops
from simslm.train.plan import TrainConfig


def isolated(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a fresh interpreter (see the module's docstring)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


@dataclass(frozen=True)
class Shape:
    """Where and on what every contender trains."""

    device: str = "cpu"
    batch_size: int = 8
    context_length: int = 256
    precision: str = "auto"  # simslm train's --precision; the Trainer gets bf16=True where it means bf16, and
    # with bf16-weights the model in bf16 (slamkit's `torch_dtype: bfloat16`)

    @property
    def bf16(self) -> bool:
        return uses_bf16(self.precision, self.device)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.context_length


def our_loop(data: str, depth: int, steps: int, run_dir: Path, compile_mode: str | None = None,
             aspect_ratio: int = model_lib.FAMILY_ASPECT_RATIO, shape: Shape = Shape(),
             attention: str = "auto") -> tuple[float, float, float]:
    """Median step throughput and MFU after 3 warm-up steps, and whole-loop throughput (compiling included)."""
    train(TrainConfig(run_dir=str(run_dir), data=data, base_model=model_lib.family_source(depth, aspect_ratio),
                      init="random", device=shape.device, attention=attention, precision=shape.precision,
                      budget_tokens=steps * shape.tokens, batch_size=shape.batch_size, checkpoint_every=10 ** 9,
                      compile=compile_mode is not None, compile_mode=compile_mode or "auto"))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loop_seconds = sum(shape.tokens / m["tokens_per_sec"] for m in lines)
    return (statistics.median(m["tokens_per_sec"] for m in lines[3:]), statistics.median(m["mfu"] for m in lines[3:]),
            steps * shape.tokens / loop_seconds)


def hf_trainer(data: str, depth: int, steps: int, scratch: Path, documents_apart: bool = False,
               keep_memory: bool = False, aspect_ratio: int = model_lib.FAMILY_ASPECT_RATIO,
               shape: Shape = Shape()) -> tuple[float, float]:
    """Median step throughput after 3 warm-up steps, and whole-loop throughput.

    `keep_memory`: with simslm's malloc settings (`machine.keep_freed_memory`) instead of glibc's defaults.

    `documents_apart`: the rows' position ids go in too, so transformers keeps each packed document to itself
    as simslm does (slamkit's Trainer does the same through `DataCollatorWithFlattening`); a plain Trainer on
    packed rows attends across documents, which skips the mask and so costs less per step."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if keep_memory:
        machine.keep_freed_memory()
    vocabulary = Vocabulary.load(Path(data) / "tokenizer")
    model = model_lib.build_family_model(depth, len(vocabulary), seed=0, context_length=shape.context_length,
                                         aspect_ratio=aspect_ratio)
    if shape.precision == "bf16-weights":  # trained as loaded, as slamkit's Trainer trains its bf16 model
        weights_to(model, torch.bfloat16)
    loader = PackedLoader(data, shape.batch_size)
    on_cuda = shape.device.startswith("cuda")
    # CUDA runs ahead of the host: each step is timed to its kernels' end, as simslm's step (which reads its
    # losses back every step) is.
    synchronize = torch.cuda.synchronize if on_cuda else (lambda: None)
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
            synchronize()
            self.started, self.steps = time.perf_counter(), []

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize()
            self.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            self.steps.append(time.perf_counter() - self.step_started)

        def on_train_end(self, args, state, control, **kwargs):
            synchronize()
            self.seconds = time.perf_counter() - self.started

    timer = LoopTimer()
    arguments = TrainingArguments(output_dir=str(scratch / "hf"), per_device_train_batch_size=shape.batch_size,
                                  max_steps=steps, learning_rate=5e-4, lr_scheduler_type="cosine",
                                  warmup_steps=max(1, round(0.01 * steps)), max_grad_norm=0.5, report_to=[],
                                  save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
                                  use_cpu=not on_cuda, bf16=shape.bf16, seed=0, disable_tqdm=True)
    Trainer(model=model, args=arguments, train_dataset=Chunks(), callbacks=[timer]).train()
    return shape.tokens / statistics.median(timer.steps[3:]), steps * shape.tokens / timer.seconds


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
    parser.add_argument("--depths", default="2,4,8", help="members to time alone (none: '')")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compare-depths", default="2,4")
    parser.add_argument("--compile", action="store_true", help="also race simslm train --compile")
    parser.add_argument("--compile-modes", default="auto",
                        help="with --compile: the --compile-mode values to race, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attentions", default="",
                        help="also race simslm train --attention X for each X here (flex_attention: CUDA only)")
    parser.add_argument("--trainers", default="plain,documents-apart",
                        help="the HF Trainer contenders: plain (always), documents-apart")
    parser.add_argument("--ceilings", default="",
                        help="family members DEPTH:RATIO,... whose matrix-product MFU ceiling to measure (the demo's: "
                             "1:16,2:16,3:16,4:16; CPU only)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast, as simslm train does there)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "bf16-weights"),
                        help="simslm train's --precision, and the Trainer's bf16 to match (auto: bf16 on CUDA only)")
    parser.add_argument("--also-precision", default="", choices=("", "fp32", "bf16", "bf16-weights"),
                        help="also race simslm train (and with --compile, compiled) at this --precision, the Trainer "
                             "staying at --precision's")
    parser.add_argument("--options-compiled-only", action="store_true",
                        help="race --attentions and --also-precision only with --compile (a short GPU lease)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--text-corpus", default="tinystories-sample", help="asset name or .jsonl/.txt file")
    parser.add_argument("--tokenizer", default="stories260K", help="asset name or tokenizer folder")
    args = parser.parse_args()
    unknown = set(filter(None, args.trainers.split(","))) - {"plain", "documents-apart"}
    if unknown:
        parser.error(f"--trainers: unknown {', '.join(sorted(unknown))} (known: plain, documents-apart)")
    shape = Shape(args.device, args.batch_size, args.context_length, args.precision)
    about = (f"batch {shape.batch_size} x {shape.context_length}, "
             f"{'bf16 weights' if shape.precision == 'bf16-weights' else 'bf16 autocast' if shape.bf16 else 'fp32'} "
             f"on {shape.device}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = str(scratch / "data")
        build_sequences(BuildConfig(out=data, streams=("text",), text_corpus=args.text_corpus, tokenizer=args.tokenizer,
                                    context_length=shape.context_length))
        vocab_size = len(Vocabulary.load(Path(data) / "tokenizer"))
        peak = measure_peak_flops("cuda" if shape.device.startswith("cuda") else "cpu", seconds=2.0, bf16=shape.bf16)
        rows = [(f"{'bf16' if shape.bf16 else 'fp32'} matmul peak measured "
                 f"({'1024^3' if shape.device == 'cpu' else '8192^3'}, 2 s)", f"{peak / 1e9:,.1f} GFLOP/s")]
        for member in filter(None, args.depths.split(",")):
            depth, ratio = model_lib.parse_family_source(member)
            parameters = model_lib.family_parameters(depth, vocab_size, ratio)
            for mode in [None, *(args.compile_modes.split(",") if args.compile else [])]:
                tokens_per_sec, mfu, _ = isolated(our_loop, data, depth, args.steps, scratch / f"ours-{member}-{mode}",
                                                  mode, aspect_ratio=ratio, shape=shape)
                rows.append((f"simslm train{' --compile' if mode else ''}, depth {depth}, width {depth * ratio} "
                             f"({parameters / 1e3:,.0f}k params), {about}",
                             f"{tokens_per_sec:,.0f} tokens/s, MFU {100 * mfu:.1f}%"))
        for member in filter(None, args.ceilings.split(",")):
            depth, ratio = model_lib.parse_family_source(member)
            parameters = model_lib.family_parameters(depth, vocab_size, ratio)
            ceiling = matmul_ceiling(depth, vocab_size, ratio, peak)
            rows.append((f"MFU ceiling of depth {depth}, width {depth * ratio} ({parameters / 1e3:,.0f}k params): its "
                         f"matrix products alone, batch 8 x 256", f"{100 * ceiling:.1f}%"))
        # Alternate the contenders so drift in the machine's speed hits all alike; compare whole training loops
        # (first step to last, data loading and compiling included) and median steps, on the same model and data.
        for member in args.compare_depths.split(","):
            depth, ratio = model_lib.parse_family_source(member)
            ours = functools.partial(isolated, our_loop, data, depth, args.steps, aspect_ratio=ratio, shape=shape)
            theirs = functools.partial(isolated, hf_trainer, data, depth, args.steps, scratch, aspect_ratio=ratio,
                                       shape=shape)
            # In the order each repeat runs them, the baseline second so that a time box cutting a repeat short
            # cuts the options rather than the Trainer. Each simslm run gives (median step tokens/s, MFU, whole
            # loop tokens/s), each Trainer run (median step, whole loop).
            attentions = list(filter(None, args.attentions.split(",")))
            modes = args.compile_modes.split(",") if args.compile else []
            contenders = {"simslm": ours, "HF Trainer": lambda run: theirs()}
            for mode in modes:
                contenders[f"simslm --compile --compile-mode {mode}"] = functools.partial(ours, compile_mode=mode)
            if args.also_precision:
                other = replace(shape, precision=args.also_precision)
                if not args.options_compiled_only:
                    contenders[f"simslm --precision {other.precision}"] = functools.partial(ours, shape=other)
                for mode in modes:
                    contenders[f"simslm --compile --compile-mode {mode} --precision {other.precision}"] = \
                        functools.partial(ours, compile_mode=mode, shape=other)
            for attention in attentions:
                if not args.options_compiled_only:
                    contenders[f"simslm --attention {attention}"] = functools.partial(ours, attention=attention)
                for mode in modes:  # the two together: flex attention's kernels compile with the model
                    contenders[f"simslm --compile --compile-mode {mode} --attention {attention}"] = functools.partial(
                        ours, compile_mode=mode, attention=attention)
            if "documents-apart" in args.trainers.split(","):
                contenders["HF Trainer, documents apart"] = lambda run: theirs(documents_apart=True)
            if shape.device == "cpu":  # the host's malloc settings: a CPU matter (and a GPU lease is short)
                contenders["HF Trainer, freed memory kept"] = lambda run: theirs(keep_memory=True)
            runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in contenders}

            for repeat in range(args.repeats):
                for index, (name, contender) in enumerate(contenders.items()):
                    entry = contender(scratch / f"{member}-{index}-{repeat}")
                    if name.startswith("simslm"):
                        step, mfu, loop = entry
                        entry = (step, loop, mfu)
                    runs[name].append(entry)  # and say so at once: a run cut short by a time limit keeps what it had
                    print(f"depth {depth}, {name}, run {len(runs[name])}: " + ", ".join(f"{v:,.4g}" for v in entry),
                          file=sys.stderr, flush=True)
            hf_step = statistics.median(step for step, _ in runs["HF Trainer"])
            hf_loop = statistics.median(loop for _, loop in runs["HF Trainer"])
            for name, values in runs.items():
                step = statistics.median(v[0] for v in values)
                loop = statistics.median(v[1] for v in values)
                mfu = f", MFU {100 * statistics.median(v[2] for v in values):.1f}%" if len(values[0]) > 2 else ""
                rows.append((f"depth {depth}, width {depth * ratio}, {about}, {args.steps} steps, {name} (median of "
                             f"{args.repeats}, alternated)",
                             f"step {step:,.0f} tokens/s ({step / hf_step:.2f}x HF){mfu}, whole loop {loop:,.0f} "
                             f"tokens/s ({loop / hf_loop:.2f}x HF)"))
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
