"""Running a sweep: each run trained and scored by an executor, and `sweep wait` for a cluster's jobs.

Executors register by name: `local` runs several runs at once, each a process of its own: a
fork of a server that has done the imports once (on a machine without CUDA; a script that
calls `run_sweep` then needs multiprocessing's `if __name__ == "__main__":` guard), or else a
new interpreter (torchrun when a run has several processes, placed on GPUs when given).
`slurm` submits a job array through submitit (its `local` cluster runs the same code without
SLURM, which is how it is tested here). Either runs `execute_run` for each run the ledger
says is not done.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from simslm import jobs, machine, slurm, storage
from simslm.config import Config, ConfigError, check_positive, registry_choices
from simslm.scaling.bracket import extend_to_bracket, grown_after
from simslm.scaling.ledger import (
    JOBS_FILE,
    cluster_jobs,
    job_ended,
    run_error,
    run_status,
    status_counts,
    to_start,
    unevaluated,
    watch_sweep_jobs,
)
from simslm.scaling.sweep import check_benchmarks, check_inputs_unchanged, load_sweep
from simslm.train.build import uses_bf16
from simslm.train.peak import PEAK_FLOPS_BF16_VARIABLE, PEAK_FLOPS_VARIABLE, measure_peak_flops
from simslm.train.plan import RUN_LOCK, TrainConfig


def run_sweep(sweep_dir: str | os.PathLike, *, executor: str = "local", bracket: bool = False,
              **options: Any) -> dict[str, int]:
    """Execute every run that is not done yet; returns the count of runs by status afterwards.

    With `bracket`, then grow the grid until every budget's best size is inside it (`bracket.extend_to_bracket`)."""
    sweep_dir = Path(sweep_dir)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor '{executor}'; known: {', '.join(EXECUTORS)}")
    while True:
        sweep = load_sweep(sweep_dir)
        bench = tuple(sweep["spec"].get("bench") or ())
        ledger = cluster_jobs(sweep_dir)
        status = {run["id"]: run_status(run, bench, ledger) for run in sweep["runs"]}
        todo = [run for run in sweep["runs"] if to_start(status[run["id"]])]
        held = [run for run in sweep["runs"] if status[run["id"]] == "running"]
        (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
        if todo:  # each fails now rather than after training
            check_inputs_unchanged(sweep)
            check_benchmarks(sweep["spec"])
            # Locally, a cell's growth starts as soon as the cell is done, while the rest of the grid runs: the
            # machine is not left half idle at the end with the added runs alone (the demo's d1w8: 77 s).
            grow = {"more": functools.partial(grown_after, sweep_dir)} if bracket and executor == "local" else {}
            EXECUTORS[executor](sweep_dir, todo, **options, **grow)
        # A run another process held when this sweep looked, and has let go of unfinished since, is this sweep's
        # to finish: a sweep killed just before this one started leaves its runs locked until its children are
        # gone, which takes a moment after the kill.
        if options.get("wait", True) and held:
            ledger = cluster_jobs(sweep_dir)  # once for all of them: reading it registers its SLURM jobs anew
            if any(to_start(run_status(run, bench, ledger)) for run in held):
                continue
        if not bracket or not options.get("wait", True) or not extend_to_bracket(sweep_dir):
            return status_counts(sweep_dir)


def execute_run(sweep_dir: str, identifier: str) -> str:
    """Train (or resume) one run and evaluate it, holding its lock; returns its final status.

    Under torchrun or a SLURM job of several tasks every process calls this: all of them train,
    the first holds the lock and evaluates."""
    sweep = load_sweep(sweep_dir)
    run = next((r for r in sweep["runs"] if r["id"] == identifier), None)
    if run is None:
        raise ValueError(f"{sweep_dir}: no run {identifier}")
    spec = sweep["spec"]
    run_dir = Path(run["config"]["run_dir"])
    _distributed_from_slurm()
    trained = (run_dir / "result.json").exists()  # read before any process trains: all decide alike
    if int(os.environ.get("RANK", "0")) != 0:
        if not trained:
            from simslm.train.loop import train

            train(TrainConfig(**run["config"]))
        return "done"
    try:
        with storage.exclusive_lock(run_dir / RUN_LOCK, f"{run_dir}: held by another process"):
            if not trained:
                from simslm.train.loop import train

                train(TrainConfig(**run["config"]))  # takes the same lock again, as this process may
            missing = unevaluated(run_dir, tuple(spec.get("bench") or ()))
            if missing:  # only those: an evaluation stopped part way kept the others
                from simslm.eval.evaluate import EvalConfig, evaluate_run

                evaluate_run(EvalConfig(run=str(run_dir), bench=missing, modes=spec.get("eval_modes", ("S", "T")),
                                        num_workers=1))
    except storage.Busy:
        return "running"
    return "done"


def execute_cluster_run(sweep_dir: str, identifier: str) -> str:
    """`execute_run` as a cluster's job (`--executor slurm`), its first process saying in the run's log
    (`runs/<id>.log`, where a local sweep's subprocess writes a run's output) that the job started, how it ended,
    and on an error simslm's one line (`jobs.error_line`): `sweep status` reads a failed run's error there,
    whichever executor ran it. The job's own output, tracebacks included, stays in submitit's folder."""
    _distributed_from_slurm()
    first = int(os.environ.get("RANK", "0")) == 0
    log = Path(sweep_dir) / "runs" / f"{identifier}.log"

    def say(line: str) -> None:
        if first:
            with open(log, "a") as handle:
                handle.write(line + "\n")

    import submitit

    name = "simslm sweep run-one"
    say(f"{name}: job {submitit.JobEnvironment().job_id} started (its output: the sweep's submitit folder)")
    try:
        status = execute_run(sweep_dir, identifier)
    except Exception as error:
        say(jobs.error_line(name, error))
        raise
    say(status)
    return status


def _distributed_from_slurm() -> None:
    """In a submitit job of several tasks (SLURM, or submitit's local cluster), torch.distributed's variables
    from the job's, through submitit's helper; nothing elsewhere (torchrun sets them itself).

    CUDA_VISIBLE_DEVICES stays as the job has it: training picks its GPU by LOCAL_RANK."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    if submitit.JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _run_command(sweep_dir: Path, identifier: str, nproc_per_run: int) -> list[str]:
    """`simslm sweep run-one`, under torchrun when a run has several processes."""
    one = ["-m", "simslm", "sweep", "run-one", str(sweep_dir), identifier]
    if nproc_per_run == 1:
        return [sys.executable, *one]
    # torchrun's default log folder is a new torchelastic_* folder in the temporary directory, left behind by
    # every run (a sweep of hundreds leaves hundreds); the ranks' output already goes to the run's log.
    # simslm's wrapper of torchrun: its end on a signal or a failed rank is one line in the run's log, not a
    # traceback of torch's.
    return [sys.executable, "-m", "simslm.torchrun", "--standalone", "--nproc_per_node", str(nproc_per_run),
            "--log-dir", os.devnull, *one]


# What a run imports (torch, transformers' model and tokenizer classes of the paper's families, simslm's
# training and scoring): about 6 s of a run's start on a 2-core CPU, paid once by the warm executor's server.
WARM_MODULES = ("simslm.cli", "simslm.scaling.execute", "simslm.train.loop", "simslm.eval.evaluate",
                "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
                "transformers.models.llama.modeling_llama", "transformers.models.llama.tokenization_llama",
                "transformers.models.llama.tokenization_llama_fast",  # transformers 4 (5 has none; skipped)
                "transformers.models.qwen2.modeling_qwen2", "transformers.models.qwen2.tokenization_qwen2")


class _ForkedRun:
    """`simslm sweep run-one` in a fork of a server that has imported `WARM_MODULES` (multiprocessing's
    forkserver): a fresh process of its own, as a subprocess is (own memory, own lock, killed alone), without
    paying the imports again. Answers poll / terminate / wait as subprocess.Popen does."""

    def __init__(self, context, sweep_dir: Path, identifier: str, log_path: Path, threads: int,
                 environment: dict[str, str]):
        # The run gets this process's folder and `environment` now, as a subprocess would, not the server's
        # from when it started (settings read at import time stay the server's).
        self.process = context.Process(target=_run_one_forked, name=f"simslm-run-{identifier}",
                                       args=(str(sweep_dir), identifier, str(log_path), threads, os.getcwd(),
                                             environment))
        self.process.start()

    def poll(self) -> int | None:
        return self.process.exitcode

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def wait(self) -> int | None:
        self.process.join()
        return self.process.exitcode


def _run_one_forked(sweep_dir: str, identifier: str, log_path: str, threads: int, cwd: str,
                    environment: dict[str, str]) -> None:
    """A forked run's body: its output into its log, the caller's folder and environment, its thread count,
    then what `simslm sweep run-one` does (the same messages and exit status as the subprocess it stands for)."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(log, stream.fileno())
    os.close(log)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    import torch

    torch.set_num_threads(threads)  # the server read no thread count: it never ran an op
    import runpy

    # `python -m simslm sweep run-one ...` itself (its SystemExit is the fork's exit status); the CLI is a later
    # stage than this module, so it is run, not imported.
    sys.argv = ["simslm", "sweep", "run-one", sweep_dir, identifier]
    runpy.run_module("simslm", run_name="__main__", alter_sys=True)


# The forkserver listens on a socket at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX; a socket's path holds at most 107
# bytes (Linux's sun_path of 108, with its NUL; 104 on macOS and the BSDs), so on Linux a TMPDIR longer than 75
# characters (a cluster's per-job scratch) fails the server's start with "AF_UNIX path too long".
_SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


_FORKSERVER_SOCKET_TAIL = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def _warm_context():
    """multiprocessing's forkserver, its server preloading `WARM_MODULES` (started once per process, reused by
    later calls, e.g. bracketing's); None, with a warning, where its socket's path would be too long."""
    import multiprocessing
    import tempfile

    if len(os.fsencode(tempfile.gettempdir())) + _FORKSERVER_SOCKET_TAIL > _SOCKET_PATH_MAX:
        print(f"simslm: warning: TMPDIR {tempfile.gettempdir()} is longer than "
              f"{_SOCKET_PATH_MAX - _FORKSERVER_SOCKET_TAIL} characters, too long for the path of the warm server's "
              f"socket: each run starts a new interpreter instead (about 6 s more of imports; a shorter TMPDIR "
              f"saves them)", file=sys.stderr)
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WARM_MODULES))
    return context


