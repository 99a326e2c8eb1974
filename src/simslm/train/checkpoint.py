"""Checkpoints: written atomically with their checksums (whole, or sharded by each process), found and checked on
resume, read back bit for bit; and `simslm model from-checkpoint`, a run's model at one of them as a model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simslm import model as model_lib
from simslm import storage
from simslm.config import Config, ConfigError
from simslm.sequences.build import speech_units_folder
from simslm.sequences.loader import PackedLoader, index_digest
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.build import model_skeleton
from simslm.train.distributed import Distributed, full_options
from simslm.train.plan import TrainConfig, placed_input


def _sha256(path: Path, block: int = 16 << 20) -> str:
    """A file's sha256, read a block at a time: a 7B model's optimizer.pt is 56 GB, which `read_bytes` would hold
    whole in memory beside the state just saved from it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def full_state(model, optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and optimiser state gathered in full (a collective under FSDP: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return (get_model_state_dict(model, options=full_options()),
            get_optimizer_state_dict(model, optimizer, options=full_options()))


def save_checkpoint(run_dir: Path, step: int, model, model_state: dict[str, Any], optimizer_state: dict[str, Any],
                    loader: PackedLoader, keep: int, wall_sec: float = 0.0, tokens_seen: int = 0) -> Path:
    """Write checkpoints/step-N atomically: files, then a checksum list, then the rename."""
    import torch
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / f"step-{step:08d}"
    with storage.atomic_path(final) as staging:
        staging.mkdir()
        # Tied embeddings appear under two names sharing storage; safetensors wants them apart.
        save_file({name: tensor.detach().clone().contiguous() for name, tensor in model_state.items()},
                  str(staging / "model.safetensors"))
        torch.save(optimizer_state, staging / "optimizer.pt")
        _finish_checkpoint(staging, step, model, loader, wall_sec, tokens_seen, ["model.safetensors", "optimizer.pt"])
    _prune_checkpoints(run_dir, keep)
    return final


# The folder of a sharded checkpoint's torch.distributed.checkpoint files (a .distcp per process, and .metadata).
SHARDED = "sharded"


def save_sharded_checkpoint(run_dir: Path, step: int, model, optimizer, loader: PackedLoader, keep: int,
                            distributed: "Distributed", wall_sec: float = 0.0, tokens_seen: int = 0) -> Path:
    """checkpoints/step-N with each process's shards of the weights and the optimiser's state, written by that
    process (a collective: every process calls it); then, by the main one, the loop's state, the checksums of
    every file and the rename. Nothing is gathered."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = run_dir / "checkpoints" / f"step-{step:08d}"
    staging = final.with_name(f".{final.name}.saving")  # one name for every process (atomic_path's holds a pid)
    if distributed.is_main:
        for stale in final.parent.glob(".step-*.saving"):  # a save killed part way
            shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir(parents=True)
    distributed.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(staging / SHARDED))
    if distributed.is_main:
        _finish_checkpoint(staging, step, model, loader, wall_sec, tokens_seen,
                           sorted(path.relative_to(staging).as_posix() for path in (staging / SHARDED).iterdir()))
        storage.replace_folder(staging, final)
        _prune_checkpoints(run_dir, keep)
    return final


# Beside a checkpoint's weights: the model's config, its generation settings (the base model's, which model/ keeps)
# and its buffers (RoPE's frequencies, outside the state dict), from which a run resumes without loading its base
# model (`checkpoint_skeleton`).
MODEL_CONFIG, GENERATION_CONFIG, BUFFERS = "model_config.json", "generation_config.json", "buffers.safetensors"


def _finish_checkpoint(staging: Path, step: int, model, loader: PackedLoader, wall_sec: float, tokens_seen: int,
                       names: list[str]) -> None:
    """The model's config, generation settings and buffers, the random generators and the loop's state beside a
    checkpoint's weights (`names`), then the checksums of them all, written last: a checkpoint without them did not
    finish."""
    import torch
    from safetensors.torch import save_file

    model.config.to_json_file(staging / MODEL_CONFIG, use_diff=False)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.to_json_file(staging / GENERATION_CONFIG)
        names = [*names, GENERATION_CONFIG]
    # Every process holds the buffers whole, FSDP or not; as they are, not recomputed from the config: a base
    # model's rope scaling may have computed them from a config the run changed since (max_position_embeddings).
    save_file({name: buffer.detach().to("cpu").contiguous().clone() for name, buffer in model.named_buffers()},
              str(staging / BUFFERS))
    storage.modes_as_umask_allows(staging)  # the weights' file too (safetensors makes them its owner's only)
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, staging / "rng.pt")
    (staging / "state.json").write_text(json.dumps({"step": step, "loader": loader.state_dict(),
                                                    "wall_sec": round(wall_sec, 3), "tokens_seen": tokens_seen}))
    checksums = {name: _sha256(staging / name) for name in [*names, MODEL_CONFIG, BUFFERS, "rng.pt", "state.json"]}
    (staging / "checksums.json").write_text(json.dumps(checksums))


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_problem(folder: Path, unread: tuple[str, ...] = ()) -> str | None:
    """Why a checkpoint cannot be used (None when every file matches its checksum); `unread`, files the caller does
    not read and need not be checked (a model taken from it reads no optimizer.pt, 56 GB at 7B)."""
    listing = folder / "checksums.json"
    if not listing.exists():
        return "no checksums.json (written last: the save did not finish)"
    try:
        checksums = json.loads(listing.read_text())
        if not isinstance(checksums, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        return "checksums.json is unreadable"
    for name, digest in checksums.items():
        if name in unread:
            continue
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


def checkpoint_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's loop state: step, loader position, the wall time spent up to it and the training tokens seen
    (not in checkpoints written before `batching` pieces, whose runs saw `Plan.tokens_before(step)`)."""
    return storage.read_json(folder / "state.json")


def load_checkpoint(folder: Path, model, optimizer, loader: PackedLoader, *, from_main: bool = False,
                    is_main: bool = True) -> int:
    """Restore everything a checkpoint holds; return its step. From a full checkpoint with `from_main` (FSDP), the
    main process alone reads the weights and the optimiser's state and sends each process its shards; from a
    sharded one, every process reads its own."""
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True) if from_main else full_options()
    reads = is_main or not from_main
    try:
        if (folder / SHARDED).is_dir():  # every process reads its own shards, resharded to this run's processes
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_state, optimizer_state = get_state_dict(model, optimizer)  # the optimiser's state initialised
            state = {"model": model_state, "optimizer": optimizer_state}
            dcp.load(state, checkpoint_id=str(folder / SHARDED))
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        else:
            set_model_state_dict(model, load_file(str(folder / "model.safetensors")) if reads else {},
                                 options=options)
            set_optimizer_state_dict(model, optimizer, torch.load(folder / "optimizer.pt", weights_only=True)
                                     if reads else {}, options=options)
    except (RuntimeError, KeyError, ValueError) as error:  # e.g. weights of another model size
        message = " ".join(str(error).split())[:300]
        raise ValueError(f"{folder}: does not fit this run's model ({error.__class__.__name__}: {message}); "
                         f"it belongs to another run") from None
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = checkpoint_state(folder)
    loader.load_state_dict(state["loader"])
    return int(state["step"])


# What a model folder made from a checkpoint records of it: the run (relative to the folder), the step, the tokens.
CHECKPOINT_FILE = "simslm_checkpoint.json"


@dataclass(frozen=True, kw_only=True)
class FromCheckpointConfig(Config):
    """What `simslm model from-checkpoint` does."""

    checkpoint: str
    """A checkpoint of a run (RUN/checkpoints/step-N), whole or sharded, of a run still training or finished."""
    out: str
    """Folder to write: the model as it was at that step, a folder `simslm eval` and `generate` read as they read a
    run's model/ (and plain `from_pretrained` loads)."""

    def check(self) -> None:
        if os.path.realpath(self.out) == os.path.realpath(self.checkpoint):  # OUT is positional: no --out to name
            raise ConfigError(f"{self.out}: the checkpoint itself, which the model folder would replace; write to "
                              f"another folder")


def model_from_checkpoint(config: FromCheckpointConfig) -> Path:
    """`simslm model from-checkpoint`: a run's model at one of its checkpoints, as a model folder like its model/.

    The weights are the checkpoint's as stored (their dtype kept), set into the model its model_config.json describes
    (a sharded checkpoint's shards read by this one process, whatever number of processes wrote them), with its
    buffers; beside them the run's vocabulary and the units its data came from, and CHECKPOINT_FILE. A run's
    checkpoints are replaced as it trains (`num_checkpoints_kept`): the folder is what stays of one. Written whole
    beside `out` and moved into place."""
    folder = Path(config.checkpoint)
    run_dir = folder.parent.parent
    if not (folder / "state.json").is_file() or not (run_dir / "config.json").is_file():
        listed = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
        steps = sorted(path.name for path in listed.glob("step-*")) if listed.is_dir() else []
        there = f"; the checkpoints in {listed}: {', '.join(steps)}" if steps else ""
        raise ValueError(f"{folder}: not a checkpoint of a run (RUN/checkpoints/step-N, with state.json, in a run "
                         f"folder with config.json){there}")
    stored = storage.read_json(run_dir / "config.json")
    if not isinstance(stored, dict):
        raise ValueError(f"{run_dir / 'config.json'}: not a run's config (a JSON object of its options)")
    data = placed_input(run_dir, stored, "data")
    if not data or not (Path(data) / "tokenizer").is_dir():
        raise ValueError(f"{run_dir}: the data it trained on ({data}), whose tokenizer/ is the model's vocabulary, "
                         f"is not there; put the run back beside its data")
    plan = storage.read_json(run_dir / "plan.json") if (run_dir / "plan.json").is_file() else {}
    started_on = plan.get("data_sha256") if isinstance(plan, dict) else None
    if started_on not in (None, index_digest(data)):  # another vocabulary, or units of another codebook, perhaps
        raise ValueError(f"{data} was built again since {run_dir} started (its index.json differs), and the model's "
                         f"vocabulary is its tokenizer/ as the run read it; build the new data into a new folder")
    if not (folder / MODEL_CONFIG).is_file():
        raise ValueError(f"{folder}: written before checkpoints kept their model's config (no {MODEL_CONFIG}), so "
                         f"the model it holds is not known; a run's finished model/ is")
    try:
        if problem := checkpoint_problem(folder, unread=("optimizer.pt", "rng.pt")):  # the weights read, not Adam's
            raise ValueError(f"{folder}: {problem}")
        model = _checkpoint_model(folder)
        state = checkpoint_state(folder)
    except FileNotFoundError as error:  # the training went on and replaced it while it was read
        raise ValueError(f"{folder}: {Path(error.filename).name} went away while it was read (the run replaces "
                         f"its checkpoints as it trains); take a newer one") from None
    vocabulary = Vocabulary.load(Path(data) / "tokenizer")
    if (rows := model.get_input_embeddings().weight.shape[0]) < len(vocabulary):
        raise ValueError(f"{folder}: a model of {rows} token rows, but the run's data ({data}) has a vocabulary of "
                         f"{len(vocabulary)}: built again since the run started")
    out = Path(config.out)
    model_lib.check_replaceable_model(out, "a checkpoint's", "write to a new folder")
    with storage.atomic_path(out) as staging:
        model_lib.save_model(model, vocabulary.tokenizer, staging)
        vocabulary.save(staging)
        if units_folder := speech_units_folder(data):
            model_lib.write_model_units(staging, units_folder, final_dir=out)
        (staging / CHECKPOINT_FILE).write_text(json.dumps(
            {"run": storage.portable_path(run_dir, out), "step": int(state["step"]),
             "tokens_seen": state.get("tokens_seen")}, indent=2))
    return out


def _checkpoint_model(folder: Path):
    """The model a checkpoint holds, on the CPU, in the dtype its weights were stored in."""
    import torch
    from safetensors.torch import load_file
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM, GenerationConfig

    # Read here, not by from_pretrained, which takes a path that is not there for a hub id.
    stored = json.loads((folder / MODEL_CONFIG).read_text())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[stored["model_type"]].from_dict(stored))
    if (folder / SHARDED).is_dir():
        import torch.distributed.checkpoint as dcp

        # Tensors of the stored shapes and dtypes for the shards to be read into, by this process alone (no group).
        metadata = dcp.FileSystemReader(str(folder / SHARDED)).read_metadata().state_dict_metadata
        weights = {name[len("model."):]: torch.empty(entry.size, dtype=entry.properties.dtype)
                   for name, entry in metadata.items() if name.startswith("model.")}
        with warnings.catch_warnings():  # that it reads in one process, said even when told so
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load({"model": weights}, checkpoint_id=str(folder / SHARDED), no_dist=True)
    else:
        weights = load_file(str(folder / "model.safetensors"))
    problems = []
    try:  # not strict about missing names: a tied head may be saved under the embedding's alone
        if unexpected := model.load_state_dict(weights, strict=False, assign=True).unexpected_keys:
            problems.append(f"not its: {', '.join(unexpected[:3])}")
    except RuntimeError as error:  # a shape that differs
        problems.append(" ".join(str(error).split())[:300])
    model.tie_weights()  # `assign` gave a tied head its own name; tied, it is the embedding again
    if missing := [name for name, parameter in model.named_parameters() if parameter.is_meta]:
        problems.insert(0, f"no {', '.join(missing[:3])}")
    if problems:
        raise ValueError(f"{folder}: its weights do not fit its {MODEL_CONFIG} ({'; '.join(problems)})")
    buffers = load_file(str(folder / BUFFERS))
    for name, _ in list(model.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = buffers[name]
    if (folder / GENERATION_CONFIG).is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder), config_file_name=GENERATION_CONFIG)
    return model.eval()


