import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from simslm import jobs
from simslm.scaling import collect, execute, ledger, sweep
from simslm.train.peak import PEAK_FLOPS_BF16_VARIABLE, PEAK_FLOPS_VARIABLE
from tests.conftest import live_in_group, tiny_base_model
from tests.scaling.helpers import _fake_sacct, _spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("to", ["the sweep", "its process group"])
def test_sigterm_stops_a_sweep_with_its_runs_which_resume(data, tmp_path, to):
    """`kill` of `simslm sweep run` once ended the sweep alone: its runs, forks of the warm server, trained on
    unwatched. Now they stop with it, each at a checkpoint, and a re-run resumes them. Sent to every process (a
    scheduler's time limit, `timeout`), a run gets it from the sweep too: still one stop, at a checkpoint."""
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(2e10, 3e10)), tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "simslm", "sweep", "run", str(tmp_path), "--num-parallel", "2"],
                               cwd=REPO, text=True, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    training = lambda: [path for path in (tmp_path / "runs").glob("*/metrics.jsonl")  # noqa: E731
                        if len(path.read_text().splitlines()) >= 3]
    deadline = time.time() + 120
    while len(training()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    try:
        if to == "the sweep":
            process.send_signal(signal.SIGTERM)  # as `kill PID` sends it
        else:
            os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM
        assert stderr.splitlines()[-1] == (
            f"simslm sweep run: {tmp_path}: stopped by SIGTERM; the 2 run(s) in progress stopped with it, each keeping "
            f"the steps it had trained as a checkpoint; run the same command again to resume")
        assert "Traceback" not in stderr
        assert live_in_group(process.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    stopped_at = {}
    for log in (tmp_path / "runs").glob("*.log"):
        last = log.read_text().splitlines()[-1]
        assert "stopped by SIGTERM after step" in last, last
        stopped_at[log.stem] = int(last.split("after step ")[1].split(",")[0])
    assert len(stopped_at) == 2 and not list((tmp_path / "runs").glob("*/result.json"))
    assert execute.run_sweep(tmp_path, num_parallel=2, threads_per_run=1) == {"done": 2}
    for identifier, step in stopped_at.items():
        steps = [json.loads(line)["step"] for line in (tmp_path / "runs" / identifier / "metrics.jsonl").open()
                 if '"loss"' in line]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) > step  # resumed, each step logged once


def test_a_sweep_stopped_while_its_cluster_jobs_run_says_they_go_on(data, tmp_path, monkeypatch):
    """SIGTERM to a sweep waiting on SLURM stops the waiting, not the jobs (they are the cluster's): it says so, and
    how to follow them."""
    from types import SimpleNamespace

    from simslm import jobs, slurm

    sweep.plan_sweep(_spec(data), tmp_path)

    class Executor:
        def map_array(self, function, *columns):
            return [SimpleNamespace(job_id=f"7_{n}", paths=SimpleNamespace(result_pickle=tmp_path / f"{n}.pkl",
                                                                            stderr=tmp_path / f"{n}.err"))
                    for n in range(len(columns[0]))]

    def stopped(*given, **options):
        raise jobs.Stopped("stopped by SIGTERM; run the same command again to resume")

    def executor(folder, *given, **options):
        folder.mkdir(parents=True)  # as submitit's own makes its folder
        return Executor()

    monkeypatch.setattr(slurm, "submitit_executor", executor)
    monkeypatch.setattr(slurm, "job_failures", stopped)
    with pytest.raises(jobs.Stopped) as raised:
        execute.run_sweep(tmp_path, executor="slurm", cluster="slurm")
    assert str(raised.value) == (f"{tmp_path}: stopped by SIGTERM while waiting; the 4 job(s) it submitted go on: "
                                 f"follow them with `simslm sweep wait {tmp_path}`")
    assert set(json.loads((tmp_path / "submitit" / "jobs.json").read_text())) == {
        run["id"] for run in sweep.load_sweep(tmp_path)["runs"]}


@pytest.mark.slow
def test_a_sweep_under_a_long_tmpdir_runs_its_runs_as_new_processes(data, tmp_path, monkeypatch, capsys):
    """The warm server (multiprocessing's forkserver) listens on a socket under TMPDIR, whose path may not pass 107
    bytes: under a cluster's long per-job TMPDIR the sweep failed with "AF_UNIX path too long". It now says so and
    starts each run as a new interpreter."""
    long = tmp_path / ("per-job-scratch-" + "x" * 60)
    long.mkdir()
    monkeypatch.setenv("TMPDIR", str(long))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    sweep.plan_sweep(_spec(data, depths=(1,)), tmp_path / "sweep")
    assert execute.run_sweep(tmp_path / "sweep", num_parallel=2, threads_per_run=1) == {"done": 2}
    assert (f"simslm: warning: TMPDIR {long} is longer than 75 characters, too long for the path of the warm "
            f"server's socket") in capsys.readouterr().err
    assert not list(long.glob("pymp-*"))


@pytest.mark.slow
def test_a_study_moved_with_a_run_in_progress_resumes_that_run(data, tmp_path, train_stopped_at):
    """A sweep and its data moved (or copied) together while a run is half done: the run resumes from its
    checkpoint where it is now. Before, it failed as 'another config (other data, validation_data)'."""
    import shutil

    from simslm.train.plan import TrainConfig

    shutil.copytree(data, tmp_path / "study" / "data")
    data_here = str(tmp_path / "study" / "data")
    sweep.plan_sweep(_spec(data_here, depths=(1,), budgets_flops=(8e8,), validation_data=data_here),
                     tmp_path / "study" / "sweep")
    (run,) = sweep.load_sweep(tmp_path / "study" / "sweep")["runs"]
    train_stopped_at(TrainConfig(**run["config"]), 5)
    (tmp_path / "study").rename(tmp_path / "moved")
    assert ledger.status_counts(tmp_path / "moved" / "sweep") == {"started": 1}
    assert execute.run_sweep(tmp_path / "moved" / "sweep", num_parallel=1) == {"done": 1}
    run_dir = tmp_path / "moved" / "sweep" / "runs" / run["id"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, json.loads((run_dir / "plan.json").read_text())["total_steps"] + 1))