def _peak_flops(threads: int, bf16: bool = False) -> float:
    """This CPU's matrix-multiply FLOP/s at `threads` threads, in fp32 or bf16 (`train.peak.measure_peak_flops`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_peak_flops("cpu", bf16=bf16)
    finally:
        torch.set_num_threads(before)


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def runs_at_once(num_parallel: int, *, slots: int = 0, cuda: bool | None = None, threads_per_run: int = 1,
                 nproc_per_run: int = 1) -> int:
    """How many runs a local sweep trains at once: `num_parallel`, or for 0 as many as the machine holds, a run per
    GPU group of --gpus (`slots`), else one at a time where CUDA is present (`cuda`, by default as torch sees it:
    every run would take the same GPU), else a run per `threads_per_run` x `nproc_per_run` cores. Never more than
    there are GPU groups."""
    if num_parallel == 0:
        if not slots and cuda is None:
            cuda = _cuda_present()
        num_parallel = slots or (1 if cuda else machine.default_workers() // (threads_per_run * nproc_per_run))
    return max(1, min(num_parallel, slots) if slots else num_parallel)


def _local(sweep_dir: Path, runs: list[dict[str, Any]], *, num_parallel: int = 0, threads_per_run: int = 1,
           nproc_per_run: int = 1, gpus: str = "", fresh_processes: bool = False,
           more: Callable[[str], list[dict[str, Any]]] | None = None, **_: Any) -> None:
    """Run up to `num_parallel` runs at once, each a process of its own with `threads_per_run` threads: a fork of
    a warm server (`_ForkedRun`) for one-process runs on a machine without CUDA, unless `fresh_processes`; a new
    interpreter otherwise (torchrun with `nproc_per_run` processes when more than one). With `gpus`, each run
    gets `nproc_per_run` of them. `more`, given the id of each run that ends well, gives runs to add
    (bracketing's, while the grid still runs): they go ahead of the runs still waiting."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads_per_run), "MKL_NUM_THREADS": str(threads_per_run)}
    devices = [device.strip() for device in gpus.split(",") if device.strip()]
    cuda = _cuda_present()
    if devices and not cuda:  # each run would see no GPU and train on the CPU, `--device auto` as it is
        raise ValueError(f"--gpus {gpus}: torch sees no CUDA device here; leave --gpus out to train on the CPU")
    if not devices and not cuda:
        # One MFU denominator for every CPU run, measured before any of them loads the cores (a run measuring
        # its own would see its neighbour's load, and spend 0.75 s on it); bf16's too when the runs train in bf16
        # (one product took 1.3-2.5 s on a CPU without native bf16, and each run measured at least two).
        if PEAK_FLOPS_VARIABLE not in environment:
            environment[PEAK_FLOPS_VARIABLE] = repr(_peak_flops(threads_per_run))
        if PEAK_FLOPS_BF16_VARIABLE not in environment and any(
                uses_bf16(run["config"].get("precision", "auto"), "cpu") for run in runs):
            environment[PEAK_FLOPS_BF16_VARIABLE] = repr(_peak_flops(threads_per_run, bf16=True))
    slots = [",".join(devices[i:i + nproc_per_run]) for i in range(0, len(devices) - nproc_per_run + 1,
                                                                     nproc_per_run)] if devices else []
    if devices and not slots:
        raise ValueError(f"--gpus {gpus}: fewer GPUs than --nproc-per-run {nproc_per_run}")
    # CUDA is left to fresh processes: a fork must not inherit a CUDA context, and a GPU run's imports are
    # small against its training.
    warm = (None if fresh_processes or nproc_per_run > 1 or devices or cuda else _warm_context())
    num_parallel = runs_at_once(num_parallel, slots=len(slots), cuda=cuda, threads_per_run=threads_per_run,
                                nproc_per_run=nproc_per_run)
    free = list(slots)
    waiting = list(runs)
    seen = {run["id"] for run in runs}
    active: dict[str, tuple[Any, Any, str]] = {}  # run id -> (its process, its log file or None for a fork, its GPUs)
    tracker = jobs.Progress(len(runs), "sweep runs", unit="run")
    failures = []
    try:
        while waiting or active:
            while waiting and len(active) < num_parallel:
                run = waiting.pop(0)
                slot = free.pop(0) if slots else ""
                log_path = Path(run["config"]["run_dir"]).parent / f"{run['id']}.log"
                log = None  # a fork opens its log itself
                if warm is not None:
                    process = _ForkedRun(warm, sweep_dir, run["id"], log_path, threads_per_run, environment)
                else:
                    log = open(log_path, "a")
                    env = {**environment, "CUDA_VISIBLE_DEVICES": slot} if slot else environment
                    process = subprocess.Popen(_run_command(sweep_dir, run["id"], nproc_per_run), stdout=log,
                                               stderr=subprocess.STDOUT, env=env)
                active[run["id"]] = (process, log, slot)
            time.sleep(0.2)
            for identifier, (process, log, slot) in list(active.items()):
                if process.poll() is not None:
                    del active[identifier]
                    if log is not None:
                        log.close()
                    if slot:
                        free.append(slot)
                    tracker.update()
                    if process.returncode != 0:
                        failures.append(identifier)
                    elif more is not None:
                        added = [run for run in more(identifier) if run["id"] not in seen]
                        seen.update(run["id"] for run in added)
                        waiting[:0] = added
                        tracker.grow(len(added))
    except jobs.Stopped:
        raise jobs.Stopped(f"{sweep_dir}: stopped by SIGTERM; the {len(active)} run(s) in progress stopped with it, "
                           f"each keeping the steps it had trained as a checkpoint; run the same command again to "
                           f"resume") from None
    finally:
        for process, _, _ in active.values():  # interrupted: stop the children too (their runs resume later)
            process.terminate()
        for process, log, _ in active.values():
            process.wait()
            if log is not None:
                log.close()
        tracker.close()
    if failures:
        raise jobs.JobsFailed(f"{sweep_dir}: {len(failures)} run(s) failed: {', '.join(failures)} "
                              f"(see {sweep_dir}/runs/<id>.log); re-run `simslm sweep run` to retry them")


def _slurm(sweep_dir: Path, runs: list[dict[str, Any]], *, cluster: str | None = None, slurm_partition: str = "",
           timeout_min: int = 240, gpus_per_node: int = 0, nodes: int = 1, nproc_per_run: int = 1,
           cpus_per_task: int = 0, mem_gb: float = 0, slurm_account: str = "", slurm_qos: str = "",
           array_parallelism: int = 0, sbatch: tuple[str, ...] = (), wait: bool = True,
           max_requeues: int = slurm.MAX_REQUEUES, warning_s: int = slurm.WARNING_S, **_: Any) -> None:
    """Submit the runs as one SLURM job array through submitit (cluster=local runs them here, for testing).

    A run of several processes is one job of `nodes` x `nproc_per_run` tasks (torch.distributed set up from
    SLURM's variables in `execute_run`). The job of each run is recorded in submitit/jobs.json, so that
    `sweep wait` can follow jobs submitted without waiting. A job warned of its time limit saves a checkpoint
    (`train`) and is requeued to resume from it, up to `max_requeues` times."""
    folder = sweep_dir / "submitit"
    executor = slurm.submitit_executor(
        folder, cluster, timeout_min=timeout_min, gpus_per_node=gpus_per_node, nodes=nodes,
        tasks_per_node=nproc_per_run, cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm_partition=slurm_partition,
        slurm_account=slurm_account, slurm_qos=slurm_qos, slurm_array_parallelism=array_parallelism,
        slurm_additional_parameters=dict(option.split("=", 1) for option in sbatch), max_requeues=max_requeues,
        warning_s=warning_s)
    submitted = executor.map_array(slurm.Resumable(execute_cluster_run), [str(sweep_dir)] * len(runs),
                                   [run["id"] for run in runs])
    recorded = {run["id"]: {"job_id": job.job_id, "result": os.path.relpath(job.paths.result_pickle, folder),
                            "stderr": os.path.relpath(job.paths.stderr, folder),
                            "cluster": type(job).__name__.removesuffix("Job").lower()}
                for run, job in zip(runs, submitted)}
    storage.update_json(folder / JOBS_FILE, lambda ledger: {**ledger, **recorded})
    if not wait:
        print(f"submitted {len(runs)} run(s) as job(s) {submitted[0].job_id.split('_')[0]}...; follow them with "
              f"`simslm sweep status {sweep_dir}` or `simslm sweep wait {sweep_dir}`", file=sys.stderr)
        return
    try:
        failures = slurm.job_failures([(run["id"], job) for run, job in zip(runs, submitted)], "sweep jobs")
    except jobs.Stopped:  # the jobs are the cluster's, not this process's: they go on
        raise jobs.Stopped(f"{sweep_dir}: stopped by SIGTERM while waiting; the {len(runs)} job(s) it submitted go on: "
                           f"follow them with `simslm sweep wait {sweep_dir}`") from None
    if failures:
        raise jobs.JobsFailed(f"{sweep_dir}: {len(failures)} run(s) failed: {'; '.join(failures)}; re-run "
                              f"`simslm sweep run` to retry them")


EXECUTORS: dict[str, Callable[..., None]] = {"local": _local, "slurm": _slurm}


def wait_for_sweep(sweep_dir: str | os.PathLike, poll_sec: float = 30.0) -> dict[str, int]:
    """Follow the jobs `sweep run --executor slurm --no-wait` submitted until each has ended; the status counts.

    A job has ended when submitit has written its result file, or, on SLURM, when the cluster says so: a job
    killed for memory, cancelled or lost with its node writes none, and would otherwise be waited for forever.
    A run whose job ended without a finished run folder failed (its job's stderr says why)."""
    sweep_dir = Path(sweep_dir)
    folder = sweep_dir / "submitit"
    if not (folder / JOBS_FILE).exists():
        raise ValueError(f"{sweep_dir}: no submitted jobs to wait for ({folder / JOBS_FILE} is missing)")
    submitted = storage.read_json(folder / JOBS_FILE)
    watch_sweep_jobs(folder, submitted)
    tracker = jobs.Progress(len(submitted), "sweep wait", unit="job")
    ended: set[str] = set()
    while len(ended) < len(submitted):
        for identifier, job in submitted.items():
            if identifier not in ended and job_ended(folder, job):
                ended.add(identifier)
                tracker.update()
        if len(ended) < len(submitted):
            time.sleep(poll_sec)
    tracker.close()
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    # Each with its one-line error where its job lived to write it (`execute_cluster_run`), and its job's log.
    failed = [f"{run['id']} ({(run_error(run) or '').partition(': error: ')[2] or 'no error said'}; log "
              f"{folder / submitted[run['id']]['stderr']})" for run in sweep["runs"]
              if run["id"] in submitted and run_status(run, bench, submitted) != "done"]
    if failed:
        raise jobs.JobsFailed(f"{sweep_dir}: {len(failed)} run(s) failed: {'; '.join(failed)}; re-run "
                              f"`simslm sweep run` to retry them")
    return status_counts(sweep_dir)


@dataclass(frozen=True, kw_only=True)
class RunSweepConfig(Config):
    """What `simslm sweep run` does."""

    sweep: str
    """Sweep folder from `simslm sweep plan`."""
    executor: str = field(default="local", metadata=registry_choices(EXECUTORS))
    """local (subprocesses here) or slurm (through submitit)."""
    nproc_per_run: int = 1
    """Processes per run: torchrun on this machine (local), tasks per node (slurm); FSDP needs 2 or more."""
    num_parallel: int = 0
    """local: runs at once; 0 = as many as the machine holds: one per GPU group of --gpus, else one at a time where
    CUDA is present, else one per --threads-per-run x --nproc-per-run cores."""
    threads_per_run: int = 1
    """local: threads per run."""
    fresh_processes: bool = False
    """local: start every run in a new interpreter. By default a one-process run on a machine without CUDA is a
    fork of a server that has imported torch and transformers once, which saves each run ~6 s of imports."""
    gpus: str = ""
    """local: GPUs to place runs on (e.g. 0,1,2,3); each run gets nproc_per_run of them, one run per group."""
    cluster: str | None = None
    """slurm: submitit cluster (slurm, local or debug; default: slurm where sbatch is on PATH;
    elsewhere local must be asked for)."""
    nodes: int = 1
    """slurm: nodes per run."""
    gpus_per_node: int = 0
    """slurm: GPUs per node of a run's job."""
    cpus_per_task: int = 0
    """slurm: CPUs per task (0: the cluster's default)."""
    mem_gb: float = 0
    """slurm: memory per node in GB (0: the cluster's default)."""
    slurm_partition: str = ""
    """slurm: partition."""
    slurm_account: str = ""
    """slurm: account to charge."""
    slurm_qos: str = ""
    """slurm: quality of service."""
    array_parallelism: int = 0
    """slurm: runs of the job array at once (0: no limit)."""
    sbatch: tuple[str, ...] = ()
    """slurm: extra sbatch options as key=value (e.g. constraint=h100 exclusive=)."""
    timeout_min: int = 240
    """slurm: time limit per job in minutes."""
    max_requeues: int = slurm.MAX_REQUEUES
    """slurm: times a job that reaches its time limit is requeued; each resumes its run from a checkpoint saved
    when the job was warned."""
    warning_s: int = slurm.WARNING_S
    """slurm: seconds before the time limit at which a job is warned: time to finish the step in hand and save a
    checkpoint (raise it for a large model on a slow disk)."""
    wait: bool = True
    """slurm: wait for the jobs; with --no-wait, submit and return (then `sweep status` / `sweep wait`)."""
    bracket: bool = False
    """Then grow the grid until every budget's best size is inside it: the next depth (a new `textlm` member
    pretrained) or the next of bracket_models, repeated; what cannot be bracketed goes into bracket.json."""

    def check(self) -> None:
        check_positive(self, "threads_per_run", "timeout_min", "nproc_per_run", "nodes", "warning_s")
        check_positive(self, "num_parallel", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism",
                       "max_requeues", allow_zero=True)
        for option in self.sbatch:
            if "=" not in option:
                raise ConfigError(f"--sbatch takes key=value, not '{option}'")
        if self.executor == "local" and self.nodes != 1:
            raise ConfigError("--nodes needs --executor slurm: the local executor runs on this machine")


@dataclass(frozen=True, kw_only=True)
class WaitConfig(Config):
    """What `simslm sweep wait` does."""

    sweep: str
    """Sweep folder whose submitted jobs to follow."""
    poll_sec: float = 30.0
    """Seconds between looks at the jobs."""

    def check(self) -> None:
        check_positive(self, "poll_sec")


@dataclass(frozen=True, kw_only=True)
class RunOneConfig(Config):
    """What `simslm sweep run-one` does (the executors call it)."""

    sweep: str
    """Sweep folder."""
    run_id: str
    """Id of the run in sweep.json."""

