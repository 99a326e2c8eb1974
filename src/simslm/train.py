"""Training: a compute budget fixes the number of steps before step 1; one linear loop.

The run directory holds `config.json` (as given), `plan.json` (everything derived before
the first step), `metrics.jsonl`, `checkpoints/` and, written last and atomically,
`result.json` plus the final `model/` folder that plain `from_pretrained` loads.
Checkpoints hold model, optimiser, loader and RNG state, so a killed run resumes with
bit-identical losses on CPU. `torchrun` gives data parallelism (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import jobs
from simslm import model as model_lib
from simslm.sequences.loader import PackedLoader
from simslm.sequences.vocabulary import Vocabulary


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What `simslm train` does. Defaults follow slamkit's SIMS scaling configuration."""

    run_dir: str
    """Run directory (created; a second run with the same directory resumes)."""
    data: str
    """Folder from `simslm sequences build` (its tokenizer/ defines the vocabulary)."""
    base_model: str = "stories260K"
    """HF id or folder, llama2.c .bin, .gguf, an asset name, or family:<depth> for a family member."""
    init: str = "twist"
    """twist (keep pretrained weights, add unit rows) or random (same architecture from scratch)."""
    validation_data: str | None = None
    """Sequences folder for validation cross-entropy per modality (none: skipped)."""
    budget_flops: float | None = None
    """Training compute, C = 6 N D with N all parameters (the paper's convention)."""
    budget_tokens: int | None = None
    """Training tokens D (instead of a FLOP budget)."""
    batch_size: int = 8
    """Sequences per micro-batch per process."""
    grad_accumulation: int = 1
    """Micro-batches per optimiser step."""
    lr: float = 5e-4
    """Peak learning rate (slamkit SIMS: 5e-4)."""
    lr_min: float = 5e-5
    """Cosine floor (slamkit SIMS: 5e-5)."""
    warmup_fraction: float = 0.01
    """Share of steps with linear warm-up (slamkit SIMS: 1%)."""
    grad_clip: float = 0.5
    """Gradient-norm clip (slamkit SIMS: 0.5)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (HF Trainer's default, which slamkit keeps)."""
    beta1: float = 0.9
    beta2: float = 0.999
    seed: int = 0
    checkpoint_every: int = 100
    """Steps between checkpoints (and at the last step)."""
    keep_checkpoints: int = 2
    validation_batches: int = 16
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    fsdp: bool = False
    """Shard parameters, gradients and optimiser state across processes (FSDP2) for models
    that do not fit one device; with torchrun only."""


@dataclass(frozen=True)
class Plan:
    """Everything fixed before the first step."""

    total_steps: int
    warmup_steps: int
    tokens_per_step: int
    total_tokens: int
    total_flops: float
    flops_per_token: dict[str, float]
    parameter_groups: dict[str, int]
    context_length: int
    world_size: int
    vocab_size: int


def make_plan(config: TrainConfig, model, context_length: int, world_size: int, vocab_size: int) -> Plan:
    """Steps from the budget: tokens = C / (6N) (or the token budget), steps = tokens / tokens per step."""
    if (config.budget_flops is None) == (config.budget_tokens is None):
        raise ValueError("give exactly one of budget_flops and budget_tokens")
    flops = model_lib.flops_per_token(model, context_length)
    tokens_per_step = config.batch_size * config.grad_accumulation * world_size * context_length
    budget_tokens = config.budget_tokens if config.budget_tokens is not None else config.budget_flops / flops["all_params"]
    total_steps = max(1, round(budget_tokens / tokens_per_step))
    warmup_steps = max(1, round(config.warmup_fraction * total_steps)) if total_steps > 1 else 0
    total_tokens = total_steps * tokens_per_step
    return Plan(total_steps=total_steps, warmup_steps=warmup_steps, tokens_per_step=tokens_per_step,
                total_tokens=total_tokens, total_flops=flops["all_params"] * total_tokens, flops_per_token=flops,
                parameter_groups=asdict(model_lib.parameter_groups(model)), context_length=context_length,
                world_size=world_size, vocab_size=vocab_size)


