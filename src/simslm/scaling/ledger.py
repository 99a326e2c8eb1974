"""A sweep's ledger: each run's status, read from the run directories themselves.

A run is finished when its `result.json` (written last and atomically by `train`) and its
`eval.json` exist, so a half-written result is never read and a finished run is never
repeated. A run in progress holds an exclusive lock on `<run>/.lock` (released by the OS
when its process dies), so a restarted sweep neither duplicates it nor waits on a dead one.
A run submitted to a cluster is recorded in `submitit/jobs.json`, and stays `queued` until
its job has ended, so that it is not submitted twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from pathlib import Path
from typing import Any

from simslm import jobs, slurm, storage
from simslm.eval.evaluate import benchmark_kind, result_label
from simslm.eval.layouts import BENCH_FILE, bench_digest
from simslm.eval.scoring import ScoringOptions
from simslm.scaling.sweep import load_sweep
from simslm.train.plan import RUN_LOCK


def _locked(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (trains it). Asked with a shared lock on a read-only descriptor, so
    a user who may only read a colleague's sweep can ask its status: locally flock takes any descriptor, and NFS,
    which emulates flock with POSIX locks, grants a read lock on one open for reading (a write lock would need
    write access). A file system without locks says nothing is held."""
    lock = run_dir / RUN_LOCK
    if not lock.exists():
        return False
    with open(lock, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return False
            raise
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def unevaluated(run_dir: Path, bench: tuple[str, ...]) -> tuple[str, ...]:
    """The benchmarks the sweep asks for that eval.json holds no result for, one whose sides past the model's
    positions were cut (scored before 2026-12-05, when cutting was the only way; a sweep scores with the defaults,
    which now score them whole, as slamkit does, so its runs are scored alike again), one scored on a sample of
    its pairs (`eval --max-pairs`, a quick look), or one of a benchmark folder built again since (`_stale`)."""
    eval_path = run_dir / "eval.json"
    evaluated = storage.read_json(eval_path)["benchmarks"] if eval_path.exists() else {}

    def scored(name: str) -> bool:
        entries = list(_results_of(evaluated, name).values())
        return bool(entries) and not any(
            isinstance(entry, dict) and (entry.get("num_cut") and (entry.get("scoring") or {}).get(
                "long_sides", "cut") != ScoringOptions.long_sides or entry.get("sampled_from")  # a quick look's
                                         or _stale(entry.get("bench_digest"), name, eval_path))
            for entry in entries)

    return tuple(name for name in bench if not scored(name))


def _results_of(evaluated: dict[str, Any], name: str) -> dict[str, Any]:
    """The results eval.json files under the --bench argument `name` (its modes and subsets too)."""
    label = result_label(name)  # as `simslm eval` files it: a hub id's label is its name and folder
    return {key: entry for key, entry in evaluated.items() if key == label or key.startswith(label + "/")}


def stale_results(run_dir: Path, bench: tuple[str, ...], results: dict[str, Any]) -> list[str]:
    """Which of a run's pairwise `results` (`read_results` of its eval.json) are of an earlier build of their
    benchmark folder (`_stale`)."""
    return sorted(key for name in bench for key, result in _results_of(results, name).items()
                  if _stale(result.bench_digest, name, run_dir / "eval.json"))


def _stale(digest: str | None, name: str, eval_path: Path) -> bool:
    """Whether a result (its recorded `digest`) is of another build of its benchmark folder than the one there now:
    the digest differs, or, a result that records none, the folder's bench.json (one `bench build` made) is newer
    than the eval.json holding it. A folder not here (a hub id not downloaded) is taken to be the one scored."""
    kind, _, target = benchmark_kind(name)
    folder = Path(target)
    if kind != "pairs" or not folder.is_dir():
        return False
    if digest:
        return digest != bench_digest(folder)
    built = folder / BENCH_FILE
    return built.exists() and built.stat().st_mtime > eval_path.stat().st_mtime


def _evaluated(run_dir: Path, bench: tuple[str, ...]) -> bool:
    """Whether eval.json holds a result for every benchmark the sweep asks for."""
    return not unevaluated(run_dir, bench)


def to_start(status: str) -> bool:
    """Whether a run in this status is this sweep's to (re)start: not done, not held by another process, and not
    waiting in a cluster's queue (submitted by an earlier `sweep run --no-wait`)."""
    return status not in ("done", "running", "queued")


def run_status(run: dict[str, Any], bench: tuple[str, ...], ledger: dict[str, Any] | None = None) -> str:
    """done, evaluating (trained, evaluation missing), running (locked), queued (its cluster job has not ended, nor
    taken the run yet), failed (its last attempt ended in an error: `run_error`), started (resumable) or pending.
    `ledger`: the sweep's `cluster_jobs`, read once by a caller that asks of every run."""
    run_dir = Path(run["config"]["run_dir"])
    if _locked(run_dir):
        return "running"
    if (run_dir / "result.json").exists():
        return "done" if _evaluated(run_dir, bench) else "evaluating"
    if _queued(run, cluster_jobs(run_dir.parent.parent) if ledger is None else ledger):
        return "queued"
    if run_error(run) is not None:
        return "failed"
    return "started" if (run_dir / "config.json").exists() else "pending"


def cluster_jobs(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's ledger of cluster jobs (submitit/jobs.json) by run id; empty when it has none or it is not one.
    Its SLURM jobs are made known to submitit's watcher at once (`watch_sweep_jobs`)."""
    try:
        ledger = storage.read_json(sweep_dir / "submitit" / JOBS_FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(ledger, dict):
        return {}
    watch_sweep_jobs(sweep_dir / "submitit", ledger)
    return ledger


def watch_sweep_jobs(folder: Path, ledger: dict[str, Any]) -> None:
    """The ledger's SLURM jobs that have written no result, made known to submitit's watcher and to squeue's
    questions all at once (`slurm.watch_slurm_jobs`): asked one by one, a status pass over a sweep of 100 runs ran
    sacct 100 times, each naming every job registered so far."""
    slurm.watch_slurm_jobs([str(job["job_id"]) for job in ledger.values()
                            if isinstance(job, dict) and job.get("cluster") == "slurm" and "job_id" in job
                            and not (folder / str(job.get("result", ""))).is_file()])


def _queued(run: dict[str, Any], ledger: dict[str, Any]) -> bool:
    """Whether the run's job in the sweep's ledger of cluster jobs has not ended. A run submitted with `--no-wait`
    read `pending` until its job started, and a second `sweep run` submitted it again: two jobs of one run, the
    later one ending at the lock once the first held it, its allocation spent."""
    job = ledger.get(run["id"])
    folder = Path(run["config"]["run_dir"]).parent.parent / "submitit"
    return isinstance(job, dict) and "cluster" in job and not job_ended(folder, job)


def run_error(run: dict[str, Any]) -> str | None:
    """The error its last attempt ended with, from the run's log beside its folder (`runs/<id>.log`, where a local
    sweep writes it), or None. `sweep status` said "started" of a run that had failed, as of one in progress or
    stopped to resume."""
    log = Path(run["config"]["run_dir"]).parent / f"{run['id']}.log"
    try:
        tail = storage.read_tail(log)
    except OSError:
        return None
    last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
    return last.strip() if re.match(r"simslm [\w -]+: error: ", last) else None


JOBS_FILE = "jobs.json"


def job_ended(folder: Path, job: dict[str, str]) -> bool:
    """Whether a job of submitit/jobs.json has ended: its result file is there; or SLURM's accounting (sacct,
    asked through submitit at most every 2 s to 10 minutes) has it in a final state, or, knowing nothing of it,
    SLURM's queue (squeue) has it no longer or in a final state; or, on the local cluster, its controller process
    (whose pid is the job id) is gone. Ledgers from before 2026-12-04 do not say which cluster."""
    if (folder / job["result"]).exists():
        return True
    if job.get("cluster") == "slurm":
        return slurm.slurm_job_ended(str(job["job_id"]))
    if job.get("cluster") == "local":
        try:
            os.kill(int(job["job_id"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        # Alive, unless the pid is another process's now (the machine restarted since): a run would read `queued`
        # for good, and `sweep run` never start it again. A local job's controller runs submitit's own module.
        process = Path("/proc") / str(int(job["job_id"]))
        if not jobs.proc_shows_this_namespace():  # the pid being alive is all there is to go by
            return False
        try:
            command = (process / "cmdline").read_bytes()
            if command:
                return b"submitit" not in command
            # Empty: a zombie (ended), or a process still in its exec (just submitted). The state follows the last
            # ") " of stat: the name before it, in parentheses, may hold one itself.
            return (process / "stat").read_text().rpartition(") ")[2][:1] == "Z"
        except OSError:  # it ended just now
            return True
    return False


def status_counts(sweep_dir: str | os.PathLike) -> dict[str, int]:
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    counts: dict[str, int] = {}
    ledger = cluster_jobs(Path(sweep_dir))
    for run in sweep["runs"]:
        status = run_status(run, bench, ledger)
        counts[status] = counts.get(status, 0) + 1
    return counts

