"""A run's processes: torchrun's group (or one process), requests to stop at the end of the step in hand, and
under FSDP the model on every process but the main one as a skeleton filled from the main one's weights.
"""

from __future__ import annotations

import atexit
import copy
import os
import signal
import threading
from pathlib import Path
from typing import Any, ClassVar

from simslm import jobs
from simslm.config import ConfigError
from simslm.train.build import model_skeleton
from simslm.train.plan import TrainConfig


def full_options():
    """Full (unsharded, CPU) state dicts: the same files from one process, DDP or FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


class StopRequest:
    """A request to stop training, taken at the end of the step in hand, with a checkpoint there, rather than
    mid-step (which redoes every step since the last periodic checkpoint):

    - inside a submitit job, the warning its cluster sends ahead of the job's time limit (SLURM's USR2,
      `--warning-s` before it); `finish` then runs submitit's own handler, which requeues the job to resume;
    - elsewhere, SIGTERM (the time limit of one's own SLURM job, `kill`, a sweep stopping its runs); `finish`
      raises `jobs.Stopped`. The same request arriving twice (a scheduler signals every process of the job, and
      the sweep or torchrun forwards it too) is one request; a SIGTERM more than `jobs.SIGTERM_REPEAT_S` after
      the first ends the process at once, as the first used to.

    Only in the main thread, and only inside the `with` around the loop: outside it, signals keep their handlers.
    """

    def __init__(self) -> None:
        self.noted = False
        self.signum: int | None = None
        self.previous: Any = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self
        if os.environ.get("SUBMITIT_EXECUTOR"):
            import submitit

            signum = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
            taken = callable(signal.getsignal(signum))  # submitit's handler is in place
        else:
            signum = signal.SIGTERM
            # The `simslm` command's own (jobs.stop_on_sigterm) gives way; a handler someone else installed stays.
            taken = signal.getsignal(signum) in (signal.SIG_DFL, jobs.stop_on_sigterm)
        if taken:
            self.signum, self.previous = signum, signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.noted = True
        if signum == signal.SIGTERM:
            jobs.first_sigterm()  # ends the process at once if an earlier SIGTERM was a while ago

    def __exit__(self, *exc_info: Any) -> None:
        if self.signum is not None:
            signal.signal(self.signum, self.previous)

    def finish(self, run_dir: Path, step: int) -> None:
        """Once the checkpoint of `step` is saved: submitit's handler, as if the warning came now (the main
        process requeues the job and exits; the others return), or `jobs.Stopped`."""
        if self.signum == signal.SIGTERM:
            raise jobs.Stopped(f"{run_dir}: stopped by SIGTERM after step {step}, which is saved as a checkpoint; "
                               f"run the same command again to resume")
        if self.signum is None:  # asked through another process only, with nothing to hand over to: stop alike
            raise jobs.Stopped(f"{run_dir}: stopped with the other processes after step {step}, which is saved as "
                               f"a checkpoint; run the same command again to resume")
        self.previous(self.signum, None)


class Distributed:
    """torchrun's environment, or a single process."""

    failed: ClassVar[bool] = False  # a run of this process's group ended in an error (`_destroy_group`)

    def __init__(self, device: str):
        import torch
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        # Said before anything is written: `cuda:1` trained on the CPU, and `cuda` on a machine without CUDA failed
        # in torch's assertion once the run's folder was there.
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}"
                              f"{'' if torch.version.cuda else ', built without CUDA'}); use --device auto or cpu")
        if device.startswith("cuda:"):
            if self.world_size > 1:
                raise ConfigError(f"--device {device} names one GPU for all {self.world_size} processes; under "
                                  f"torchrun give --device cuda, and each process takes its LOCAL_RANK's GPU")
            if int(device.split(":")[1]) >= torch.cuda.device_count():
                raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
            torch.cuda.set_device(device)  # what "cuda" alone and the host's synchronisations mean in this process
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        self.device = device if device.startswith("cuda:") else "cuda" if use_cuda else "cpu"
        if self.world_size > 1 and not dist.is_initialized():
            if use_cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                self.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            dist.init_process_group("nccl" if use_cuda else "gloo")
            atexit.register(_destroy_group)
        self.is_main = self.rank == 0
        if not self.is_main:
            # transformers' notices (new embedding rows, say) once per run, not once per process: 64 of them in a
            # log of a run on 8 nodes. Its errors still show.
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity_error()

    def __enter__(self) -> "Distributed":
        return self

    def __exit__(self, kind, *_) -> None:
        # A stop on request (`jobs.Stopped`, SIGTERM) or submitit's requeue (its handler's SystemExit) ends every
        # process after the same step, none inside a collective: the group is destroyed at exit, as after a run's end.
        if kind is not None and not issubclass(kind, (jobs.Stopped, SystemExit)):
            Distributed.failed = True

    def all_sum(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_on_device(self, values: list[float]) -> Any:
        """`values` summed over every process, as a float64 tensor on this process's device that is not read back:
        on a GPU the copy and the sum are queued behind the work launched so far, and the host goes on launching
        (`all_sum`'s read back would wait for all of it, once a step)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        if self.device.startswith("cuda"):
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """The main process's `value` on every process (pickled; these processes are one job's)."""
        import torch.distributed as dist

        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _destroy_group() -> None:
    """At the process's exit, the process group `Distributed` made, as torch asks of a normal exit (left to the
    interpreter's end, gloo's worker threads could abort the process: "terminate called without an active
    exception", SIGABRT; pytorch/pytorch#190489). It does not end those threads once a DDP or FSDP module has held
    the group (still there after it, 2026-12-06): `cli.run` leaves such a process without the interpreter's
    finalisation. At exit, not when a run ends: one process may train several runs (`textlm pretrain`), and a group
    made again in a process can meet the last one's addresses in torchrun's store. Not after an error: a peer may
    still wait in a collective, and destroying would wait on it."""
    import torch.distributed as dist

    if not Distributed.failed and dist.is_initialized():
        dist.destroy_process_group()


def skeleton_unless_main(model, config: TrainConfig, distributed: "Distributed"):
    """Under FSDP: the main process's model as built; on the others, the same model on the meta device (no weights),
    made from the main process's config, which holds the grown vocabulary. `send_weights` fills it once sharded."""
    model_config = distributed.broadcast_object(model.config if distributed.is_main else None)
    return model if distributed.is_main else model_skeleton(model_config, config, distributed.device)


