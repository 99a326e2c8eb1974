"""Jobs on a cluster through submitit: SLURM, or submitit's local cluster, which runs the same code here.

`submitit_executor` makes the executor (a time limit's warning, requeues of a `Resumable` job);
`job_failures` waits for jobs until each has written its result or SLURM says it has ended:
its accounting (sacct, through submitit's watcher) or, where there is none, its queue
(`SlurmQueue`: squeue, asked of all the jobs at once).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable

from simslm.jobs import progress

# Times a job that reaches its time limit is requeued (submitit's own default is 3): a run of the paper's
# largest sizes can outlast a cluster's limit many times over, and each requeue resumes where the last left off.
MAX_REQUEUES = 10


# How long before the time limit the job is warned (submitit's SLURM default): time to finish the step in hand
# and save a checkpoint.
WARNING_S = 90


def submitit_executor(folder: str | os.PathLike, cluster: str | None, *, timeout_min: float, gpus_per_node: int = 0,
                      nodes: int = 1, tasks_per_node: int = 1, cpus_per_task: int = 0, mem_gb: float = 0,
                      max_requeues: int = MAX_REQUEUES, warning_s: int = WARNING_S, **slurm_only: Any):
    """A submitit executor (SLURM, or `cluster="local"` to run the same jobs here). Zero CPUs or memory leave
    the cluster's default; `slurm_only` options (slurm_partition, ...) apply on SLURM, when set.

    A job is warned `warning_s` before its time limit; one whose function is `Resumable` is then requeued, up to
    `max_requeues` times. The local cluster is submitit's LocalExecutor itself, which (unlike AutoExecutor's
    view of it) takes a time limit in fractions of a minute and the warning's delay, so tests can reach both."""
    import submitit

    if cluster is None:
        cluster = submitit.AutoExecutor.which()
        if cluster == "local":
            # No sbatch here (a login node without its SLURM module, say): submitit would run every job on this
            # machine, its SLURM options unused. Meant only when asked for.
            raise ValueError("--executor slurm: no SLURM here (sbatch is not on PATH); run where sbatch is, or pass "
                             "--cluster local to run the jobs on this machine through submitit")
    parameters: dict[str, Any] = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_node, "nodes": nodes,
                                  "tasks_per_node": tasks_per_node}
    if cluster == "local":
        executor = submitit.LocalExecutor(folder=str(folder), max_num_timeout=max_requeues)
        executor.update_parameters(**parameters, signal_delay_s=warning_s)
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=max_requeues)
    parameters.update({key: value for key, value in (("cpus_per_task", cpus_per_task), ("mem_gb", mem_gb)) if value})
    if cluster == "slurm":
        parameters.update({key: value for key, value in slurm_only.items() if value}, slurm_signal_delay_s=warning_s)
        if nodes * tasks_per_node > 1:
            # One task that dies ends the job's others at once. By default srun lets them run on, and they wait
            # in their next collective until torch's process-group timeout (minutes of every GPU of the job).
            parameters["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    executor.update_parameters(**parameters)
    return executor


class Resumable:
    """A job function that picks up from what an earlier call left on disk (a run's checkpoints, the shards
    already written): when the job's time runs out, submitit calls `checkpoint`, and the job is requeued to
    call it again with the same arguments, instead of ending as failed.

    The contract of submitit's `helpers.Checkpointable`, written out rather than subclassed: submitit is an
    optional extra (`slurm`), and this module is imported where it may be missing (`units extract` and `sweep
    run` import it whichever executor runs them)."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)


# States of a job that has ended, as squeue may still show it for a few minutes (SLURM's MinJobAge); any other state
# (PENDING, RUNNING, COMPLETING, PREEMPTED before a requeue, one added later) is taken for a job still there.
SQUEUE_ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})


class SlurmQueue:
    """SLURM's queue (squeue) of the jobs `expected` names (a sweep's ledger, a batch of submitted jobs): each one's
    state, asked of all of them in one call at most every few seconds; None where squeue does not answer (not a
    SLURM host)."""

    REFRESH_SEC = 5.0

    def __init__(self) -> None:
        self.expected: set[str] = set()
        self._asked: tuple[float, frozenset[str], dict[str, str] | None] | None = None

    def states(self) -> dict[str, str] | None:
        ids = frozenset(job_id.split("_")[0] for job_id in self.expected)
        if self._asked and self._asked[1] >= ids and time.monotonic() - self._asked[0] < self.REFRESH_SEC:
            return self._asked[2]
        try:  # array tasks one a line (--array), as the ledger names them: 4242_0
            listing = subprocess.run(["squeue", "--noheader", "--array", "--format", "%i|%T", "--jobs",
                                      ",".join(sorted(ids))], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            states = None
        else:
            # A single id the controller has forgotten is an error of its own ("Invalid job id specified", exit 1;
            # with two or more ids the others are listed: MatterMiners/tardis#326): that job is not in the queue.
            states = (dict(line.split("|", 1) for line in listing.stdout.splitlines() if "|" in line)
                      if listing.returncode == 0 else {} if "Invalid job id" in listing.stderr else None)
        self._asked = (time.monotonic(), ids, states)
        return states


SLURM_QUEUE = SlurmQueue()


def watch_slurm_jobs(job_ids: list[str]) -> None:
    """Makes SLURM jobs known to submitit's watcher and to `SLURM_QUEUE` all at once, before the first question
    about any: the watcher then asks sacct of them all in one call, and again at most every 2 s to 10 minutes. Each
    job new to it forces a call of its own, so asked one by one, N jobs made N calls."""
    if job_ids:
        import submitit

        for job_id in job_ids:
            submitit.SlurmJob.watcher.register_job(job_id)
        SLURM_QUEUE.expected.update(job_ids)


def slurm_job_ended(job_id: str) -> bool:
    """Whether SLURM job `job_id` has ended, as far as SLURM says: its accounting (sacct, through submitit's
    watcher: `watch_slurm_jobs`) in a final state, or, knowing nothing of it, its queue (squeue) without it or with
    it in a final state. Not a `SlurmJob` made for the question: making one registers its job anew with the
    watcher, which forces a call of sacct each time."""
    import submitit

    if submitit.SlurmJob.watcher.is_done(job_id):
        return True
    if submitit.SlurmJob.watcher.get_state(job_id, mode="cache") != "UNKNOWN":
        return False
    # Not in SLURM's accounting: a job just submitted may not be there yet, and where accounting is off (some
    # clusters run without it) no job ever is, and submitit takes UNKNOWN for a job not done: one that died without
    # a result was waited for forever. The controller's queue says whether it is still there.
    SLURM_QUEUE.expected.add(job_id)
    queue = SLURM_QUEUE.states()
    if queue is None:  # no squeue here either (a copy of a sweep off the cluster): nothing to go by
        return False
    return job_id not in queue or queue[job_id] in SQUEUE_ENDED


# How often a wait for cluster jobs looks at their result files (submitit's own wait: every second).
JOB_POLL_SEC = 1.0


def job_failures(labelled_jobs: list[tuple[str, Any]], description: str) -> list[str]:
    """Wait for submitit jobs; `label (error; log FILE)` for each that failed (the others still run to the end).
    A SLURM job is waited for until it has written its result or SLURM says it has ended (`slurm_job_ended`):
    submitit's own wait asks sacct alone, and where that knows nothing of a job it waits forever."""
    import submitit

    failures = []
    watch_slurm_jobs([job.job_id for _, job in labelled_jobs if isinstance(job, submitit.SlurmJob)])
    for label, job in progress(labelled_jobs, description, unit="job"):
        if isinstance(job, submitit.SlurmJob):
            # Each task writes its own result (a run of several processes is a job of several tasks).
            results = [job.task(task).paths.result_pickle for task in range(job.num_tasks)]
            while not all(result.exists() for result in results) and not slurm_job_ended(job.job_id):
                time.sleep(JOB_POLL_SEC)
            if not all(result.exists() for result in results):  # `results()` would wait on, asking sacct alone
                failures.append(f"{label} (it ended without a result; log {job.paths.stderr})")
                continue
        try:
            # `results()`, one a task: `result()` of a job of several tasks is an AssertionError once they end
            # ("You should use `results()`"), and every run of `--nproc-per-run 2` read failed.
            job.results()
        except Exception as error:  # submitit re-raises the job's own error
            failures.append(f"{label} ({_job_error(error)}; log {job.paths.stderr})")
    return failures


def _job_error(error: Exception) -> str:
    """The job's own exception, `Class: message`, from the traceback submitit's FailedJobError carries as text; its
    class name alone ("FailedJobError", "UncompletedJobError": a job that ended without a result) otherwise."""
    parts = str(error).split("----------------------")  # submitit's frame around the trace
    if error.__class__.__name__ == "FailedJobError" and len(parts) > 2:
        lines = parts[1].strip().splitlines()
        # The exception's first line is the last one not indented (frames and code are), its message runs on
        starts = [i for i, line in enumerate(lines) if line[:1].strip() and not line.startswith("Traceback")]
        if starts:
            return " ".join(" ".join(lines[starts[-1]:]).split())
    return error.__class__.__name__