def test_benchmarks_every_run_would_fail_on_are_refused_before_any_run_trains(data, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "gold.csv").write_text("id,filename,type,correct\n")  # an sLM21 folder, as far as planning looks
    for changes, message in (({"bench": (str(tmp_path / "nowhere"),)}, "nowhere: benchmark folder does not exist"),
                             ({"bench": (str(tmp_path),)}, "not a benchmark folder"),
                             ({"bench": ("validation",), "validation_data": ""}, "no validation_data"),
                             ({"bench": (str(bench),), "eval_modes": ("S", "X")}, "eval_modes: X")):
        with pytest.raises(ValueError, match=message):
            sweep.plan_sweep(_spec(data, **changes), tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
    # A published set named by hub id is downloaded by its first evaluation: planned as it is.
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,), bench=("slprl/sblimp",)), tmp_path / "hub")
    # A benchmark folder gone since the plan: `sweep run` says so before it trains anything.
    planned = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,), bench=(str(bench),)), tmp_path / "s")
    shutil.rmtree(bench)
    with pytest.raises(ValueError, match="benchmark folder does not exist"):
        execute.run_sweep(tmp_path / "s", num_parallel=1)
    assert not any((Path(run["config"]["run_dir"]) / "config.json").exists() for run in planned["runs"])


