"""What the sweep tests share: a small spec, a run started and not finished, a fake of SLURM's accounting."""

from pathlib import Path

from simslm import slurm
from simslm.scaling import sweep


def _spec(data, **changes):
    values = dict(variants=(sweep.Variant(name="random", data=data, init="random"),),
                  depths=(1, 2), budgets_flops=(4e8, 8e8), validation_data=data,
                  train={"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 2})
    values.update(changes)
    return sweep.SweepSpec(**values)


def _started_run(data, sweep_dir: Path) -> tuple[dict, Path]:
    """The first run of a planned sweep, started (its config written) and not finished."""
    first = sweep.plan_sweep(_spec(data), sweep_dir)["runs"][0]
    run_dir = Path(first["config"]["run_dir"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    return first, run_dir


def _fake_sacct(monkeypatch, states: dict[str, str]) -> list[list[str]]:
    """SLURM's accounting as submitit asks it (`sacct ... -j ID -j ID`), answering `states` (job id: state), to a
    fresh watcher; the job ids of each call."""
    import submitit
    from submitit.core import core
    from submitit.slurm import slurm as submitit_slurm

    calls = []

    def sacct(command, **_):
        assert command[0] == "sacct", command
        asked = [command[at + 1] for at, word in enumerate(command) if word == "-j"]
        calls.append(sorted(asked))
        known = [(job_id, state) for job_id, state in states.items() if job_id.split("_")[0] in asked]
        return ("JobID|State|NodeList\n" + "".join(f"{job_id}|{state}|node1\n" for job_id, state in known)).encode()

    monkeypatch.setattr(core.subprocess, "check_output", sacct)
    monkeypatch.setattr(submitit.SlurmJob, "watcher", submitit_slurm.SlurmInfoWatcher(delay_s=600))
    monkeypatch.setattr(slurm, "SLURM_QUEUE", slurm.SlurmQueue())
    return calls

