"""The machine a process runs on: the cores it may use (its CPU affinity and its container's CPU quota), the memory
glibc keeps for it, the torch device and weights' precision asked for, its launcher's shard, and its open files."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, MutableMapping


def default_workers() -> int:
    """Worker processes for CPU-bound batch jobs: one per core this process may use, by its CPU affinity and by its
    container's CPU quota, which affinity does not show (a pod limited to 4 CPUs on a 64-core host sees 64, and 64
    workers each holding HuBERT run it out of memory)."""
    cores = _affinity_cores()
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _affinity_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_within_quota(environ: MutableMapping[str, str] = os.environ) -> None:
    """OMP_NUM_THREADS set to a container's CPU quota where that is below the cores it sees, unless it is set: torch
    and the BLAS libraries read it when they load, and otherwise start a thread per core of the host, which the
    quota then throttles (PyTorch's CPU performance guide: threads beyond the CPUs given slow a step down)."""
    quota = cgroup_cpu_quota()
    if "OMP_NUM_THREADS" not in environ and quota and math.ceil(quota) < _affinity_cores():
        environ["OMP_NUM_THREADS"] = str(math.ceil(quota))


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota() -> float | None:
    """The CPUs a cgroup's bandwidth limit allows this process (quota / period: cgroup v2's cpu.max, else v1's
    cpu.cfs_quota_us and cpu.cfs_period_us), None without a limit. Read as joblib's loky reads it
    (`_cpu_count_cgroup`), without importing joblib, which costs 0.26 s in each worker that asks."""
    try:
        if (CGROUP_ROOT / "cpu.max").is_file():
            quota, period = (CGROUP_ROOT / "cpu.max").read_text().split()[:2]
        else:
            quota = (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (CGROUP_ROOT / "cpu" / "cpu.cfs_period_us").read_text().strip()
        quota_us, period_us = int(quota), int(period)
    except (OSError, ValueError):  # no such files (no limit, not Linux), "max", or something unexpected
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def share_cores(num_workers: int) -> int:
    """Give each worker process its share of the cores for BLAS and (when loaded) torch; return that share.

    Workers that each start as many threads as there are cores oversubscribe them; torch
    is not imported here just for this, since that alone costs a logmel worker seconds.
    """
    threads = max(1, default_workers() // max(1, num_workers))
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


# glibc's mallopt parameters (malloc.h) and the values simslm sets: below 32 MiB (the largest mmap threshold
# glibc accepts on 64-bit) a block comes from the heap, and up to 1 GiB of freed heap stays with the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 1 << 30


_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


_freed_memory_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the OS.

    By default glibc serves a block over ~128 KiB-32 MiB with a fresh mmap and unmaps it when freed, or trims
    the heap, so each step of a small model on the CPU page-faults its activations, logits and gradients in
    anew: 320-640 faults a step at the demo's sizes, and 13-22% of the step on a 2-core VM (docs/LOG.md,
    2026-12-03). PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc preloaded; this needs no
    library. A process's memory then stays at its peak until it exits, as it does with those allocators.

    Once per process, on glibc only; left alone when the user set malloc's variables, preloads an allocator or
    sets SIMSLM_KEEP_FREED_MEMORY=0 (a shared host where memory should go back as soon as it is free).
    True when the settings are in force."""
    global _freed_memory_kept
    if _freed_memory_kept:
        return True
    if (not sys.platform.startswith("linux") or any(os.environ.get(name) for name in _MALLOC_SETTINGS)
            or os.environ.get("SIMSLM_KEEP_FREED_MEMORY", "1") == "0"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to set
        return False
    _freed_memory_kept = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and
                              mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _freed_memory_kept


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed: CUDA's `torch.OutOfMemoryError`, the CPU allocator's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory", under a memory limit), numpy's MemoryError.
    (Where the kernel's OOM killer ends the process instead, no Python error is raised.)"""
    import torch

    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error)))


def release_device_memory(device: Any) -> None:
    """Give back the blocks CUDA's caching allocator keeps after an allocation failed. Call it outside the
    `except` block: until then the traceback's frames hold the tensors that filled the memory."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def launcher_shard(num_shards: int) -> int:
    """The part of `num_shards` that the launcher gives this process: RANK under torchrun, else
    SLURM_ARRAY_TASK_ID in a SLURM array (modulo, so an array numbered from 1 covers every part), else 0."""
    for variable in ("RANK", "SLURM_ARRAY_TASK_ID"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable]) % num_shards
    return 0


def weights_dtype(dtype) -> dict[str, Any]:
    """`from_pretrained`'s keyword for the weights' dtype (a torch dtype, or "auto" for the one they were saved
    in): `dtype` since transformers 4.56, which warns at `torch_dtype` (a line in every run's log); `torch_dtype`
    before it."""
    import transformers

    major_minor = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if major_minor >= (4, 56) else "torch_dtype": dtype}


def float32_weights() -> dict[str, Any]:
    """`from_pretrained`'s keyword for fp32 weights (`weights_dtype`)."""
    import torch

    return weights_dtype(torch.float32)


def torch_device(name: str) -> str:
    """The torch device a --device option names: auto (CUDA when there is one), cpu, cuda (this process's GPU:
    LOCAL_RANK under torchrun, else the first) or cuda:N; ValueError when CUDA is asked for and absent."""
    if name == "cpu":
        return name
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device here")
    if name == "cuda":
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    elif name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        # Said before any work: torch's "invalid device ordinal" came once the model was being moved.
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    return name


# Files a process keeps free for everything else it opens (libraries, logs, sockets) beside what it asks room for.
SPARE_OPEN_FILES = 256


def allow_open_files(count: int, what: str, fix: str) -> None:
    """Make room for `count` more files held open at once: the soft limit (`ulimit -n`, often 1,024 on a cluster's
    nodes) raised as far as the hard one allows; a ValueError saying `what` needs them and how to `fix` it when
    even the hard limit has no room."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS)
        open_now = 0
    needed = open_now + count + SPARE_OPEN_FILES
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    refusal = ValueError(f"{what}: {needed} open files needed, and this process may open {soft} (hard limit "
                         f"{'unlimited' if hard == resource.RLIM_INFINITY else hard}); {fix}, or raise `ulimit -n`")
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise refusal
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError):  # a system that caps it lower than its hard limit says (macOS's OPEN_MAX)
        raise refusal from None
