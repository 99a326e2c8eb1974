"""What the training tests share: a run's config over the test data, its losses, torchrun as the tests start it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from simslm.train.loop import train
from simslm.train.plan import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def _torchrun(processes: int, *arguments: str) -> list[str]:
    """torchrun of `processes` with its log folder off, as `simslm sweep` runs it (`simslm.torchrun`): no test
    leaves a torchelastic_* folder in the temporary directory, and a failed rank's own error is the end of the
    output a failing assertion shows, not torch's traceback and table."""
    return [sys.executable, "-m", "simslm.torchrun", "--standalone", "--log-dir", os.devnull,
            "--nproc_per_node", str(processes), *arguments]


def _rank_env() -> dict[str, str]:
    """The environment of a test's torchrun: a thread a process (two processes share two cores), and Python's fault
    handler on, so that a rank that aborts shows where each of its threads was (SIGABRT, "terminate called without
    an active exception": in CI after the twenty-second and twenty-eighth sessions, not reproduced here)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def _config(data, run_dir, **changes):
    values = dict(run_dir=str(run_dir), data=data, base_model="stories260K", budget_tokens=24 * 4 * 64,
                  batch_size=4, checkpoint_every=4)
    values.update(changes)
    return TrainConfig(**values)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _run_command(config_path):
    return [sys.executable, "-m", "simslm", "train", "--config", str(config_path)]


def _as_written_before_model_configs(checkpoint):
    """A checkpoint as simslm wrote them before they kept their model's config, generation settings and buffers."""
    checksums = json.loads((checkpoint / "checksums.json").read_text())
    for name in ("model_config.json", "generation_config.json", "buffers.safetensors"):
        (checkpoint / name).unlink()
        del checksums[name]
    (checkpoint / "checksums.json").write_text(json.dumps(checksums))


def _one_process_and_torchrun(data, tmp_path, shared=None, **parallel_changes):
    """The same 6-step run (with `shared` changes) as one process with batch 4 and as 2 torchrun processes with
    batch 2. The one process is this one: a process of its own spent 6 s of the suite importing torch and
    transformers again, for losses compared to a tolerance."""
    env = _rank_env()
    single = _config(data, tmp_path / "single", budget_tokens=6 * 4 * 64, batch_size=4, checkpoint_every=3,
                     **(shared or {}))
    parallel = _config(data, tmp_path / "parallel", budget_tokens=6 * 4 * 64, batch_size=2, checkpoint_every=3,
                       **(shared or {}), **parallel_changes)
    (tmp_path / "parallel.json").write_text(json.dumps(parallel.__dict__))
    train(single)
    (tmp_path / "reads.py").write_text(READS_COUNTED)
    torchrun = _torchrun(2, str(tmp_path / "reads.py"), "train", "--config", str(tmp_path / "parallel.json"))
    completed = subprocess.run(torchrun, env=env, cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # transformers' notice of the new embedding rows (TWIST), from the first process only
    assert completed.stderr.count("new embeddings will be initialized") <= 1, completed.stderr[-3000:]
    # The steps sum their counts and losses over the processes on the device and read nothing back inside a step:
    # the one read of a collective is the run lock's check before the first.
    for rank in (0, 1):
        assert json.loads((tmp_path / f"reads.{rank}.json").read_text()) == [1], rank
    return tmp_path / "single", tmp_path / "parallel"


# `simslm` under torchrun, each process writing down what `Distributed.all_sum` (a collective read back on the host,
# which on a GPU waits for everything launched before it) was called with: the number of values, call by call.
READS_COUNTED = """
import atexit, json, os, sys
from pathlib import Path

import simslm.train.distributed
from simslm.cli import run

reads, all_sum = [], simslm.train.distributed.Distributed.all_sum
simslm.train.distributed.Distributed.all_sum = lambda self, values: reads.append(len(values)) or all_sum(self, values)
# Written at exit, as the command's process ends (`run`): its exit handlers still run.
atexit.register(lambda: Path(__file__).with_name(f"reads.{os.environ['RANK']}.json").write_text(json.dumps(reads)))
run(sys.argv[1:])
"""


def _told(completed: subprocess.CompletedProcess, spied: Path) -> str:
    """A failed torchrun's last output and what its processes did, as the spy noted it."""
    return f"{completed.stderr[-6000:]}\n--- {spied.name}:\n{spied.read_text() if spied.exists() else '(none)'}"


_SPY = """
import atexit, os, sys
import safetensors.torch
import torch
import simslm.model
from simslm.cli import run

rank, log = os.environ["RANK"], sys.argv[1]


def noted(name, function):
    def called(*args, **kwargs):
        with open(log, "a") as handle:
            handle.write(f"{rank} {name}\\n")
        return function(*args, **kwargs)
    return called


simslm.model.load_base_model = noted("base model", simslm.model.load_base_model)
load_file = safetensors.torch.load_file
safetensors.torch.load_file = lambda path, *args, **kwargs: (
    noted("checkpoint weights", load_file) if str(path).endswith("model.safetensors") else load_file)(
    path, *args, **kwargs)
torch_load = torch.load
torch.load = lambda path, *args, **kwargs: (noted("optimizer state", torch_load) if str(path).endswith("optimizer.pt")
                                           else torch_load)(path, *args, **kwargs)
# Registered first, run last: left to the interpreter's end, gloo's group could abort the process (SIGABRT).
atexit.register(lambda: torch.distributed.is_initialized() and noted("process group not destroyed", print)())
run(sys.argv[2:])
"""

