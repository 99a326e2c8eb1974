"""`simslm train`: build, loop, evaluate, save, in one function (`_train`) read top to bottom.

Before the first step it checks the inputs (validation data that shares the training utterances or is of another
vocabulary, a run folder another process holds). On a GPU each step's numbers reach the host a step late, so the
host launches the next step while the device runs this one.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from simslm import jobs, machine, storage
from simslm import model as model_lib
from simslm.config import ConfigError
from simslm.sequences.build import part_note, speech_manifest, speech_units_folder
from simslm.sequences.loader import PackedLoader, PieceLoader, index_digest, read_index
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech.manifest import manifest_folder
from simslm.train.build import (
    ONE_ROW_KERNELS,
    ROW_FREE_KERNELS,
    attention_kernel,
    build_model,
    check_documents_apart,
    uses_bf16,
    weights_to,
)
from simslm.train.checkpoint import (
    MODEL_CONFIG,
    checkpoint_skeleton,
    checkpoint_state,
    fill_from_checkpoint,
    full_state,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from simslm.train.distributed import Distributed, StopRequest, gathered_model, send_weights, skeleton_unless_main
from simslm.train.loss import (
    VALIDATION_SUMS,
    StepLosses,
    chunked_loss_module,
    evaluate_modalities,
    loss_ratios,
    loss_token_ids,
    scored_targets,
    sum_count_pairs,
    to_device,
)
from simslm.train.metrics import VALIDATION_CURVE_FILE, add_scalars, log_validation, logged_step, tensorboard_writer
from simslm.train.peak import PEAK_FLOPS_BF16_VARIABLE, given_peak_flops, measure_peak_flops, warn_if_slow_bf16
from simslm.train.plan import (
    MAX_DATA_PASSES,
    OFF_BUDGET,
    RUN_LOCK,
    Losses,
    Plan,
    RunResult,
    TrainConfig,
    changed_settings,
    learning_rate,
    make_plan,
    resume_plan,
)


def train(config: TrainConfig) -> RunResult | None:
    """Build, loop, evaluate, save; the result (on the main process). Re-running with the same run_dir resumes."""
    started = time.perf_counter()
    machine.keep_freed_memory()  # a small model's step would otherwise page-fault its tensors in anew
    with Distributed(config.device) as distributed:
        return _train_held(config, distributed, started)


def _train_held(config: TrainConfig, distributed: "Distributed", started: float) -> RunResult | None:
    """`train`'s work in its processes' group."""
    if config.attention == "flex_attention" and not distributed.device.startswith("cuda"):
        raise ConfigError("--attention flex_attention trains on CUDA only: PyTorch's flex attention has no backward "
                          "on the CPU")
    if config.fsdp and distributed.world_size < 2:
        # Said before the run's folder is written: a plan for one process would refuse the torchrun that follows.
        raise ConfigError("--fsdp needs several processes: start the run with torchrun (--nproc-per-node 2 or more)")
    run_dir = Path(config.run_dir)
    if run_dir.exists() and not run_dir.is_dir():  # said before the base model loads, not after
        raise ValueError(f"{run_dir}: a file, where the run's folder is to be")
    # A bad value is refused before anything is written.
    given_peaks = given_peak_flops(), given_peak_flops(PEAK_FLOPS_BF16_VARIABLE)
    with _run_held(run_dir, distributed):
        return _train(config, distributed, run_dir, given_peaks, started)


@contextlib.contextmanager
def _run_held(run_dir: Path, distributed: "Distributed"):
    """The run folder's lock (`RUN_LOCK`), held by the main process while the run trains; every process learns
    at once when another holds it. Two processes training one folder (a job submitted again while the first still
    runs) would otherwise both go on: metrics.jsonl's steps interleaved, checkpoints and model overwritten."""
    busy, created = "", not run_dir.exists()
    try:
        with contextlib.ExitStack() as held:
            if distributed.is_main:
                try:
                    held.enter_context(storage.exclusive_lock(run_dir / RUN_LOCK, f"{run_dir}: another process is "
                                                              f"training this run; wait for it to end, or stop it"))
                except storage.Busy as error:
                    busy = str(error)
            if distributed.all_sum([float(bool(busy))])[0]:
                raise storage.Busy(busy or f"{run_dir}: another process is training this run")
            yield
    except BaseException:
        if distributed.is_main and created and {p.name for p in run_dir.glob("*")} <= {RUN_LOCK}:
            shutil.rmtree(run_dir, ignore_errors=True)  # refused before anything was written: leave nothing behind
        raise


