import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simslm import jobs, slurm
from simslm.scaling import execute, ledger, sweep
from tests.conftest import slurm_without_accounting
from tests.scaling.helpers import _fake_sacct, _spec, _started_run


def test_a_run_evaluated_part_way_is_evaluated_on_the_rest_only(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {"sblimp": {}, "tsc/S": {}, "tsc/T": {}}}))
    bench = ("bench/sblimp", "tsc=bench/tsc", "swuggy=bench/wuggy", "validation")
    assert ledger.unevaluated(tmp_path, bench) == ("swuggy=bench/wuggy", "validation")
    assert not ledger._evaluated(tmp_path, bench) and ledger._evaluated(tmp_path, bench[:2])


def test_a_run_scored_on_a_benchmark_folder_built_again_since_is_scored_again(tmp_path):
    import os

    from simslm import storage
    from simslm.eval.layouts import bench_digest

    def build(folder, words):  # as `bench build` writes a folder: whole, then moved into place
        with storage.atomic_path(folder) as staging:
            staging.mkdir()
            (staging / "gold.csv").write_text("id,filename,word,correct\n" + "".join(
                f"{i},audio/{i},{word},1\n" for i, word in enumerate(words)))
            (staging / "bench.json").write_text(json.dumps({"layout": "slm21-lexical"}))

    folder, run = tmp_path / "swuggy", tmp_path / "run"
    build(folder, ["cat", "dog"])
    run.mkdir()
    entry = {"accuracy": 0.5, "num_cut": 0, "scoring": {}, "bench_digest": bench_digest(folder)}
    (run / "eval.json").write_text(json.dumps({"benchmarks": {"swuggy": entry, "swuggy/in-vocab": entry}}))
    bench = (f"swuggy={folder}",)
    assert ledger._evaluated(run, bench)
    build(folder, ["cat", "pig"])  # other words (a new seed, another way of making non-words)
    assert ledger.unevaluated(run, bench) == bench
    build(folder, ["cat", "dog"])  # built again alike: the same benchmark, scored
    assert ledger._evaluated(run, bench)
    # A result from before digests were recorded: stale where the folder was built after it was written.
    legacy = {"accuracy": 0.5, "num_cut": 0, "scoring": {}}
    (run / "eval.json").write_text(json.dumps({"benchmarks": {"swuggy": legacy}}))
    assert ledger._evaluated(run, bench)
    later = (run / "eval.json").stat().st_mtime + 10
    os.utime(folder / "bench.json", (later, later))
    assert ledger.unevaluated(run, bench) == bench


def test_a_run_whose_long_sides_were_cut_before_is_scored_again_as_slamkit_scores_them(tmp_path):
    # eval.json entries from before `--long-sides` (cut, the only way then) with sides past the model's positions
    # are scored again, whole, so a sweep's runs are scored alike; without such sides cut and whole are the same.
    cut = {"num_cut": 154, "scoring": {"preset": "reference"}}
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {
        "tsc/S": cut, "tsc/T": {"num_cut": 0, "scoring": {}}, "sblimp": {"num_cut": 0, "scoring": {}},
        "old/S": {**cut, "scoring": {"long_sides": "whole"}}}}))
    assert ledger.unevaluated(tmp_path, ("tsc=bench/tsc", "bench/sblimp", "old=bench/old")) == ("tsc=bench/tsc",)


def test_a_run_evaluated_on_a_published_set_named_by_hub_id_counts_as_evaluated(tmp_path):
    # `simslm eval --bench slprl/multispeaker-storycloze:sSC` files its results under the set's name and folder;
    # the sweep once looked for "multispeaker-storycloze:sSC", so such a run stayed "evaluating" and was
    # evaluated again by every `sweep run`.
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {
        "multispeaker-storycloze/sSC": {}, "generation": {}, "a=b": {}}}))
    bench = ("slprl/multispeaker-storycloze:sSC", "generation=prompts/tsc", "a=b=bench/c", "slprl/sblimp")
    assert ledger.unevaluated(tmp_path, bench) == ("slprl/sblimp",)