def learning_rate(step: int, plan: Plan, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine to `lr_min` at the last step: a function of (step, total)."""
    if step < plan.warmup_steps:
        return config.lr * (step + 1) / plan.warmup_steps
    span = max(1, plan.total_steps - 1 - plan.warmup_steps)
    progress = min(1.0, (step - plan.warmup_steps) / span)
    return config.lr_min + (config.lr - config.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(config: TrainConfig, vocab_size: int, context_length: int):
    """The base LM, initialised as asked, with its vocabulary grown to `vocab_size`."""
    if config.init not in ("twist", "random"):
        raise ValueError(f"init must be twist or random, not '{config.init}'")
    if config.base_model.startswith("family:"):
        depth = int(config.base_model.split(":", 1)[1])
        return model_lib.build_family_model(depth, vocab_size, config.seed, context_length)
    model = model_lib.load_base_model(config.base_model)
    if config.init == "random":
        model = model_lib.reinitialise(model, config.seed)
    model_lib.extend_vocabulary(model, vocab_size, seed=config.seed)
    if model.config.max_position_embeddings < context_length:
        model.config.max_position_embeddings = context_length  # RoPE extrapolates; the data decides
    return model


# --- checkpoints ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _full_options():
    """Full (unsharded, CPU) state dicts: the same files from one process, DDP or FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model, optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and optimiser state gathered in full (a collective under FSDP: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return (get_model_state_dict(model, options=_full_options()),
            get_optimizer_state_dict(model, optimizer, options=_full_options()))


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, Any], optimizer_state: dict[str, Any],
                    loader: PackedLoader, keep: int) -> Path:
    """Write checkpoints/step-N atomically: files, then a checksum list, then the rename."""
    import torch
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / f"step-{step:08d}"
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Tied embeddings appear under two names sharing storage; safetensors wants them apart.
    save_file({name: tensor.detach().clone().contiguous() for name, tensor in model_state.items()},
              str(staging / "model.safetensors"))
    torch.save(optimizer_state, staging / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, staging / "rng.pt")
    (staging / "state.json").write_text(json.dumps({"step": step, "loader": loader.state_dict()}))
    checksums = {name: _sha256(staging / name) for name in ("model.safetensors", "optimizer.pt", "rng.pt", "state.json")}
    (staging / "checksums.json").write_text(json.dumps(checksums))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be used (None when every file matches its checksum)."""
    listing = folder / "checksums.json"
    if not listing.exists():
        return "no checksums.json (written last: the save did not finish)"
    for name, digest in json.loads(listing.read_text()).items():
        if not (folder / name).exists():
            return f"{name} is missing"
        if _sha256(folder / name) != digest:
            return f"{name} is corrupt or truncated (checksum mismatch)"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest usable checkpoint; broken ones are reported and skipped."""
    for folder in sorted((run_dir / "checkpoints").glob("step-*"), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        print(f"simslm train: skipping checkpoint {folder}: {problem}", file=sys.stderr)
    return None


def load_checkpoint(folder: Path, model, optimizer, loader: PackedLoader) -> int:
    """Restore everything a checkpoint holds; return its step."""
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, load_file(str(folder / "model.safetensors")), options=_full_options())
    set_optimizer_state_dict(model, optimizer, torch.load(folder / "optimizer.pt", weights_only=True),
                             options=_full_options())
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((folder / "state.json").read_text())
    loader.load_state_dict(state["loader"])
    return int(state["step"])


# --- measurement -------------------------------------------------------------------------------