def _finished_result(config: TrainConfig, run_dir: Path) -> RunResult | None:
    """The result of the run `config` asks for when it finished before, on the same data, and its model is still
    there; None when any of that is not so (training then goes on from the last checkpoint, or is refused for
    another config or data, as a resume is)."""
    try:
        result = RunResult.load(run_dir)
        stored = Plan(**storage.read_json(run_dir / "plan.json"))
        if changed_settings(config, run_dir) or stored.data_sha256 != index_digest(config.data):
            return None
    except (ValueError, TypeError, OSError):  # a torn file, data gone: the usual path says what is wrong
        return None
    return result if (result.model_path(run_dir) / "config.json").is_file() else None


# Manifests read whole to compare their recordings (`shared_recordings`) up to this size; past it (millions of
# utterances, read at every run's start) only their files are compared.
OVERLAP_READ_BYTES = 64 * 2 ** 20


def shared_recordings(trained_on: Path, held_out: Path) -> tuple[int, int] | None:
    """How many of a held-out manifest's utterances have their audio file among a training manifest's, and how many
    it has; None when either is past `OVERLAP_READ_BYTES` or cannot be read. Compared by audio file, not by id:
    two corpora made apart may number their utterances alike, and a split made by copying lines keeps the
    files."""
    def recordings(manifest: Path) -> list[str]:
        base, found = manifest_folder(manifest), []  # one realpath a manifest: a syscall a line is slow
        for line, problem in storage.text_lines(manifest):
            try:
                audio = json.loads(line).get("audio") if line and line.strip() and not problem else None
            except (ValueError, AttributeError):
                audio = None  # a line the stages skip and count: not this check's to say
            if isinstance(audio, str):
                found.append(os.path.normpath(os.path.join(base, audio)))
        return found

    try:
        if max(trained_on.stat().st_size, held_out.stat().st_size) > OVERLAP_READ_BYTES:
            return None
        held = recordings(held_out)
        return len(set(held) & set(recordings(trained_on))), len(held)
    except OSError:
        return None


def validation_overlap(data: str, validation: str) -> str | None:
    """How validation data shares the training data's utterances, in words (None when it does not): the same
    folder, sequences built from the same speech manifest, or from one whose recordings are among its own."""
    if os.path.realpath(data) == os.path.realpath(validation):
        return "is the training data itself"
    trained_on, held_out = speech_manifest(data), speech_manifest(validation)
    if trained_on is None or held_out is None:
        return None
    if os.path.realpath(trained_on) == os.path.realpath(held_out):
        return f"was built from the training data's manifest ({os.path.realpath(held_out)})"
    shared = shared_recordings(Path(trained_on), Path(held_out))
    if shared and shared[0]:
        return (f"was built from {os.path.realpath(held_out)}, {shared[0]} of whose {shared[1]} utterances are "
                f"recordings of the training data's manifest ({os.path.realpath(trained_on)})")
    return None