def gathered_model(model, config: TrainConfig, distributed: "Distributed"):
    """An FSDP model's weights gathered into a plain model on the main process (None on the others), which the
    run's last validation scores and saves. The gathered tensors become its weights: one copy of them in memory,
    where building the base model again to load them into held two, and the optimiser's state gathered beside."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    weights = get_model_state_dict(model, options=full_options())  # a collective; only rank 0 receives them
    if not distributed.is_main:
        return None
    plain = model_skeleton(model.config, config, "cpu")
    plain.generation_config = copy.deepcopy(model.generation_config)  # the base model's, as model/ keeps it
    plain.load_state_dict(weights, strict=True, assign=True)
    plain.tie_weights()  # `assign` gave tied names a parameter each
    buffers = dict(model.named_buffers())  # not in the state dict: RoPE's frequencies, whole on every process
    for name, _ in list(plain.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        plain.get_submodule(owner)._buffers[leaf] = buffers[name].detach().to("cpu").clone()
    return plain


def send_weights(model, core, full_weights: dict[str, Any], distributed: "Distributed") -> None:
    """The main process's weights into every process's shards (FSDP2's broadcast from rank 0), and its buffers
    whole: RoPE's frequencies are buffers outside the state dict, which the skeleton has only on the meta device."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not distributed.is_main:
        core.to_empty(device=distributed.device)
    set_model_state_dict(model, full_weights, options=StateDictOptions(full_state_dict=True,
                                                                       broadcast_from_rank0=True))
    for buffer in core.buffers():
        dist.broadcast(buffer, src=0)