def measure_peak_flops(device: str, size: int | None = None, seconds: float = 0.5) -> float:
    """Achieved fp32 (bf16 on CUDA) matrix-multiply FLOP/s on this device: the MFU denominator."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # 1024^3 saturates two CPU cores but leaves an H100 at a fraction of its peak (docs/LOG.md).
    size = size or (8192 if device == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    (a @ b).sum().item()
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        repeats += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / (time.perf_counter() - started)


class _Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: str):
        import torch
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = "cuda" if use_cuda else "cpu"
        if self.world_size > 1 and not dist.is_initialized():
            if use_cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                self.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            dist.init_process_group("nccl" if use_cuda else "gloo")
        self.is_main = self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.barrier()


def _token_losses(model, batch, vocabulary: Vocabulary, autocast) -> tuple[Any, list[float]]:
    """Mean loss over all targets, and [sum, count] of losses on all / speech / text targets."""
    import torch
    import torch.nn.functional as F

    inputs, targets = batch[:, :-1], batch[:, 1:]
    with autocast:
        # use_cache=False: a training forward must not build a KV cache it never reads.
        logits = model(input_ids=inputs, use_cache=False).logits
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    flat = targets.reshape(-1)
    speech = (flat >= vocabulary.unit_offset) & (flat < vocabulary.unit_offset + vocabulary.num_units)
    text = ~speech
    for special in (vocabulary.speech_id, vocabulary.text_id, vocabulary.pad_id, vocabulary.bos_id):
        if special is not None:
            text &= flat != special
    # One (3 x N) product and one transfer: per-modality bookkeeping costs ~1% of a step
    # this way, against ~8% with boolean indexing and separate .item() calls (docs/LOG.md).
    masks = torch.stack([torch.ones_like(speech), speech, text]).to(losses.dtype)
    totals = torch.cat([masks @ losses.detach(), masks.sum(dim=1)]).tolist()
    sums = [totals[0], totals[3], totals[1], totals[4], totals[2], totals[5]]
    return losses.mean(), sums


def _ratios(sums: list[float]) -> dict[str, float | None]:
    ratio = lambda total, count: total / count if count else None  # noqa: E731
    return {"loss": ratio(sums[0], sums[1]), "loss_speech": ratio(sums[2], sums[3]), "loss_text": ratio(sums[4], sums[5])}


def evaluate_modalities(model, folder: str, vocabulary: Vocabulary, batch_size: int, num_batches: int,
                        device: str) -> dict[str, float | None]:
    """Validation cross-entropy overall and per modality (speech-only CE is the paper's main loss)."""
    import contextlib

    import torch

    loader = PackedLoader(folder, batch_size)
    totals = [0.0] * 6
    model.eval()
    with torch.no_grad():
        for _ in range(min(num_batches, loader.batches_per_epoch())):
            batch = torch.from_numpy(next(loader).astype(np.int64)).to(device)
            _, sums = _token_losses(model, batch, vocabulary, contextlib.nullcontext())
            totals = [a + b for a, b in zip(totals, sums)]
    model.train()
    return _ratios(totals)


# --- the loop ----------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict[str, Any]:
    """Build, loop, evaluate, save. Re-running with the same run_dir resumes."""
    import contextlib

    import torch
    from torch.nn.parallel import DistributedDataParallel

    started = time.perf_counter()
    distributed = _Distributed(config.device)
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.seed)

    # Build.
    vocabulary = Vocabulary.load(Path(config.data) / "tokenizer")
    loader = PackedLoader(config.data, config.batch_size, seed=config.seed, rank=distributed.rank,
                          world_size=distributed.world_size)
    context_length = int(loader.index["context_length"])
    model = build_model(config, len(vocabulary), context_length)
    plan = make_plan(config, model, context_length, distributed.world_size, len(vocabulary))
    if distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = run_dir / "config.json"
        if previous.exists() and json.loads(previous.read_text()) != asdict(config):
            raise ValueError(f"{run_dir} holds a run with another config; use a new run_dir")
        jobs.write_json(previous, asdict(config))
        jobs.write_json(run_dir / "plan.json", asdict(plan))
    model.to(distributed.device).train()
    if config.fsdp:
        if distributed.world_size < 2:
            raise ValueError("fsdp needs several processes: start the run with torchrun")
        from torch.distributed.fsdp import fully_shard

        # Each decoder layer is one FSDP unit (gathered just before use), the rest the root.
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": config.weight_decay},
                                   {"params": vectors, "weight_decay": 0.0}],
                                  lr=config.lr, betas=(config.beta1, config.beta2),
                                  fused=True)  # one kernel per step, CPU and CUDA alike (as HF Trainer's default)
    start_step = 0
    checkpoint = latest_checkpoint(run_dir) if run_dir.exists() else None
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, model, optimizer, loader)
    metrics_path = run_dir / "metrics.jsonl"
    if distributed.is_main and metrics_path.exists():
        # Steps logged after the checkpoint we resume from are done again.
        kept = [line for line in metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    data_parallel = distributed.world_size > 1 and not config.fsdp
    trained = DistributedDataParallel(model) if data_parallel else model
    on_cuda = distributed.device.startswith("cuda")
    # bf16 autocast only on GPU: on this CPU bf16 matmuls are ~100x slower than fp32.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    peak_flops = measure_peak_flops("cuda" if on_cuda else "cpu") if distributed.is_main else 0.0

    # Loop.
    progress = jobs.progress(range(start_step, plan.total_steps), "train") if distributed.is_main else \
        range(start_step, plan.total_steps)
    for step in progress:
        step_started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, plan, config)
        totals = [0.0] * 6
        for micro in range(config.grad_accumulation):
            batch = torch.from_numpy(next(loader).astype(np.int64)).to(distributed.device)
            last = micro == config.grad_accumulation - 1
            sync = trained.no_sync() if data_parallel and not last else contextlib.nullcontext()
            with sync:
                loss, sums = _token_losses(trained, batch, vocabulary, autocast)
                (loss / config.grad_accumulation).backward()
            totals = [a + b for a, b in zip(totals, sums)]
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        totals = distributed.all_sum(totals)
        done = step + 1
        if distributed.is_main:
            elapsed = time.perf_counter() - step_started
            tokens_per_sec = plan.tokens_per_step / elapsed
            achieved = tokens_per_sec * plan.flops_per_token["all_params"]
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps({"step": done, **_ratios(totals), "lr": optimizer.param_groups[0]["lr"],
                                         "grad_norm": float(grad_norm), "tokens": done * plan.tokens_per_step,
                                         "flops": done * plan.tokens_per_step * plan.flops_per_token["all_params"],
                                         "tokens_per_sec": tokens_per_sec,
                                         "mfu": achieved / peak_flops / distributed.world_size}) + "\n")
        if done % config.checkpoint_every == 0 or done == plan.total_steps:
            model_state, optimizer_state = full_state(model, optimizer)
            if distributed.is_main:
                save_checkpoint(run_dir, done, model_state, optimizer_state, loader, config.keep_checkpoints)
            distributed.barrier()

    # Evaluate and save.
    result: dict[str, Any] = {}
    if config.fsdp:
        # Gather the shards (every rank takes part) into a plain model that rank 0 evaluates and saves.
        full_weights, _ = full_state(model, optimizer)  # only rank 0 receives the weights (cpu_offload)
        if distributed.is_main:
            model = build_model(dataclasses.replace(config, init="random"), len(vocabulary), context_length)
            model.load_state_dict(full_weights)
    if distributed.is_main:
        model.to(distributed.device)
        validation = (evaluate_modalities(model, config.validation_data, vocabulary, config.batch_size,
                                          config.validation_batches, distributed.device)
                      if config.validation_data else None)
        model_lib.save_model(model.to("cpu"), vocabulary.tokenizer, run_dir / "model")
        final = [json.loads(line) for line in metrics_path.read_text().splitlines()[-10:]]
        result = {"final_train": {key: float(np.mean([m[key] for m in final if m[key] is not None]))
                                  for key in ("loss", "loss_speech", "loss_text")
                                  if any(m[key] is not None for m in final)},
                  "validation": validation, "steps": plan.total_steps, "tokens": plan.total_tokens,
                  "flops": plan.total_flops, "parameters": plan.parameter_groups,
                  "wall_sec": round(time.perf_counter() - started, 3), "peak_flops_measured": peak_flops,
                  "model_dir": str(run_dir / "model")}
        jobs.write_json(run_dir / "result.json", result)
    distributed.barrier()
    return result


def config_with_overrides(path: str | None, overrides: list[str]) -> TrainConfig:
    """A TrainConfig from a JSON file plus `key=value` overrides (values parsed by field type)."""
    values: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for override in overrides:
        key, separator, raw = override.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or key not in fields:
            raise ValueError(f"override '{override}' is not key=value with a known key "
                             f"({', '.join(fields)})")
        values[key] = None if raw.lower() in ("none", "null") else _parse(fields[key].type, raw)
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(sorted(unknown))}")
    return TrainConfig(**values)


def _parse(kind: str, raw: str) -> Any:
    if "float" in kind:
        return float(raw)
    if "int" in kind:
        return int(float(raw)) if "e" in raw.lower() else int(raw)
    if "bool" in kind:
        return raw.lower() in ("1", "true", "yes")
    return raw