def test_a_half_written_result_is_not_done_and_a_locked_run_is_skipped(data, tmp_path):
    first, run_dir = _started_run(data, tmp_path)
    (run_dir / ".result.json.tmp").write_text('{"half": ')
    assert ledger.run_status(first, ()) == "started"
    with open(run_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert ledger.run_status(first, ()) == "running"
        assert execute.execute_run(str(tmp_path), first["id"]) == "running"  # a second worker backs off
    assert ledger.run_status(first, ()) == "started"  # the lock dies with its holder


def test_a_user_who_may_only_read_a_sweep_sees_which_runs_are_held(data, tmp_path):
    """`sweep status` by a colleague with read access only: the lock probe opened the run's lock file for
    appending, which failed with PermissionError. A process that may not write the sweep (`as_reader`) asks while
    this one holds the run's lock, and after."""
    import sys

    from tests.conftest import as_reader

    first, run_dir = _started_run(data, tmp_path)
    (run_dir / ".lock").write_text("")
    probe = [*as_reader(), sys.executable, "-c", "import json, sys; from simslm.scaling import ledger; "
             "print(ledger.run_status(json.loads(sys.argv[1]), ()))", json.dumps(first)]
    for path in (run_dir / ".lock", run_dir / "config.json", run_dir):
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        with open(run_dir / ".lock", "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        free = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    finally:
        run_dir.chmod(0o755)
    assert (held.stdout.strip(), free.stdout.strip()) == ("running", "started"), held.stderr + free.stderr


def _local_job(tmp_path, run, pid) -> None:
    """The sweep's ledger of cluster jobs with `run`'s job on submitit's local cluster: its controller's pid."""
    (tmp_path / "submitit").mkdir(exist_ok=True)
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": str(pid), "result": f"{pid}_0_result.pkl", "stderr": f"{pid}_0_log.err", "cluster": "local"}}))


def _sleeper(*arguments: str) -> subprocess.Popen:
    """A Python process asleep for a minute, `arguments` in its command line, returned once it runs: until its exec
    is through, /proc shows it no command line, as it shows a job's controller still starting."""
    process = subprocess.Popen([sys.executable, "-c", "print(flush=True); import time; time.sleep(60)", *arguments],
                               stdout=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()
    return process


def _proc_says(pid: int) -> str:
    """What /proc shows of process `pid`, for an assertion's message."""
    try:
        return f"cmdline {Path(f'/proc/{pid}/cmdline').read_bytes()!r}, stat {Path(f'/proc/{pid}/stat').read_text()!r}"
    except OSError as error:
        return str(error)


def test_a_run_whose_cluster_job_waits_in_the_queue_is_queued_and_not_submitted_again(data, tmp_path):
    """A run submitted with `sweep run --no-wait` read `pending` until its job started, and a second `sweep run`
    submitted it again. Here the job is a process of submitit's local cluster that has not taken the run (its
    controller's pid, alive); once it is gone without a result, the run is pending again."""
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    # As submitit's local controller runs (`python -m submitit.local._local FOLDER`): its module in its command line.
    waiting = _sleeper("submitit.local._local")
    try:
        _local_job(tmp_path, run, waiting.pid)
        assert ledger.run_status(run, ()) == "queued", _proc_says(waiting.pid)
        assert ledger.status_counts(tmp_path) == {"queued": 1}
        assert execute.run_sweep(tmp_path, num_parallel=1) == {"queued": 1}  # nothing started, nothing trained
        assert not (Path(run["config"]["run_dir"]) / "config.json").exists()
    finally:
        waiting.kill()
        waiting.wait()
    assert ledger.run_status(run, ()) == "pending"
    # A ledger from before jobs recorded their cluster cannot say whether the job ended: not queued.
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": "1", "result": "1_0_result.pkl", "stderr": "1_0_log.err"}}))
    assert ledger.run_status(run, ()) == "pending"


def test_a_local_job_whose_pid_is_another_process_now_or_a_zombie_has_ended(data, tmp_path):
    """The pid of a local job's controller alive, but another process's (the machine restarted since), or a zombie
    not yet reaped (alive to kill(0), no command line): the job has ended, and its run is pending, not `queued`
    for good. Told apart by the command line /proc shows, which needs /proc of this PID namespace."""
    if not jobs.proc_shows_this_namespace():
        pytest.skip("reads command lines from /proc, which here lists another PID namespace's processes")
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    other = _sleeper()
    try:
        _local_job(tmp_path, run, other.pid)
        assert ledger.run_status(run, ()) == "pending", _proc_says(other.pid)
    finally:
        other.kill()
        other.wait()
    ended = subprocess.Popen([sys.executable, "-c", "pass", "submitit.local._local"])
    try:
        deadline = time.time() + 30
        while Path(f"/proc/{ended.pid}/stat").read_text().rpartition(") ")[2][0] != "Z" and time.time() < deadline:
            time.sleep(0.05)
        _local_job(tmp_path, run, ended.pid)
        assert ledger.run_status(run, ()) == "pending", _proc_says(ended.pid)
    finally:
        ended.wait()


def test_where_proc_lists_another_namespace_a_live_job_stays_queued(data, tmp_path):
    """In a PID namespace given its parent's /proc, /proc/<pid> is another process: a kernel thread often, whose
    empty command line read as a job still starting, or none, read as a job ended. There the pid being alive is all
    there is to go by."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --pid` (util-linux, as root) to make a PID namespace")
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    (tmp_path / "submitit").mkdir()
    jobs_file = tmp_path / "submitit" / "jobs.json"
    # The job's controller is the script itself: pid 1 in its namespace, alive, and /proc/1 the machine's init,
    # whose command line is not submitit's (read so, the job had ended).
    script = f"""
import json, os
from simslm import jobs
from simslm.scaling import ledger

run = {run!r}
open({str(jobs_file)!r}, "w").write(json.dumps({{run["id"]: {{
    "job_id": str(os.getpid()), "result": "x_result.pkl", "stderr": "x_log.err", "cluster": "local"}}}}))
print(jobs.proc_shows_this_namespace(), ledger.run_status(run, ()))
"""
    told = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert told.returncode == 0, told.stderr[-2000:]
    assert told.stdout.split() == ["False", "queued"]


def test_a_status_pass_asks_slurm_of_all_its_jobs_in_one_call(data, tmp_path, monkeypatch):
    """Each job new to submitit's watcher forced a call of sacct: a status pass over a sweep of 100 runs ran it 100
    times. Made known all at once, they are asked of in one call a pass."""
    sweep.plan_sweep(_spec(data, depths=(1, 2, 3), budgets_flops=(4e8, 8e8)), tmp_path)
    runs = sweep.load_sweep(tmp_path)["runs"]
    assert len(runs) > 2
    states = {str(1000 + number): "PENDING" for number in range(len(runs))}
    states["1000"] = "CANCELLED by 0"  # ended without a result: its run is not queued
    calls = _fake_sacct(monkeypatch, states)
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": job_id, "result": f"{job_id}_0_result.pkl", "stderr": f"{job_id}_0_log.err", "cluster": "slurm"}
        for run, job_id in zip(runs, states)}))
    assert ledger.status_counts(tmp_path) == {"pending": 1, "queued": len(runs) - 1}
    assert calls == [sorted(states)]
    # The next pass asks once more, of the jobs that had not ended.
    assert ledger.status_counts(tmp_path) == {"pending": 1, "queued": len(runs) - 1}
    assert calls[1:] == [sorted(states)[1:]]


def test_where_slurm_keeps_no_accounting_its_queue_says_which_jobs_have_ended(data, tmp_path, monkeypatch):
    """sacct fails where a cluster keeps no accounting, and knows nothing yet of a job just submitted: every state
    read UNKNOWN, so a job that died without a result read `queued` for good (`sweep run` never started its run
    again, `sweep wait` waited forever). squeue, asked once for all of them, says which are still there. Both are
    scripts on PATH here, as SLURM's commands are on a login node."""
    sweep.plan_sweep(_spec(data, depths=(1, 2, 3), budgets_flops=(4e8, 8e8)), tmp_path)
    runs = sweep.load_sweep(tmp_path)["runs"][:4]
    # 1000 runs, 1001 is gone from the queue (killed, purged), 1002_0 is an array task pending, 1003 was cancelled.
    _, asked = slurm_without_accounting(tmp_path, monkeypatch, "1000|RUNNING\n1002_0|PENDING\n1003|CANCELLED\n")
    job_ids = ["1000", "1001", "1002_0", "1003"]
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": job_id, "result": f"{job_id}_result.pkl", "stderr": f"{job_id}_log.err", "cluster": "slurm"}
        for run, job_id in zip(runs, job_ids)}))
    statuses = {run["id"]: ledger.run_status(run, ()) for run in runs}
    assert [statuses[run["id"]] for run in runs] == ["queued", "pending", "queued", "pending"]
    assert asked.read_text().splitlines() == ["--noheader --array --format %i|%T --jobs 1000,1001,1002,1003"]
    # Where squeue does not answer either (a copy of the sweep off the cluster), nothing tells: still queued.
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm "
                                             "controller' >&2\nexit 1\n")
    monkeypatch.setattr(slurm, "SLURM_QUEUE", slurm.SlurmQueue())
    assert [ledger.run_status(run, ()) for run in runs] == ["queued"] * 4