def validation_mismatch(data: str, validation: str, vocabulary: Vocabulary | None = None) -> str | None:
    """Why validation data's losses would be of other tokens than the training data's, in words (None when they
    are the same tokens): another vocabulary, or the same unit ids from another codebook or encoder. Either gives
    a silently wrong speech CE, the number the fits read. `vocabulary`: `data`'s, when the caller has loaded it."""
    from simslm.units.folder import unit_source

    vocabulary = vocabulary if vocabulary is not None else Vocabulary.load(Path(data) / "tokenizer")
    held_out = Vocabulary.load(Path(validation) / "tokenizer")
    if (len(held_out), held_out.unit_offset, held_out.num_units) != \
            (len(vocabulary), vocabulary.unit_offset, vocabulary.num_units):
        return (f"built with another vocabulary than {data} ({len(held_out)} tokens, units from "
                f"{held_out.unit_offset}, against {len(vocabulary)} from {vocabulary.unit_offset}); build both with "
                f"the same --tokenizer and units")
    folders = [speech_units_folder(folder) for folder in (data, validation)]
    if None in folders or not all((folder / "units.json").is_file() for folder in folders):
        return None  # text alone, or units folders moved away: nothing recorded to compare
    trained, held = (unit_source(folder) for folder in folders)
    if held.other_codebook(trained):
        named = [f"{os.path.realpath(source.codebook) if source.codebook else 'imported'}, sha256 "
                 f"{source.codebook_sha256[:12]}" for source in (held, trained)]
        return (f"its units are of another codebook ({named[0]}) than {data}'s ({named[1]}): the same ids are other "
                f"sounds; build both from units of one codebook")
    if settings := held.other_encoding(trained):
        return f"its units were encoded with {settings[0]}, {data}'s with {settings[1]}; encode both alike"
    return None


# Steps launched on a GPU before the host reads a step's losses and gradient norm back: reading them at once
# makes the host wait for the step to finish before it launches the next, so the GPU idles while Python
# launches kernels (what small models are bound by). On the CPU every operation is done when it returns.
READBACK_LAG = {"cuda": 1, "cpu": 0}


@dataclass
class _Launched:
    """A step whose numbers are still on the device: read back (`settle`) a step later on a GPU."""

    step: int
    started: float
    lr: float
    numbers: Any  # the step's sums over its micro-batches and processes, its gradient norm (`_step_numbers`)
    ready: Any  # on CUDA, an event recorded behind the copy of `numbers` to the host; None on the CPU


def _step_numbers(step_sums: list[Any], grad_norm: Any, distributed: "Distributed", shared: Any = None) -> Any:
    """A launched step's numbers as one float64 tensor on the device, read nowhere yet: its loss sums and counts
    (`_loss_and_totals`'s order) added micro-batch after micro-batch, then over the processes; its gradient norm;
    and with several processes, `shared`'s second value, their summed requests to stop.

    float64 holds every value of the float32 sums and of the norm (float32, or bfloat16 for bf16 weights)
    exactly, and adds them as the host would, so what is logged is what the tensors held."""
    import torch

    totals = step_sums[0].detach().to(torch.float64)
    for sums in step_sums[1:]:
        totals = totals + sums.detach().to(torch.float64)
    if distributed.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)  # queued on the device like the step's own collectives, read back with the rest
    parts = [totals, grad_norm.detach().reshape(1).to(torch.float64)]
    if shared is not None:
        parts.append(shared[1:])
    return torch.cat(parts)


def _toward_host(numbers: Any, on_cuda: bool) -> tuple[Any, Any]:
    """A launched step's numbers on their way to the host, and on CUDA an event recorded behind that copy.

    Reading a tensor on the GPU (`.tolist()`) queues its copy behind everything launched so far: read after the
    next step is launched, it waits for that step to end too, and the GPU then idles while the host prepares the
    step after. The copy queued here follows this step's kernels only, and waiting on its event waits for them."""
    import torch

    if not on_cuda:
        return numbers, None
    host = torch.empty(numbers.shape, dtype=numbers.dtype, pin_memory=True)
    host.copy_(numbers, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def _diverged_after_last_step(model, validation: Losses | None) -> str | None:
    """What says the model diverged in the last update (weights not finite, or a validation loss that is not), or
    None."""
    import torch

    if validation is not None and validation.loss is not None and not math.isfinite(validation.loss):
        return f"the validation loss is {validation.loss}"
    with torch.no_grad():
        if not all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters()):
            return "the model's weights are not all finite"
    return None


