import os
import time

import pytest

from simslm import slurm
from tests.conftest import slurm_without_accounting


@pytest.mark.parametrize("tasks", [1, 2])
def test_a_slurm_executor_warns_ahead_and_ends_a_job_whose_task_died(tmp_path, monkeypatch, tasks):
    """What a SLURM job is submitted with (submitit needs only `srun` on the PATH to build its sbatch options):
    the time-limit warning `warning_s` ahead, and for a job of several tasks, srun's kill-on-bad-exit."""
    pytest.importorskip("submitit")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    executor = slurm.submitit_executor(tmp_path / "jobs", "slurm", timeout_min=60, tasks_per_node=tasks,
                                       warning_s=120, slurm_partition="gpu")
    assert executor.parameters["signal_delay_s"] == 120 and executor.parameters["partition"] == "gpu"
    assert executor.parameters.get("srun_args") == (["--kill-on-bad-exit=1"] if tasks > 1 else None)


def test_slurm_jobs_are_not_run_here_unless_asked_where_there_is_no_slurm(tmp_path, monkeypatch):
    """With no sbatch on the PATH (a login node without its SLURM module), `--executor slurm` ran every job on
    this machine through submitit's local cluster, its SLURM options unused, without a word."""
    import submitit

    monkeypatch.setattr(submitit.AutoExecutor, "which", staticmethod(lambda: "local"))
    with pytest.raises(ValueError, match=r"--executor slurm: no SLURM here \(sbatch is not on PATH\); run where "
                                         r"sbatch is, or pass --cluster local"):
        slurm.submitit_executor(tmp_path / "jobs", None, timeout_min=60)
    assert not (tmp_path / "jobs").exists()
    assert isinstance(slurm.submitit_executor(tmp_path / "jobs", "local", timeout_min=60), submitit.LocalExecutor)


def test_a_slurm_job_that_ended_without_a_result_is_a_failure_where_slurm_keeps_no_accounting(tmp_path,
                                                                                                monkeypatch):
    # submitit waits for a job until its result file appears or sacct says it ended; where sacct fails (a cluster
    # without accounting) every state is UNKNOWN, and a job killed without a result was waited for forever
    # (`sweep run --executor slurm`, `units extract`'s SLURM array). SLURM's queue says it is gone. `sacct` and
    # `squeue` are scripts on PATH here, as SLURM's commands are on a login node.
    import threading

    import cloudpickle
    import submitit

    # 1001 was killed and is gone; 1002, a job of two tasks (a run of two processes), runs, and each task writes
    # its result later.
    slurm_without_accounting(tmp_path, monkeypatch, "1002|RUNNING\n")
    monkeypatch.setattr(slurm.SlurmQueue, "REFRESH_SEC", 0.0)
    monkeypatch.setattr(slurm, "JOB_POLL_SEC", 0.05)
    folder = tmp_path / "jobs"
    folder.mkdir()
    killed, running = submitit.SlurmJob(folder, "1001"), submitit.SlurmJob(folder, "1002", tasks=(0, 1))
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(slurm.job_failures(
        [("killed", killed), ("running", running)], "jobs")), daemon=True)
    waiter.start()
    for task in (0, 1):
        time.sleep(0.5)
        assert waiter.is_alive()  # 1002 is still in the queue, and a task's result still to come: waited for
        with open(running.task(task).paths.result_pickle, "wb") as handle:
            cloudpickle.dump(("success", 40 + task), handle)
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "still waiting for a job that has ended"
    assert outcome == [[f"killed (it ended without a result; log {killed.paths.stderr})"]]
    assert running.results() == [40, 41]

