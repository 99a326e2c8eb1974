"""What a run is asked, what is fixed before its first step, and what it reports: the run's contract.

`TrainConfig` is the command line of `simslm train`; `make_plan` turns the budget into steps before step 1
(`plan.json`) and `learning_rate` is the schedule over them; `resume_plan` takes a stored plan back (re-planned
for another number of processes when allowed); `RunResult` is `result.json`, written last, which every later stage
reads instead of logs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from simslm import model as model_lib
from simslm import storage
from simslm.config import Config, ConfigError, check_device, check_positive


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """What `simslm train` does. Defaults follow slamkit's SIMS scaling configuration, but for `batching` (rows; slamkit
    batches documents: `pieces`)."""

    renamed: ClassVar[dict[str, str]] = {"keep_checkpoints": "num_checkpoints_kept",
                                         "validation_batches": "num_validation_batches"}

    run_dir: str
    """Run directory (created; a second run with the same directory resumes)."""
    data: str
    """Folder from `simslm sequences build` (its tokenizer/ defines the vocabulary)."""
    base_model: str = "stories260K"
    """HF id or folder, llama2.c .bin, .gguf, an asset name, or family:DEPTH[:ASPECT_RATIO] for a family member."""
    init: Literal["twist", "random"] = "twist"
    """twist (keep pretrained weights, add unit rows) or random (same architecture from scratch)."""
    new_rows: Literal["mean", "normal"] = "mean"
    """How the new unit and marker rows start: mean (slamkit: Hugging Face's mean-resizing, every new row at
    the mean embedding) or normal (drawn with the old rows' per-dimension mean and std)."""
    validation_data: str | None = None
    """Sequences folder for validation cross-entropy per modality (none: skipped)."""
    budget_flops: float | None = None
    """Training compute, C = 6 N D with N all parameters (the paper's convention); this or budget_tokens."""
    budget_tokens: int | None = None
    """Training tokens D (instead of a FLOP budget)."""
    budget_tokens_per_parameter: float | None = None
    """Or D = r N: r tokens per parameter, N all parameters once the vocabulary has grown (Chinchilla's
    compute-optimal r is 20); what a tokens-per-parameter grid gives each size."""
    batch_size: int = 8
    """Sequences per micro-batch per process: rows of the context, or documents with `batching` pieces."""
    batching: Literal["rows", "pieces"] = "rows"
    """rows: each micro-batch is `batch_size` of the built rows, every one `context_length` tokens of documents
    packed first-fit (a fixed number of tokens a step). pieces: `batch_size` documents, as the build cut them to the
    context, laid end to end in one row: slamkit's recipe (`data.packing: true`, `per_device_train_batch_size`
    items through `DataCollatorWithFlattening`), whose steps hold only as many tokens as their documents (under
    SDPA or eager attention, the same documents go first-fit into rows of the context, 1.4x as fast). Where
    many documents are shorter than the context, a step then holds fewer tokens (on the demo's data, 0.82x as
    many interleaved and 0.90x textless), and a budget takes more steps. The steps are planned from the mean
    document; a step's tokens, and so a run's, are counted as slamkit's trainer counts them, the targets its loss
    scores (`num_input_tokens_seen` over labels that are not -100). Validation reads rows either way."""
    grad_accumulation: int = 1
    """Micro-batches per optimiser step."""
    lr: float = 5e-4
    """Peak learning rate (slamkit SIMS: 5e-4)."""
    lr_min: float = 5e-5
    """Cosine floor (slamkit SIMS: 5e-5)."""
    warmup_fraction: float = 0.01
    """Share of steps with linear warm-up, rounded up (slamkit SIMS: 1%, as the HF Trainer's warmup_ratio)."""
    grad_clip: float = 0.5
    """Gradient-norm clip (slamkit SIMS: 0.5)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (HF Trainer's default, which slamkit keeps)."""
    beta1: float = 0.9
    """AdamW's first-moment decay."""
    beta2: float = 0.999
    """AdamW's second-moment decay."""
    seed: int = 0
    """Seed of the initialisation, the data order and the interleaving draws."""
    checkpoint_every: int = 100
    """Steps between checkpoints (and at the last step)."""
    num_checkpoints_kept: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    num_validation_batches: int = 16
    """Batches of validation_data scored at the end of the run."""
    validation_every: int = 0
    """Also score them every this many steps, into validation.jsonl (0: at the end only). slamkit's scaling
    recipe evaluates every 1,000 steps (`eval_steps`); approach 1 of a sweep's fit then reads these held-out
    curves. The training steps are the same either way."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    fsdp: bool = False
    """Shard parameters, gradients and optimiser state across processes (FSDP2) for models
    that do not fit one device; with torchrun only."""
    attention: Literal["auto", "sdpa", "sdpa_fp32", "eager", "flash_attention_2", "flex_attention"] = "auto"
    """Attention kernel. Packed rows keep each document to itself with every kernel (transformers reads the
    restarting positions; flash_attention_2 is given each batch's rows end to end, the one layout in which it does);
    auto takes flash_attention_2's variable-length path on CUDA when flash-attn is
    installed (slamkit's setting), sdpa_fp32 (SDPA on fp32 inputs, faster than bf16 on a CPU) for bf16 on a CPU,
    else sdpa, whose document mask is dense. flex_attention (CUDA only) skips the blocks across documents without
    flash-attn."""
    loss_chunk_tokens: int = 0
    """Cross-entropy over this many tokens at a time, each chunk's logits recomputed in the backward, so the
    full fp32 logits (tokens x vocabulary: 1.2 GB per sequence of 2048 for Qwen2.5's 151,936) never exist at
    once. 0: all tokens in one pass (fastest for small vocabularies)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them (less memory, about a
    third more compute)."""
    precision: Literal["auto", "fp32", "bf16", "bf16-weights"] = "auto"
    """Matrix products in training: bf16 (autocast; parameters, optimiser state and validation stay fp32) or fp32.
    auto: bf16 on CUDA, fp32 on the CPU. bf16 on a CPU pays only where it has native bf16 products (AVX512-BF16,
    AMX), and more the larger the model: on 2 Zen 4 cores, compiled, with attention in fp32 (`--attention auto`),
    1.22x the fp32 step at depth 2, 1.40x at depth 4 and 1.60x at depth 8 (docs/BENCHMARKS.md); elsewhere ~100x
    slower, which the run measures and warns of. Losses differ from fp32 at the bf16 products' precision.
    bf16-weights: slamkit's recipes, bf16 autocast over weights that are bf16 too, and so their gradients and
    AdamW's moments, with no fp32 copy (its model configs load the base model with torch_dtype bfloat16 and the HF
    Trainer trains it as loaded); buffers such as RoPE's frequencies stay fp32, as they do there."""
    checkpoint_format: Literal["full", "sharded"] = "full"
    """full: model.safetensors and optimizer.pt, gathered whole by the main process (under FSDP it holds the whole
    state meanwhile: 84 GB for 7B parameters with Adam's moments). sharded (with fsdp): each process writes its own
    shards through torch.distributed.checkpoint and nothing is gathered; any number of FSDP processes resumes from
    them (the library reshards). A run resumes from either kind, whichever this option says now."""
    fsdp_mixed_precision: Literal["auto", "bf16", "off"] = "auto"
    """With fsdp: bf16 parameters in forward and backward, gradients reduced in fp32 (auto: on CUDA only; bf16
    matmuls are ~100x slower on CPUs without native bf16 products)."""
    tensorboard: bool = False
    """Also write the metrics.jsonl values as TensorBoard events under run_dir/tensorboard (needs the
    tensorboard package: pip install 'simslm[tensorboard]')."""
    allow_replan: bool = False
    """Resume a run planned for another number of processes by re-planning its remaining steps: the total
    tokens stay, and the schedule continues from the tokens already seen. Off: such a resume is refused."""
    compile: bool = False
    """Compile each micro-batch's forward and loss with torch.compile (1.1-1.6x the eager step on 2 CPU cores
    from 12k to 850k parameters, after 10-35 s of compiling; docs/BENCHMARKS.md); under --fsdp each decoder
    layer's forward instead, as torchtitan compiles per block. Losses agree with eager to 1e-4, not bit for bit;
    if compiling fails, the run says so and trains eagerly."""
    compile_mode: Literal["auto", "default", "max-autotune-no-cudagraphs"] = "auto"
    """torch.compile's mode with --compile. auto: max-autotune-no-cudagraphs on the CPU (inductor times its own
    C++ matrix kernels against the library's and keeps the faster: 1.1-1.2x default at depth 2, no longer to
    compile), default on CUDA (there autotuning benchmarks Triton kernels for every matrix product, and that has
    not been timed: no GPU lent)."""

    # Fields that may change between a run's first start and its resumes.
    resumable_changes: ClassVar[tuple[str, ...]] = ("run_dir", "allow_replan", "tensorboard", "compile",
                                                    "compile_mode", "validation_every", "checkpoint_format")
    # Fields added after sweeps had named runs by a hash of their config: at these values they are left out of
    # it, so a run planned before keeps its name (`simslm.scaling.sweep.run_id`).
    hashed_unless: ClassVar[dict[str, Any]] = {"validation_every": 0, "precision": "auto", "checkpoint_format": "full",
                                               "batching": "rows"}

    def check(self) -> None:
        budgets = ("budget_flops", "budget_tokens", "budget_tokens_per_parameter")
        if sum(getattr(self, name) is not None for name in budgets) != 1:
            raise ConfigError("give exactly one of --budget-flops, --budget-tokens and --budget-tokens-per-parameter")
        check_positive(self, *budgets, "batch_size", "grad_accumulation", "lr",
                       "grad_clip", "checkpoint_every", "num_checkpoints_kept", "num_validation_batches")
        check_positive(self, "lr_min", "weight_decay", "loss_chunk_tokens", allow_zero=True)
        if self.lr_min > self.lr:
            raise ConfigError(f"--lr-min ({self.lr_min}) must not exceed --lr ({self.lr})")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"--warmup-fraction must be in [0, 1), not {self.warmup_fraction}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name} must be in [0, 1), not {getattr(self, name)}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'simslm[tensorboard]'")
        check_device(self)
        check_positive(self, "validation_every", allow_zero=True)
        if self.validation_every and not self.validation_data:
            raise ConfigError("--validation-every needs --validation-data")
        if self.compile_mode != "auto" and not self.compile:
            raise ConfigError(f"--compile-mode {self.compile_mode} needs --compile")
        if self.checkpoint_format == "sharded" and not self.fsdp:
            raise ConfigError("--checkpoint-format sharded needs --fsdp: without it every process holds the whole "
                              "model, and the main one saves it")
        if self.base_model.startswith(model_lib.FAMILY_SOURCE):
            try:
                model_lib.parse_family_source(self.base_model)
            except ValueError as error:
                raise ConfigError(f"--base-model {error}") from None


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
    data_passes: float | None = None
    """How many times the run reads its data (None when not known); above MAX_DATA_PASSES it warns."""
    resumed_from: dict[str, int] | None = None
    """After a re-plan (another number of processes on resume): its step, the tokens seen by then, and the
    world size before. Steps from there on take `tokens_per_step` each."""
    schedule: dict[str, int] | None = None
    """After a re-plan: the first plan's total_steps, warmup_steps and tokens_per_step, which the learning
    rate keeps following (by tokens seen), so it neither jumps nor restarts."""
    data_sha256: str | None = None
    """The training data's `index_digest` when the run started: a resume on data built again since (the same
    folder name, other sequences) is refused, not continued from a position in data it never saw."""
    batching: str = "rows"
    """`TrainConfig.batching`. With pieces, `tokens_per_step` and the totals are planned from the mean document
    (the steps hold as many tokens as their documents), and the run counts the tokens it sees."""

    def tokens_before(self, step: int) -> int:
        """Training tokens seen before `step` (0-based), across re-plans."""
        if self.resumed_from is None:
            return step * self.tokens_per_step
        return self.resumed_from["tokens"] + (step - self.resumed_from["step"]) * self.tokens_per_step

    def replanned(self, fresh: "Plan", step: int) -> "Plan":
        """This plan continued from `step` with `fresh`'s tokens per step (another number of processes): the
        total tokens as close as whole steps allow, the schedule unchanged."""
        seen = self.tokens_before(step)
        steps_left = max(0, round((self.total_tokens - seen) / fresh.tokens_per_step))
        total_tokens = seen + steps_left * fresh.tokens_per_step
        return dataclasses.replace(
            fresh, total_steps=step + steps_left, warmup_steps=self.warmup_steps, total_tokens=total_tokens,
            total_flops=fresh.flops_per_token["all_params"] * total_tokens,
            resumed_from={"step": step, "tokens": seen, "world_size": self.world_size},
            schedule=self.schedule or {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                                       "tokens_per_step": self.tokens_per_step})


# How far a run's compute (whole steps of a batch) may stray from its FLOP budget before `train` and the fits say
# so: the demo's runs land within 0.2% of theirs; a budget of a few steps or less at a size cannot be met.
OFF_BUDGET = 0.1


# Muennighoff et al. (2023), "Scaling Data-Constrained Language Models": up to about 4 passes
# over the data are nearly as good as fresh tokens; past that, returns fall off fast.
MAX_DATA_PASSES = 4


@dataclass(frozen=True, kw_only=True)
class Losses:
    """Mean cross-entropy in nats per token over all targets, the speech targets and the text targets."""

    loss: float | None = None
    loss_speech: float | None = None
    """The paper's main loss: speech targets only."""
    loss_text: float | None = None


RESULT_FILE = "result.json"


RUN_LOCK = ".lock"  # held while a process trains the run (and by a sweep while it trains and evaluates it)


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a finished run reports in `result.json`, written last and atomically: a run is done when it exists.

    Sweeps, the demo and the text-LM family read runs through `RunResult.load`, never
    through the file's keys.
    """

    steps: int
    tokens: int
    flops: float
    """Training compute, 6 N D with N all parameters."""
    parameters: model_lib.ParameterGroups
    final_train: Losses
    """Mean over the last 10 steps."""
    validation: Losses | None
    """On validation_data (None when the run had none)."""
    wall_sec: float
    """Wall time of the whole run, resumes included."""
    peak_flops_measured: float
    model_dir: str = "model"
    """The trained model folder, relative to the run directory."""
    validation_batches: list[list[float]] | None = None
    """Each validation batch's sums (`VALIDATION_SUMS`), for intervals on loss differences between runs."""

    @property
    def held_out(self) -> bool:
        """Whether the losses to compare runs by are validation losses (else the final training ones)."""
        return self.validation is not None

    @property
    def comparison_losses(self) -> Losses:
        """Validation losses when the run has them, else the final training losses."""
        return self.validation if self.validation is not None else self.final_train

    def save(self, run_dir: str | os.PathLike) -> None:
        """Write `result.json` atomically."""
        storage.write_json(Path(run_dir) / RESULT_FILE, asdict(self))

    @staticmethod
    def exists(run_dir: str | os.PathLike) -> bool:
        """Whether the run finished (its result was written)."""
        return (Path(run_dir) / RESULT_FILE).exists()

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "RunResult":
        """The result of a finished run; a ValueError naming the file when it is not one."""
        path = Path(run_dir) / RESULT_FILE
        try:
            data = storage.read_json(path)
            return cls(**{**data, "parameters": model_lib.ParameterGroups(**data["parameters"]),
                          "final_train": Losses(**data["final_train"]),
                          "validation": Losses(**data["validation"]) if data.get("validation") else None})
        except FileNotFoundError:
            raise ValueError(f"{path}: missing (the run has not finished)") from None
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{path}: not a run result ({error.__class__.__name__}: {error})") from None

    def model_path(self, run_dir: str | os.PathLike) -> Path:
        """The model folder of the run at `run_dir` (older results stored it absolute)."""
        return Path(run_dir) / self.model_dir


def make_plan(config: TrainConfig, model, context_length: int, world_size: int, vocab_size: int,
              batches_per_epoch: int | None = None, mean_piece_targets: float | None = None) -> Plan:
    """Steps from the budget: tokens = C / (6N) (or the token budget), steps = tokens / tokens per step.

    `batches_per_epoch` (per process, from the loader) gives the passes over the data. With `batching` pieces,
    `mean_piece_targets` (the scored targets of the data's mean document) stands for a row's tokens."""
    flops = model_lib.flops_per_token(model, context_length)
    per_item = context_length if config.batching == "rows" else mean_piece_targets
    tokens_per_step = max(1, round(config.batch_size * config.grad_accumulation * world_size * per_item))
    if config.budget_tokens is not None:
        budget_tokens = config.budget_tokens
    elif config.budget_tokens_per_parameter is not None:
        budget_tokens = config.budget_tokens_per_parameter * model_lib.parameter_groups(model).total
    else:
        budget_tokens = config.budget_flops / flops["all_params"]
    total_steps = max(1, round(budget_tokens / tokens_per_step))
    warmup_steps = math.ceil(config.warmup_fraction * total_steps)  # TrainingArguments.get_warmup_steps
    total_tokens = total_steps * tokens_per_step
    return Plan(total_steps=total_steps, warmup_steps=warmup_steps, tokens_per_step=tokens_per_step,
                total_tokens=total_tokens, total_flops=flops["all_params"] * total_tokens, flops_per_token=flops,
                parameter_groups=asdict(model_lib.parameter_groups(model)), context_length=context_length,
                world_size=world_size, vocab_size=vocab_size, batching=config.batching,
                data_passes=(round(total_steps * config.grad_accumulation / batches_per_epoch, 3)
                             if batches_per_epoch else None))


def learning_rate(step: int, plan: Plan, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine towards `lr_min`: a function of (step, total).

    After a re-plan the step is counted in the first plan's steps, from the tokens seen."""
    total_steps, warmup_steps = plan.total_steps, plan.warmup_steps
    if plan.schedule is not None:
        total_steps, warmup_steps = plan.schedule["total_steps"], plan.schedule["warmup_steps"]
        step = plan.tokens_before(step) / plan.schedule["tokens_per_step"]
    # slamkit's schedule, exactly: the HF Trainer's `cosine_with_min_lr` (transformers' optimization.py,
    # `_get_cosine_schedule_with_warmup_lr_lambda` with min_lr_rate = lr_min / lr), whose step k runs at factor
    # k / W during the W warm-up steps (0 at the first) and then decays over the T - W steps after them, not
    # quite reaching lr_min at the last.
    if step < warmup_steps:
        return config.lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config.lr_min + (config.lr - config.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def changed_settings(config: TrainConfig, run_dir: Path) -> list[str]:
    """The settings in which the run stored in `run_dir` (if any) differs from `config`, leaving out those a
    resume may change: a moved run folder (or a copied sweep) resumes where it is now, and may allow a re-plan.

    A folder it reads (data, validation data, a base model's folder) counts as the same when it is named alike,
    or when it stands where it stood relative to the run folder: the two were moved together, as a sweep moves
    with its data (sweep.json's portable paths); the new names then replace the old in config.json."""
    stored_config = run_dir / "config.json"
    if not stored_config.exists():
        return []
    stored = TrainConfig.from_dict(storage.read_json(stored_config), source=str(stored_config))

    def same(name: str) -> bool:
        before, now = getattr(stored, name), getattr(config, name)
        if before == now:
            return True
        return (name in ("data", "validation_data", "base_model") and bool(before) and bool(now)
                and _from_run(before, stored.run_dir) == _from_run(now, config.run_dir))

    return [field.name for field in dataclasses.fields(TrainConfig)
            if field.name not in config.resumable_changes and not same(field.name)]


def _from_run(path: str, run_dir: str) -> str:
    """Where `path` stands relative to the run folder (both as typed, so relative to the same folder)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))


def placed_input(run_dir: str | os.PathLike, stored: dict[str, Any], name: str) -> str | None:
    """A folder a run read (`data`, `validation_data`) as its config.json has it, found from here.

    config.json keeps paths as typed: relative to wherever `train` ran, which `eval` from another folder (or after
    the run moved with its data) does not know; "seq" was then looked for under the current folder. Where the path
    stands relative to the run folder does not depend on that folder (`_from_run`, as a resume compares them):
    that place under `run_dir` is taken when something is there, else the path as typed."""
    value, typed_run_dir = stored.get(name), stored.get("run_dir")
    if value and typed_run_dir and os.path.isabs(value) == os.path.isabs(typed_run_dir):
        here = Path(run_dir) / _from_run(value, typed_run_dir)
        if here.exists():  # as typed when that is the same folder (a run that did not move): its own name
            return value if os.path.exists(value) and os.path.samefile(value, here) else str(here)
    return value


def resume_plan(config: TrainConfig, run_dir: Path, fresh: Plan, resume_step: int, *, quiet: bool = False) -> Plan:
    """The plan to train by: `fresh` for a new run; for a resumed one, the stored plan, re-planned from
    `resume_step` when the number of processes changed and the config allows it (refused otherwise).

    Also refuses a run folder that holds a run with another config."""
    changed = changed_settings(config, run_dir)
    if changed:
        raise ValueError(f"{run_dir} holds a run with another config (other {', '.join(changed)}); use a new run_dir")
    stored_plan = run_dir / "plan.json"
    if not stored_plan.exists():
        return fresh
    try:
        previous = Plan(**storage.read_json(stored_plan))
    except TypeError as error:
        raise ValueError(f"{stored_plan}: not a plan ({error})") from None
    if previous.data_sha256 not in (None, fresh.data_sha256):  # None: a run started before runs recorded it
        raise ValueError(f"{config.data} was built again since {run_dir} started (its index.json differs): the "
                         f"run's steps so far saw the data before. Train into a new run_dir, or build the new data "
                         f"into a new folder")
    if previous.world_size == fresh.world_size:
        return previous if previous.resumed_from is not None else fresh
    if not config.allow_replan:
        # Other processes change the tokens per step, hence the schedule: never re-planned silently
        # (the lr would jump back up and result.json would count the wrong tokens).
        raise ValueError(f"{run_dir} was planned for {previous.world_size} process(es), this run has "
                         f"{fresh.world_size}; resume it with the same number, or pass --allow-replan to keep "
                         f"its total tokens and continue its schedule")
    replanned = previous.replanned(fresh, resume_step)
    if not quiet:  # one line for a run, not one per process
        print(f"simslm train: re-planned {run_dir} from step {resume_step} for {fresh.world_size} process(es): "
              f"{replanned.total_steps} steps in all, {replanned.total_tokens:,} tokens (planned "
              f"{previous.total_tokens:,})", file=sys.stderr)
    return replanned