def test_a_run_that_failed_is_said_failed_with_its_error_and_retried(data, tmp_path):
    """`sweep status` said "started" of a run whose last attempt ended in an error, as of one stopped to resume."""
    planned = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,),
                                     train={"batch_size": 4, "lr": 1e39, "warmup_fraction": 0.0, "lr_min": 0.0}),
                               tmp_path / "s")
    with pytest.raises(jobs.JobsFailed, match="1 run\\(s\\) failed"):
        execute.run_sweep(tmp_path / "s", num_parallel=1)
    (run,) = planned["runs"]
    assert ledger.run_status(run, ()) == "failed" and ledger.status_counts(tmp_path / "s") == {"failed": 1}
    assert f"failed {run['id']}: simslm sweep run-one: error: " in collect.status_table(tmp_path / "s")
    assert "lower --lr" in ledger.run_error(run)
    # Stopped to resume (its log's last line is not an error): started, as before.
    with open(Path(run["config"]["run_dir"]).parent / f"{run['id']}.log", "a") as log:
        log.write("simslm sweep run-one: interrupted; re-run the same command to resume\n")
    assert ledger.run_status(run, ()) == "started"


@pytest.mark.slow
def test_a_cluster_job_that_failed_is_said_failed_with_its_error(data, tmp_path):
    """A run whose SLURM job ended in an error read `started` in `sweep status`: its output was in submitit's
    folder, not in the run's log where a local sweep's goes. The job now writes its start, its end and simslm's
    one-line error there (submitit's local cluster runs the same job code as SLURM)."""
    pytest.importorskip("submitit")
    planned = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,),
                                     train={"batch_size": 4, "lr": 1e39, "warmup_fraction": 0.0, "lr_min": 0.0}),
                               tmp_path / "s")
    (run,) = planned["runs"]
    # The sweep says each job's own error, not submitit's wrapper of it ("FailedJobError").
    with pytest.raises(jobs.JobsFailed, match=f"1 run\\(s\\) failed: {run['id']} \\(ValueError: .*: the loss became "
                                              f"nan at step 2; lower --lr .*; log .*_log.err\\)"):
        execute.run_sweep(tmp_path / "s", executor="slurm", cluster="local", timeout_min=10)
    assert ledger.run_status(run, ()) == "failed" and "lower --lr" in ledger.run_error(run)
    assert f"failed {run['id']}: simslm sweep run-one: error: " in collect.status_table(tmp_path / "s")
    log = (tmp_path / "s" / "runs" / f"{run['id']}.log").read_text().splitlines()
    assert len(log) == 2 and re.fullmatch(r"simslm sweep run-one: job \d+ started .*", log[0]), log
    # Submitted without waiting, then followed: `sweep wait` says the error too.
    execute.run_sweep(tmp_path / "s", executor="slurm", cluster="local", timeout_min=10, wait=False)
    with pytest.raises(jobs.JobsFailed, match=f"1 run\\(s\\) failed: {run['id']} \\(.*: the loss became nan at step 2; "
                                              f"lower --lr .*; log .*_log.err\\)"):
        execute.wait_for_sweep(tmp_path / "s", poll_sec=0.2)
    # A job started again (retried, or requeued at its time limit): started, until it ends.
    with open(tmp_path / "s" / "runs" / f"{run['id']}.log", "a") as handle:
        handle.write("simslm sweep run-one: job 7 started (its output: the sweep's submitit folder)\n")
    assert ledger.run_status(run, ()) == "started"