def _train(config: TrainConfig, distributed: "Distributed", run_dir: Path,
           given_peaks: tuple[float | None, float | None], started: float) -> RunResult | None:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(config.seed)
    if (finished := _finished_result(config, run_dir)) is not None:
        # The same run given again: its result stands. Going on had it validate again and rewrite its model and
        # result.json (adding the time to its wall_sec), or, its checkpoints deleted to save space, train it anew.
        if distributed.is_main:
            print(f"simslm train: {run_dir} finished before; its result stands (train into a new run_dir to train "
                  f"again)", file=sys.stderr)
        return finished if distributed.is_main else None

    # Build.
    for folder in (config.data, config.validation_data):
        if folder:
            note = part_note(read_index(folder).get("config", {}))  # a sequences folder, or one line saying not
            if distributed.is_main and note:
                print(f"simslm train: warning: {folder} is {note} (training on this part alone)", file=sys.stderr)
    vocabulary = Vocabulary.load(Path(config.data) / "tokenizer")
    if config.validation_data and (problem := validation_mismatch(config.data, config.validation_data, vocabulary)):
        raise ValueError(f"{config.validation_data}: {problem}")
    by_pieces = config.batching == "pieces"
    # A batch of pieces goes end to end in one row, as slamkit's collator lays it, for the kernels whose cost follows
    # the documents (flash-attn's variable-length path, flex attention's block mask). SDPA and eager attend through a
    # dense mask, whose cost grows with the square of the row, so there the pieces fill rows of the context first-fit:
    # the same documents and losses, 1.4x as fast on the demo's data (docs/BENCHMARKS.md).
    context_length = int(read_index(config.data)["context_length"])
    bf16 = uses_bf16(config.precision, distributed.device)
    kernel = attention_kernel(config.attention, distributed.device, bf16=bf16)
    one_row = kernel in ONE_ROW_KERNELS
    loader = PieceLoader(config.data, config.batch_size, pad_id=vocabulary.pad_id, seed=config.seed,
                         rank=distributed.rank, world_size=distributed.world_size,
                         row_length=None if kernel in ROW_FREE_KERNELS else context_length) if by_pieces else \
        PackedLoader(config.data, config.batch_size, seed=config.seed, rank=distributed.rank,
                     world_size=distributed.world_size)
    # Refused before the run folder exists: a folder left with this config would refuse the corrected rerun. The
    # validation, scored after training, would otherwise score no batch and report no loss.
    loader.require_a_batch()
    if config.validation_data:
        PackedLoader(config.validation_data, config.batch_size).require_a_batch()
    # Under FSDP the main process alone loads the weights (and reads checkpoints); the others build the model's
    # skeleton and receive their shards. A 7B base model is 28 GB in fp32, and its checkpoint 84 GB with the
    # optimiser's state: one copy per process would be 8 of each in the memory of an 8-GPU node.
    from_main = config.fsdp and distributed.world_size > 1
    checkpoint = latest_checkpoint(run_dir) if distributed.is_main and run_dir.exists() else None
    if distributed.world_size > 1:  # the main process verifies the checksums; the others take its choice
        checkpoint = distributed.broadcast_object(checkpoint)
    # Resumed, every process builds the skeleton of the checkpoint's model: the weights come from the checkpoint.
    model = checkpoint_skeleton(checkpoint, run_dir, config, distributed.device)
    from_checkpoint = model is not None
    if not from_checkpoint:
        model = build_model(config, len(vocabulary), context_length, distributed.device, vocabulary,
                            quiet=not distributed.is_main) if distributed.is_main or not from_main else None
        if from_main:
            model = skeleton_unless_main(model, config, distributed)
    check_documents_apart(model.config, kernel, distributed.device, bf16, one_row, quiet=not distributed.is_main)
    resumed = checkpoint_state(checkpoint) if checkpoint is not None else {"step": 0, "wall_sec": 0.0}
    # With pieces, a step's tokens are its documents' targets (each document's first token is none): slamkit's count.
    mean_piece_targets = float(np.mean(loader.pieces(0)[1] - 1)) if by_pieces else None
    fresh = dataclasses.replace(make_plan(config, model, context_length, distributed.world_size, len(vocabulary),
                                          loader.batches_per_epoch(), mean_piece_targets),
                                data_sha256=index_digest(config.data))
    plan = resume_plan(config, run_dir, fresh, resumed["step"], quiet=not distributed.is_main)
    distributed.barrier()  # every process has read the stored plan before the main one replaces it
    asked = config.budget_flops
    if distributed.is_main and asked and abs(plan.total_flops / asked - 1) > OFF_BUDGET and resumed["step"] == 0:
        print(f"simslm train: warning: the budget is {asked:.3g} FLOPs, but steps are whole batches of "
              f"{plan.tokens_per_step:,} tokens: {plan.total_steps} step(s) make {plan.total_flops:.3g} FLOPs "
              f"({plan.total_flops / asked:.2g}x the budget); a smaller --batch-size comes closer", file=sys.stderr)
    # Once, on the main process of a fresh run: the check may read both manifests (up to `OVERLAP_READ_BYTES`).
    overlap = validation_overlap(config.data, config.validation_data) \
        if config.validation_data and distributed.is_main and resumed["step"] == 0 else None
    if overlap:  # allowed (a smoke test may): no held-out loss
        print(f"simslm train: warning: --validation-data {config.validation_data} {overlap}: its losses are not "
              f"held out, though fits read them as held-out curves", file=sys.stderr)
    if distributed.is_main and plan.data_passes is not None and plan.data_passes > MAX_DATA_PASSES:
        print(f"simslm train: warning: the budget reads {config.data} {plan.data_passes:.1f} times (more than "
              f"{MAX_DATA_PASSES} passes repeat data past the point of use, Muennighoff et al. 2023); build more "
              f"data or lower the budget", file=sys.stderr)
    if distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = run_dir / "config.json"
        # run_dir itself may differ: a run folder that was moved (or a sweep copied) resumes where it is now.
        storage.write_json(previous, config.to_dict())
        storage.write_json(run_dir / "plan.json", asdict(plan))
        if not from_checkpoint:  # the run's model, which a checkpoint's must be to be resumed from (atomic: a
            storage.write_text(run_dir / MODEL_CONFIG, model.config.to_json_string(use_diff=False))  # torn one bars it)
    if model.device.type != "meta":  # a skeleton gets its memory once sharded
        model.to(distributed.device)
    if config.precision == "bf16-weights":
        weights_to(model, torch.bfloat16)  # the optimiser's moments follow its parameters' dtype
    model.train()
    if config.activation_checkpointing:
        # Non-reentrant: works under DDP and FSDP2 alike (PyTorch's recommended form). transformers 5 renamed
        # gradient_checkpointing_enable, which 4.x still needs.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    on_cuda = distributed.device.startswith("cuda")
    chunked = config.loss_chunk_tokens > 0
    # The module the loop calls: the model, or the model with its head applied in chunks (which then holds
    # it, so DDP and FSDP see every parameter's use through its forward).
    core = chunked_loss_module(model, config.loss_chunk_tokens) if chunked else model
    if config.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        bf16_parameters = config.fsdp_mixed_precision == "bf16" or (config.fsdp_mixed_precision == "auto" and on_cuda)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_parameters else \
            MixedPrecisionPolicy()
        # The main process's weights, sent to the others once sharded (none when they come from a checkpoint).
        full_weights = model.state_dict() if distributed.is_main and not from_checkpoint else {}
        # Each decoder layer is one FSDP unit (gathered just before use), the rest the root.
        for layer in model.base_model.layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(core, mp_policy=policy)
        if from_checkpoint:
            fill_from_checkpoint(core, model, checkpoint, distributed.device, sharded=True)
        else:
            send_weights(model, core, full_weights, distributed)
        del full_weights
    elif from_checkpoint:
        fill_from_checkpoint(core, model, checkpoint, distributed.device, sharded=False)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": config.weight_decay},
                                   {"params": vectors, "weight_decay": 0.0}],
                                  lr=config.lr, betas=(config.beta1, config.beta2),
                                  fused=True)  # one kernel per step, CPU and CUDA alike (as HF Trainer's default)
    start_step = 0
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, model, optimizer, loader, from_main=from_main,
                                     is_main=distributed.is_main)
    metrics_path, validation_path = run_dir / "metrics.jsonl", run_dir / VALIDATION_CURVE_FILE
    for logged in (metrics_path, validation_path):
        if distributed.is_main and logged.exists():
            # Steps logged after the checkpoint we resume from are done again.
            kept = [line for line in logged.read_text(errors="replace").splitlines()
                    if logged_step(line) is not None and logged_step(line) <= start_step]
            storage.write_text(logged, "".join(line + "\n" for line in kept))
    data_parallel = distributed.world_size > 1 and not config.fsdp
    trained = DistributedDataParallel(core) if data_parallel else core
    autocast = torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    compile_mode = config.compile_mode if config.compile_mode != "auto" else \
        ("default" if on_cuda else "max-autotune-no-cudagraphs")
    step_losses = StepLosses(config.compile, quiet=not distributed.is_main, mode=compile_mode,
                             layers=model.base_model.layers if config.fsdp else None,
                             dynamic=None if by_pieces else False)  # pieces: a batch's shape varies
    kinds = loss_token_ids(vocabulary, distributed.device)
    peak_flops = 0.0
    if distributed.is_main:
        # A sweep's measurements, fp32's (`PEAK_FLOPS_VARIABLE`) and for a CPU run in bf16 bf16's
        # (`PEAK_FLOPS_BF16_VARIABLE`), else the run's own.
        given_fp32, given_bf16 = given_peaks
        if bf16 and not on_cuda:
            peak_flops = given_bf16 or measure_peak_flops("cpu", bf16=True)
            warn_if_slow_bf16(peak_flops, given_fp32 or measure_peak_flops("cpu", bf16=False))
        else:
            peak_flops = given_fp32 or measure_peak_flops("cuda" if on_cuda else "cpu", bf16=bf16)

    # Loop.
    tracker = jobs.Progress(plan.total_steps - start_step, "train", unit="step") if distributed.is_main else None
    events = tensorboard_writer(run_dir, start_step) if config.tensorboard and distributed.is_main else None
    lag = READBACK_LAG["cuda" if on_cuda else "cpu"]
    launched: list[_Launched] = []
    last_read = time.perf_counter()
    # Training tokens seen after the steps settled: the plan's with rows; with pieces, the targets each step scored.
    # A checkpoint from before it kept the count is one of rows, whose count the plan gives.
    seen = resumed.get("tokens_seen", plan.tokens_before(start_step))

    def settle(entry: _Launched) -> None:
        """Read a launched step's numbers back, check them and log them."""
        nonlocal last_read, seen, stopping
        if entry.ready is not None:
            entry.ready.synchronize()
        numbers = entry.numbers.tolist()
        width = len(VALIDATION_SUMS)
        totals, grad_norm = sum_count_pairs(numbers[:width]), numbers[width]
        if numbers[width + 1:]:  # several processes: whether any was asked to stop before this step
            stopping = stopping or numbers[width + 1] > 0
        done = entry.step + 1
        if not math.isfinite(totals[0]):
            # Nothing after this is worth keeping: no checkpoint, no model, no result.json.
            raise ValueError(f"{run_dir}: the loss became {totals[0]} at step {done}; lower --lr (now {config.lr}) "
                             f"or --grad-clip, and start a new run_dir")
        step_tokens = round(totals[1]) if by_pieces else plan.tokens_per_step  # every process's scored targets
        seen += step_tokens
        if not distributed.is_main:
            return
        # From the later of its launch and the previous step's read: a step's own time when the host waits for
        # each step (the CPU), the GPU's time per step when the host runs ahead; checkpoints left out either way.
        now = time.perf_counter()
        elapsed, last_read = now - max(last_read, entry.started), now
        tokens_per_sec = step_tokens / elapsed
        achieved = tokens_per_sec * plan.flops_per_token["all_params"]
        record = {"step": done, **asdict(loss_ratios(totals)), "lr": entry.lr, "grad_norm": grad_norm,
                  "tokens": seen, "flops": seen * plan.flops_per_token["all_params"],
                  "tokens_per_sec": tokens_per_sec, "mfu": achieved / peak_flops / distributed.world_size}
        if on_cuda:  # the most this process has held at once, for the memory side of a size's cost
            record["max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        with storage.naming_a_full_disk(metrics_path), open(metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if events is not None:
            add_scalars(events, "train", record, done)
        tracker.note(step=f"{done}/{plan.total_steps}", loss=record["loss"], lr=record["lr"],
                     tokens_per_sec=round(tokens_per_sec))
        tracker.update()

    stopping, done = False, start_step
    with StopRequest() as stop:
        for step in range(start_step, plan.total_steps):
            step_started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, plan, config)
            step_sums = []
            batches = [next(loader) for _ in range(config.grad_accumulation)]
            # The step's loss is the mean over every scored target of the step, on every process
            # (what HF's num_items_in_batch does): packed rows hold different numbers of them, and
            # gradients are averaged over processes, hence the world size.
            num_scored = float(sum(scored_targets(b.tokens, b.positions, vocabulary.pad_id).sum() for b in batches))
            shared = None
            if distributed.world_size == 1:
                scale, stopping = 1.0 / max(num_scored, 1.0), stop.noted
            else:
                # Summed over the processes on the device, and never read back inside the step: a read would make
                # the host wait there for the GPU, once a step. The same sum carries the requests to stop, read
                # with the step's numbers (`settle`), so every process learns of one at the same step.
                shared = distributed.sum_on_device([num_scored, float(stop.noted)])
                scale = (distributed.world_size / shared[0].clamp(min=1.0)).float()
            for micro, batch in enumerate(batches):
                last = micro == config.grad_accumulation - 1
                sync = trained.no_sync() if data_parallel and not last else contextlib.nullcontext()
                with sync:
                    loss_sum, sums = step_losses(trained, *to_device(batch, distributed.device, one_row), kinds,
                                                 autocast, chunked)
                    (loss_sum * scale).backward()
                step_sums.append(sums)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            launched.append(_Launched(step, step_started, optimizer.param_groups[0]["lr"],
                                      *_toward_host(_step_numbers(step_sums, grad_norm, distributed, shared), on_cuda)))
            done = step + 1
            periodic = done % config.checkpoint_every == 0 or done == plan.total_steps
            validating = bool(config.validation_every) and done % config.validation_every == 0 and \
                done < plan.total_steps  # the last step's validation is the run's own, below
            # A checkpoint holds only steps known to be finite. A request to stop, learnt as a step settles, settles
            # the steps launched since too, and the run stops at the same step on every process.
            while len(launched) > (0 if periodic or validating or stopping else lag):
                settle(launched.pop(0))
            checkpointing = periodic or stopping
            if validating:
                # Every process scores the same batches: under FSDP each forward needs all of them, through the
                # module FSDP wraps as its root (`core`, which holds the head when the loss is chunked).
                losses = evaluate_modalities(core, config.validation_data, vocabulary, config.batch_size,
                                             config.num_validation_batches, distributed.device, quiet=True,
                                             chunked=chunked, one_row=one_row)
                if distributed.is_main:
                    log_validation(validation_path, done, seen, losses, events)
                last_read = time.perf_counter()  # the validation is not the next step's time
            if checkpointing:
                wall_sec = resumed["wall_sec"] + time.perf_counter() - started
                if config.checkpoint_format == "sharded":
                    save_sharded_checkpoint(run_dir, done, model, optimizer, loader, config.num_checkpoints_kept,
                                            distributed, wall_sec=wall_sec, tokens_seen=seen)
                else:
                    model_state, optimizer_state = full_state(model, optimizer)
                    if distributed.is_main:
                        save_checkpoint(run_dir, done, model, model_state, optimizer_state, loader,
                                        config.num_checkpoints_kept, wall_sec=wall_sec, tokens_seen=seen)
                distributed.barrier()
            if stopping:
                break

    if tracker is not None:
        tracker.close()
    # With several processes, only a request they all learnt of: one asked during the last step goes on with the
    # others, which evaluate and save the model (through every process under FSDP) rather than wait for it.
    if stopping or (stop.noted and distributed.world_size == 1):
        # The checkpoint of the last step done is saved, and a later call (or the requeued job) resumes from it.
        if events is not None:
            events.close()
        stop.finish(run_dir, done)
        return None

    # Evaluate and save.
    result = None
    if config.fsdp:
        model = gathered_model(model, config, distributed)  # every rank takes part; rank 0 evaluates and saves
    if distributed.is_main:
        model.to(distributed.device)
        validation_batches: list[list[float]] = []
        # With a chunked loss, through the chunked head: the full logits of a large vocabulary (Qwen2.5's 151,936
        # at batch 8 x 2,048: 10 GB) are what --loss-chunk-tokens keeps from existing.
        scorer = chunked_loss_module(model, config.loss_chunk_tokens) if chunked else model
        validation = (evaluate_modalities(scorer, config.validation_data, vocabulary, config.batch_size,
                                          config.num_validation_batches, distributed.device, validation_batches,
                                          chunked=chunked, one_row=one_row)
                      if config.validation_data else None)
        if validation is not None and config.validation_every:
            log_validation(validation_path, plan.total_steps, seen, validation, events)
        elif events is not None and validation is not None:
            add_scalars(events, "validation", asdict(validation), plan.total_steps)
        if events is not None:
            events.close()
        if broken := _diverged_after_last_step(model, validation):
            # The last step's loss was finite, but its update is the one no later loss checks: a model that gives
            # NaN was saved as finished, and `eval` reported it at 0% (a NaN wins no comparison).
            raise ValueError(f"{run_dir}: after its last step {broken}; lower --lr (now {config.lr}) or "
                             f"--grad-clip, and start a new run_dir")
        # Whole or not at all: a run stopped while it saves leaves no model/ of some files only.
        with storage.atomic_path(run_dir / "model") as staging:
            model_lib.save_model(model.to("cpu"), vocabulary.tokenizer, staging)
            # The model folder alone can be evaluated: its vocabulary layout, and where its units come from.
            vocabulary.save(staging)
            units_folder = speech_units_folder(config.data)
            if units_folder:
                model_lib.write_model_units(staging, units_folder, final_dir=run_dir / "model")
        final = [json.loads(line) for line in metrics_path.read_text().splitlines()[-10:]]
        mean = lambda key: (float(np.mean([m[key] for m in final if m[key] is not None]))  # noqa: E731
                            if any(m[key] is not None for m in final) else None)
        result = RunResult(steps=plan.total_steps, tokens=seen, flops=seen * plan.flops_per_token["all_params"],
                           parameters=model_lib.ParameterGroups(**plan.parameter_groups),
                           final_train=Losses(loss=mean("loss"), loss_speech=mean("loss_speech"),
                                              loss_text=mean("loss_text")),
                           validation=validation, validation_batches=validation_batches or None,
                           wall_sec=round(resumed["wall_sec"] + time.perf_counter() - started, 3),
                           peak_flops_measured=peak_flops)
        result.save(run_dir)
    distributed.barrier()
    return result