def checkpoint_skeleton(checkpoint: Path | None, run_dir: Path, config: TrainConfig, device: str):
    """The skeleton of the model a checkpoint holds, from the config stored beside it: a run resuming from it needs
    no base model on any process, where it loaded one (28 GB for 7B parameters in fp32) only for the checkpoint to
    replace it. None where the checkpoint or the run folder stores no model config (written before they did):
    the base model is built, and the checkpoint must fit it.

    Refused, naming it: a checkpoint whose model is not the one the run started with (copied from another run),
    which would otherwise go on training another model."""
    if checkpoint is None or not (checkpoint / MODEL_CONFIG).is_file() or not (run_dir / MODEL_CONFIG).is_file():
        return None
    from transformers import AutoConfig, GenerationConfig

    # The version that wrote a config is not part of the model: a run may resume under a newer transformers.
    its, ours = ({key: value for key, value in storage.read_json(path).items() if key != "transformers_version"}
                 for path in (checkpoint / MODEL_CONFIG, run_dir / MODEL_CONFIG))
    if its != ours:
        differing = sorted(key for key in its.keys() | ours.keys() if its.get(key) != ours.get(key))
        raise ValueError(f"{checkpoint}: does not fit this run's model (its model differs from the run's in "
                         f"{', '.join(differing)}); it belongs to another run")
    skeleton = model_skeleton(AutoConfig.from_pretrained(str(checkpoint / MODEL_CONFIG)), config, device)
    if (checkpoint / GENERATION_CONFIG).is_file():
        skeleton.generation_config = GenerationConfig.from_pretrained(str(checkpoint),
                                                                      config_file_name=GENERATION_CONFIG)
    return skeleton


def fill_from_checkpoint(core, model, checkpoint: Path, device: str, *, sharded: bool) -> None:
    """A skeleton (`sharded` by FSDP or not) given memory, and its buffers the checkpoint's; the weights follow
    with the checkpoint (`load_checkpoint`)."""
    import torch
    from safetensors.torch import load_file

    core.to_empty(device=device)
    if not sharded:
        model.tie_weights()  # off the meta device each module got a parameter of its own; FSDP keeps its ties
    stored = load_file(str(checkpoint / BUFFERS))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(stored[name])