def test_a_run_let_go_unfinished_while_the_sweep_ran_is_run_too(data, tmp_path, monkeypatch):
    """A killed sweep's child still holds its run's lock for a moment after the kill: a sweep started then skips
    that run as another's, and must take it up once the lock is gone (CI saw {'done': 3, 'started': 1})."""
    planned = sweep.plan_sweep(_spec(data), tmp_path)
    first = Path(planned["runs"][0]["config"]["run_dir"])
    first.mkdir(parents=True)
    (first / "config.json").write_text("{}")
    lock = open(first / ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # the dying process's
    given = []

    def executor(sweep_dir, runs, **_):
        given.append([run["id"] for run in runs])
        lock.close()  # the dying process is gone
        for run in runs:
            Path(run["config"]["run_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(run["config"]["run_dir"]) / "result.json").write_text("{}")

    monkeypatch.setitem(execute.EXECUTORS, "local", executor)
    assert execute.run_sweep(tmp_path) == {"done": 4}
    ids = [run["id"] for run in planned["runs"]]
    assert given == [ids[1:], ids[:1]]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_runs(data, tmp_path):
    sweep.plan_sweep(_spec(data), tmp_path)
    command = [sys.executable, "-m", "simslm", "sweep", "run", str(tmp_path), "--num-parallel", "1"]
    # A process killed outright leaves its forkserver's folder (pymp-*) in the temporary directory: this test's own,
    # short (under pytest's tmp_path a socket's path there could pass AF_UNIX's 107 bytes).
    temporary = tempfile.mkdtemp(prefix="simslm-")
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": temporary})
    results = lambda: sorted((tmp_path / "runs").glob("*/result.json"))  # noqa: E731
    deadline = time.time() + 300
    while not results() and time.time() < deadline:
        time.sleep(0.2)
    assert results(), "no run finished in time"
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its running child, mid-run
    process.wait()
    shutil.rmtree(temporary)
    finished = {path: path.stat().st_mtime_ns for path in results()}
    assert len(finished) < 4
    counts = execute.run_sweep(tmp_path, num_parallel=2, threads_per_run=1)
    assert counts == {"done": 4}
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime  # finished runs were not run again
    table = collect.status_table(tmp_path)
    assert "total: 4 done" in table
    rows = collect.collect(tmp_path)
    assert {row["loss_source"] for row in rows} == {"validation"} and len(rows) == 4
    # A copied sweep reads its own runs: the same ledger and the same numbers.
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved)
    assert ledger.status_counts(moved) == {"done": 4}
    assert [row["loss_speech"] for row in collect.collect(moved)] == [row["loss_speech"] for row in rows]
    assert all(row["run_dir"].startswith(str(moved)) for row in collect.collect(moved))
    empty = tmp_path.parent / f"{tmp_path.name}-empty"
    sweep.plan_sweep(_spec(data), empty)
    with pytest.raises(ValueError, match="no finished run"):  # an empty fit.json would replace a good one
        collect.fit_sweep(empty)


@pytest.mark.parametrize("cluster", ["slurm", "local"])
def test_sweep_wait_ends_when_a_job_died_without_a_result(data, tmp_path, monkeypatch, cluster):
    """A job killed for memory, cancelled or lost with its node writes no result file: `sweep wait` learns from
    SLURM (or, locally, from the controller's pid being gone) that it ended, and reports its run as failed
    instead of waiting forever."""
    import threading

    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    if cluster == "slurm":
        job_id = "4242_0"
        _fake_sacct(monkeypatch, {job_id: "OUT_OF_MEMORY"})
    else:
        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        ended.wait()  # reaped: its pid is free
        job_id = str(ended.pid)
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": job_id, "result": f"{job_id}_0_result.pkl", "stderr": f"{job_id}_0_log.err", "cluster": cluster}}))
    outcome = []

    def wait():
        try:
            execute.wait_for_sweep(tmp_path, poll_sec=0.05)
        except RuntimeError as error:
            outcome.append(str(error))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "sweep wait still waits for a job that has ended"
    assert outcome and outcome[0].startswith(f"{tmp_path}: 1 run(s) failed: {run['id']} (no error said; log ")


@pytest.mark.slow
def test_submitit_executor_runs_the_same_code_and_can_submit_and_return(data, tmp_path):
    pytest.importorskip("submitit")
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    # Waited for, a run of two tasks: each writes its own result, and `result()` of such a job is an AssertionError
    # ("use `results()`"), which failed every run of `--nproc-per-run 2` until the twenty-ninth session.
    counts = execute.run_sweep(tmp_path, executor="slurm", cluster="local", timeout_min=10, nproc_per_run=2)
    assert counts == {"done": 1}
    assert list((tmp_path / "submitit").iterdir())  # submitit's job folder: it really went through submitit
    # Submit and return, then follow the jobs from the ledger: a run of two tasks, torch.distributed set up
    # from the job's environment by submitit's helper.
    sweep.plan_sweep(_spec(data, depths=(2,), budgets_flops=(4e8,)), tmp_path / "two")
    execute.run_sweep(tmp_path / "two", executor="slurm", cluster="local", timeout_min=10, nproc_per_run=2,
                      wait=False)
    submitted = json.loads((tmp_path / "two" / "submitit" / "jobs.json").read_text())
    assert submitted
    # Until its job takes the run's lock, the run is queued, not pending: a second `sweep run` submits it again no
    # more than it would a running one.
    (run,) = sweep.load_sweep(tmp_path / "two")["runs"]
    assert ledger.run_status(run, ()) in ("queued", "running")
    execute.run_sweep(tmp_path / "two", executor="slurm", cluster="local", timeout_min=10, nproc_per_run=2,
                      wait=False)
    assert json.loads((tmp_path / "two" / "submitit" / "jobs.json").read_text()) == submitted
    assert execute.wait_for_sweep(tmp_path / "two", poll_sec=0.5) == {"done": 1}
    (run,) = sweep.load_sweep(tmp_path / "two")["runs"]
    assert json.loads((Path(run["config"]["run_dir"]) / "plan.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_job_warned_of_its_time_limit_is_requeued_and_its_run_resumes(data, tmp_path, processes):
    """SLURM's warning before a job's time limit, sent to every task of a job of submitit's local cluster: the
    run saves the step in hand, submitit requeues the job, and the requeued job finishes the run from there."""
    pytest.importorskip("submitit")
    import psutil

    train = {"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 10_000}  # no periodic checkpoint
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(2e9,), train=train), tmp_path)
    execute.run_sweep(tmp_path, executor="slurm", cluster="local", timeout_min=10, wait=False, nproc_per_run=processes)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    run_dir = Path(run["config"]["run_dir"])
    job = json.loads((tmp_path / "submitit" / "jobs.json").read_text())[run["id"]]
    deadline = time.time() + 120
    while time.time() < deadline and (not (run_dir / "metrics.jsonl").exists()
                                      or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 3):
        time.sleep(0.05)
    tasks = psutil.Process(int(job["job_id"])).children()  # the local job's controller runs its tasks
    assert len(tasks) == processes
    for task in tasks:
        task.send_signal(signal.SIGUSR2)
    assert execute.wait_for_sweep(tmp_path, poll_sec=0.5) == {"done": 1}
    logs = "".join((tmp_path / "submitit" / job["stderr"].replace(".err", end)).read_text() for end in (".err", ".out"))
    assert "this job is timed-out" in logs and "Requeued job" in logs and logs.count("Starting with") == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    total = json.loads((run_dir / "plan.json").read_text())["total_steps"]
    assert steps == list(range(1, total + 1))  # every step once: none redone, none skipped
    # Besides the last step's, the checkpoint saved when warned, off the periodic grid.
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert len(saved) == 2 and 3 <= saved[0] < total and saved[1] == total


@pytest.mark.slow
def test_a_run_forked_from_the_warm_server_equals_one_in_a_fresh_interpreter(data, tmp_path, monkeypatch, capsys):
    forked, fork = [], execute._ForkedRun
    monkeypatch.setattr(execute, "_ForkedRun", lambda *args: forked.append(args[2]) or fork(*args))
    runs = {}
    for name, fresh in (("fresh", True), ("warm", False)):
        sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path / name)
        assert execute.run_sweep(tmp_path / name, num_parallel=1, fresh_processes=fresh) == {"done": 1}
        (runs[name],) = sweep.load_sweep(tmp_path / name)["runs"]
    assert forked == [runs["warm"]["id"]]  # only the warm sweep forked, once
    results = {name: json.loads((Path(run["config"]["run_dir"]) / "result.json").read_text())
               for name, run in runs.items()}
    for key in ("final_train", "validation", "validation_batches", "steps"):
        assert results["warm"][key] == results["fresh"][key]  # same thread count, same numbers, bit for bit
    log = (tmp_path / "warm" / "runs" / f"{runs['warm']['id']}.log").read_text()
    assert log.strip().endswith("done")  # run-one's own output went to the run's log
    # A run that fails in a fork fails the sweep as a subprocess's would, its one-line error in its log.
    sweep.plan_sweep(_spec(data, depths=(2,), budgets_flops=(4e8,)), tmp_path / "bad")
    (bad,) = sweep.load_sweep(tmp_path / "bad")["runs"]
    Path(bad["config"]["run_dir"]).mkdir(parents=True)
    (Path(bad["config"]["run_dir"]) / "config.json").write_text(json.dumps({**bad["config"], "lr": 1.0}))
    with pytest.raises(RuntimeError, match=f"1 run\\(s\\) failed: {bad['id']}"):
        execute.run_sweep(tmp_path / "bad", num_parallel=1)
    log = (tmp_path / "bad" / "runs" / f"{bad['id']}.log").read_text()
    assert "simslm sweep run-one: error: " in log and "another config (other lr)" in log and "Traceback" not in log
    # Through the command: one line naming the sweep, as the runs' own errors are in their logs (no --debug hint,
    # whose traceback would show only where the sweep waited).
    from simslm.cli import main

    capsys.readouterr()
    assert main(["sweep", "run", str(tmp_path / "bad"), "--num-parallel", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"simslm sweep run: error: {tmp_path / 'bad'}: 1 run(s) failed: {bad['id']}"), err
    assert "--debug" not in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_run_of_two_processes_through_torchrun_on_the_local_executor(data, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path / "sweep")
    assert execute.run_sweep(tmp_path / "sweep", num_parallel=1, nproc_per_run=2) == {"done": 1}
    (run,) = sweep.load_sweep(tmp_path / "sweep")["runs"]
    assert json.loads((Path(run["config"]["run_dir"]) / "plan.json").read_text())["world_size"] == 2
    assert list((tmp_path / "tmp").glob("torchelastic_*")) == []  # torchrun left no log folder behind
    assert (tmp_path / "sweep" / "runs" / f"{run['id']}.log").read_text().splitlines().count("done") == 1  # rank 0's


@pytest.mark.slow
def test_a_sweep_over_families_of_real_architectures(extracted, tmp_path):
    from simslm.sequences.build import BuildConfig, build_sequences

    families = {name: [tiny_base_model(tmp_path / "models" / f"{name}-{width}", name, width, layers)
                       for width, layers in ((32, 1), (48, 1), (64, 2))] for name in ("qwen2", "llama")}
    # Each family's sequences with its own tokenizer (transformers reads tok512 beside a Qwen2 config as a
    # Qwen2 tokenizer with one more token: the check in `train` refuses a mix-up).
    config, _, _ = extracted
    data = {}
    for name, models in families.items():
        data[name] = str(tmp_path / f"seq-{name}")
        build_sequences(BuildConfig(out=data[name], tokenizer=models[0], manifest=config.manifest, units=config.out,
                                    streams=("interleaved", "speech"), context_length=64))
    spec = sweep.SweepSpec.from_json({
        "families": families, "budgets_flops": [4e8], "validation_data": data,
        "variants": [{"name": "twist", "data": data}, {"name": "scratch", "data": data, "init": "random"}],
        "train": {"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 50}})
    planned = sweep.plan_sweep(spec, tmp_path / "sweep")
    assert len(planned["runs"]) == 12  # 2 families x 3 sizes x 2 variants
    assert {run["variant"] for run in planned["runs"]} == {"qwen2/twist", "qwen2/scratch", "llama/twist",
                                                            "llama/scratch"}
    assert any(run["id"].startswith("qwen2-qwen2-64-twist-c4e08-") for run in planned["runs"])
    counts = execute.run_sweep(tmp_path / "sweep", num_parallel=2, threads_per_run=1)
    assert counts == {"done": 12}
    from transformers import AutoModelForCausalLM

    for row in collect.collect(tmp_path / "sweep"):
        # N is the model's own count after its vocabulary grew by the units and markers.
        trained = AutoModelForCausalLM.from_pretrained(Path(row["run_dir"]) / "model")
        assert row["parameters"] == sum(p.numel() for p in trained.parameters())
        architecture = row["variant"].split("/")[0]
        assert trained.config.model_type == architecture
    sizes = {(row["variant"], row["member"]): row["parameters"] for row in collect.collect(tmp_path / "sweep")}
    assert sizes["qwen2/twist", "qwen2-32"] < sizes["qwen2/twist", "qwen2-48"] < sizes["qwen2/twist", "qwen2-64"]
    assert sizes["qwen2/twist", "qwen2-32"] == sizes["qwen2/scratch", "qwen2-32"]  # same architecture from scratch


def test_the_local_executor_starts_the_runs_bracketing_adds_before_the_rest(tmp_path, monkeypatch):
    started = []

    class Ended:  # a run that has ended once it has started
        returncode = 0

        def __init__(self, context, sweep_dir, identifier, *rest):
            started.append(identifier)

        def poll(self):
            return 0

    monkeypatch.setattr(execute, "_ForkedRun", Ended)
    monkeypatch.setattr(execute, "_warm_context", object)
    monkeypatch.setattr(execute, "_cuda_present", lambda: False)
    monkeypatch.setenv(PEAK_FLOPS_VARIABLE, "1e11")
    run = lambda name: {"id": name, "config": {"run_dir": str(tmp_path / "runs" / name)}}  # noqa: E731
    answers = iter([[], [run("grown"), run("c")]])  # after a: nothing yet; after b: a new run, and c (queued)
    execute._local(tmp_path, [run(name) for name in "abcd"], num_parallel=1,
                   more=lambda ended: next(answers, [run("grown")]))
    assert started == ["a", "b", "grown", "c", "d"]


def test_a_local_sweep_trains_as_many_runs_at_once_as_the_machine_holds(tmp_path, monkeypatch):
    """`sweep run` trained 2 runs at once unless told: 2 of 16 cores busy with one-thread runs, and with --gpus
    0,1,2,3 two of the four GPUs idle. Now --num-parallel 0, the default, fills the machine."""
    from simslm import machine

    monkeypatch.setattr(machine, "default_workers", lambda: 8)
    at_once = functools.partial(execute.runs_at_once, 0, threads_per_run=1, nproc_per_run=1)
    assert at_once(slots=4, cuda=True) == 4  # a run per GPU group
    assert at_once(slots=0, cuda=True) == 1  # every run would take the same GPU
    assert at_once(slots=0, cuda=False) == 8
    assert execute.runs_at_once(0, slots=0, cuda=False, threads_per_run=2, nproc_per_run=2) == 2
    assert execute.runs_at_once(0, slots=0, cuda=False, threads_per_run=16, nproc_per_run=1) == 1
    assert execute.runs_at_once(5, slots=2, cuda=True, threads_per_run=1, nproc_per_run=1) == 2  # as asked, at most
    assert execute.runs_at_once(3, slots=0, cuda=False, threads_per_run=1, nproc_per_run=1) == 3
    # The executor itself, by default: as many one-thread runs at once as there are cores (3 here).
    monkeypatch.setattr(machine, "default_workers", lambda: 3)
    live, peak = [0], [0]

    class Run:  # a run that has ended when first looked at
        returncode = 0

        def __init__(self, *given):
            live[0] += 1
            peak[0] = max(peak[0], live[0])

        def poll(self):
            live[0] -= 1
            return 0

    monkeypatch.setattr(execute, "_ForkedRun", Run)
    monkeypatch.setattr(execute, "_warm_context", object)
    monkeypatch.setattr(execute, "_cuda_present", lambda: False)
    monkeypatch.setenv(PEAK_FLOPS_VARIABLE, "1e11")
    execute._local(tmp_path, [{"id": name, "config": {"run_dir": str(tmp_path / "runs" / name)}} for name in "abcde"])
    assert peak[0] == 3
    assert execute.RunSweepConfig(sweep="s").num_parallel == 0
    # Asked without saying (the demo's sweep), CUDA is as torch sees it: a GPU machine runs one at a time.
    assert execute.runs_at_once(0) == 3
    monkeypatch.setattr(execute, "_cuda_present", lambda: True)
    assert execute.runs_at_once(0) == 1


def test_a_sweep_on_the_cpu_measures_each_peak_its_runs_need_once(tmp_path, monkeypatch, measured_peak):
    """The MFU denominators, measured once by the sweep before its runs load the cores: fp32's for every run, and
    bf16's as well when its runs train in bf16 (each measured its own, 2-5 s a run on a CPU without native bf16
    products, beside its neighbours' load). A denominator the user gave is kept."""
    measured, environments = [], []

    class Ended:
        returncode = 0

        def __init__(self, context, sweep_dir, identifier, log_path, threads, environment):
            environments.append({key: environment.get(key) for key in (PEAK_FLOPS_VARIABLE,
                                                                       PEAK_FLOPS_BF16_VARIABLE)})

        def poll(self):
            return 0

    monkeypatch.setattr(execute, "_ForkedRun", Ended)
    monkeypatch.setattr(execute, "_warm_context", object)
    monkeypatch.setattr(execute, "_cuda_present", lambda: False)
    monkeypatch.setattr(execute, "_peak_flops",
                        lambda threads, bf16=False: measured.append(bf16) or (2e9 if bf16 else 3e10))

    def runs(precision):
        return [{"id": name, "config": {"run_dir": str(tmp_path / precision / name), "precision": precision}}
                for name in "ab"]

    execute._local(tmp_path, runs("fp32"), num_parallel=1)
    assert measured == [False] and environments == [{"SIMSLM_PEAK_FLOPS": "30000000000.0",
                                                    "SIMSLM_PEAK_FLOPS_BF16": None}] * 2
    measured.clear()
    environments.clear()
    execute._local(tmp_path, runs("bf16-weights"), num_parallel=1)
    assert measured == [False, True] and environments == [{"SIMSLM_PEAK_FLOPS": "30000000000.0",
                                                          "SIMSLM_PEAK_FLOPS_BF16": "2000000000.0"}] * 2
    measured.clear()
    environments.clear()
    monkeypatch.setenv(PEAK_FLOPS_BF16_VARIABLE, "5e9")
    execute._local(tmp_path, runs("bf16"), num_parallel=1)
    assert measured == [False] and environments[0]["SIMSLM_PEAK_FLOPS_BF16"] == "5e9"


def test_runs_placed_on_gpus_where_there_are_none_are_refused(data, tmp_path, monkeypatch):
    """`sweep run --gpus 0,1` on a machine without CUDA gave each run CUDA_VISIBLE_DEVICES, and every run trained on
    the CPU (its `--device auto`) without a word."""
    monkeypatch.setattr(execute, "_cuda_present", lambda: False)
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    with pytest.raises(ValueError, match=r"--gpus 0,1: torch sees no CUDA device here; leave --gpus out"):
        execute.run_sweep(tmp_path, gpus="0,1")
    assert not any((tmp_path / "runs").glob("*/config.json"))

