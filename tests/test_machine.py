import os
import subprocess
import sys

import pytest

from simslm import machine

_FAULTS = """
import resource, sys
import numpy as np
from simslm import cli, machine
if sys.argv[1] == "library":
    machine.keep_freed_memory()
elif sys.argv[1] == "cli":
    cli.main(["sweep", "status", "/nonexistent"])  # any command, even one that fails
print(machine._freed_memory_kept)
def faults():  # a step's worth of blocks over malloc's thresholds, freed together
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        blocks = [np.ones(3 << 19, dtype=np.uint8) for _ in range(8)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
@pytest.mark.parametrize("how", ["library", "cli"])
def test_freed_memory_is_kept_for_reuse_unless_the_user_set_malloc(how):
    def run(*extra, **environment):
        env = {name: value for name, value in os.environ.items()
               if name not in (*machine._MALLOC_SETTINGS, "SIMSLM_KEEP_FREED_MEMORY")}
        output = subprocess.run([sys.executable, "-c", _FAULTS, *extra], capture_output=True, text=True, check=True,
                                env={**env, **environment}).stdout.split()
        return output[-2] == "True", int(output[-1])

    default = run("none")
    kept = run(how)
    assert kept[0] and kept[1] < default[1] / 100  # 8 x 1.5 MiB freed and taken again: ~30k page faults by default
    for setting in ({"MALLOC_TRIM_THRESHOLD_": "131072"}, {"SIMSLM_KEEP_FREED_MEMORY": "0"}):
        users = run(how, **setting)  # the user's own setting wins
        assert not users[0] and users[1] > default[1] / 2


def test_default_workers_keep_to_a_containers_cpu_quota(tmp_path, monkeypatch):
    """A container limited to some CPUs (a Kubernetes pod's `limits.cpu`) still sees every core of its host in its
    affinity; the pools size themselves by the limit, read from cgroup v2's cpu.max or v1's CFS files."""
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(machine, "CGROUP_ROOT", tmp_path)
    assert machine.cgroup_cpu_quota() is None and machine.default_workers() == cores  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert machine.cgroup_cpu_quota() is None and machine.default_workers() == cores
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one worker
    assert machine.cgroup_cpu_quota() == 0.5 and machine.default_workers() == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (cores + 3)} 100000\n")  # more than the cores: the cores
    assert machine.default_workers() == cores
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert machine.cgroup_cpu_quota() == 1.5 and machine.default_workers() == min(cores, 2)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert machine.cgroup_cpu_quota() is None


def test_threads_keep_to_a_containers_cpu_quota_unless_set(tmp_path, monkeypatch):
    """torch and BLAS start a thread per core they see; under a CPU quota below the cores, OMP_NUM_THREADS is set to
    the quota before they load (`simslm` does it as it starts), unless the user set it."""
    monkeypatch.setattr(machine, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(machine, "_affinity_cores", lambda: 64)  # a large host, whatever this machine is
    environ: dict[str, str] = {}
    machine.threads_within_quota(environ)
    assert environ == {}  # no quota
    (tmp_path / "cpu.max").write_text("350000 100000\n")
    machine.threads_within_quota(environ)
    assert environ == {"OMP_NUM_THREADS": "4"}
    given = {"OMP_NUM_THREADS": "16"}
    machine.threads_within_quota(given)
    assert given == {"OMP_NUM_THREADS": "16"}
    (tmp_path / "cpu.max").write_text(f"{100000 * 64} 100000\n")  # a quota of every core: nothing to do
    fresh: dict[str, str] = {}
    machine.threads_within_quota(fresh)
    assert fresh == {}


def test_a_cuda_device_past_the_ones_torch_sees_is_said_before_any_work(monkeypatch):
    """`--device cuda:3` on a machine of one GPU reached torch's "invalid device ordinal" once a model was moved."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert machine.torch_device("cuda:1") == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert machine.torch_device("cuda") == "cuda:1"
    with pytest.raises(ValueError, match=r"--device cuda:2: torch sees 2 CUDA device\(s\) here"):
        machine.torch_device("cuda:2")
