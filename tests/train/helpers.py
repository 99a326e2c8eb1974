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
    batch 2 (`_runs_of_one_and_two_processes`, of one run): their two folders."""
    return _runs_of_one_and_two_processes(data, tmp_path, {"run": (shared or {}, parallel_changes)})[0]["run"]


def _runs_of_one_and_two_processes(data, tmp_path, runs: dict[str, tuple[dict, dict]],
                                   spy: str = "") -> tuple[dict[str, tuple[Path, Path]], str]:
    """Each named 6-step run, `(shared changes, changes of the two processes)`, as one process with batch 4 and as
    2 torchrun processes with batch 2: its two folders. The one process is this one (a process of its own spent
    6 s of the suite importing torch and transformers again, for losses compared to a tolerance), once for runs
    that share their changes. The two processes train every run one after another, in the order given, in one
    torchrun (`_torchrun_in_turn`, with `spy`), whose error output comes back with the folders."""
    singles, configs, folders = {}, {}, {}
    for name, (shared, parallel_changes) in runs.items():
        key = json.dumps(shared, sort_keys=True)
        shared = dict(shared)
        run_data = shared.pop("data", data)  # a run may have data of its own
        if key not in singles:
            singles[key] = _config(run_data, tmp_path / f"single-{len(singles)}", budget_tokens=6 * 4 * 64,
                                   batch_size=4, checkpoint_every=3, **shared)
            train(singles[key])
        configs[name] = _config(run_data, tmp_path / name, budget_tokens=6 * 4 * 64, batch_size=2, checkpoint_every=3,
                                **shared, **parallel_changes)
        folders[name] = (Path(singles[key].run_dir), tmp_path / name)
    completed = _torchrun_in_turn(tmp_path, configs, spy)
    # transformers' notice of the new embedding rows (TWIST), from the first process only: once a run at most
    assert completed.stderr.count("new embeddings will be initialized") <= len(runs), completed.stderr[-3000:]
    # The steps sum their counts and losses over the processes on the device and read nothing back inside a step:
    # the one read of a collective is the run lock's check before the first.
    for name in runs:
        for rank in (0, 1):
            assert json.loads((tmp_path / f"{name}.reads.{rank}.json").read_text()) == [1], (name, rank)
    return folders, completed.stderr


def _torchrun_in_turn(tmp_path, configs: dict[str, TrainConfig], spy: str = "") -> subprocess.CompletedProcess:
    """One torchrun of 2 processes that trains each of `configs` in turn (`simslm train --config` of each, in one
    process group, as `simslm textlm pretrain` trains several runs in one process), with `spy` run first in each
    process (it may read `RUN`, the path of the config being trained). A launch costs ~15 s of both cores here,
    three interpreters importing torch and transformers; a run of these tests ~2 s. Each process writes the
    reads of `Distributed.all_sum` of each run beside its config: `NAME.reads.RANK.json`."""
    for name, config in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config.__dict__))
    (tmp_path / "in_turn.py").write_text(IN_TURN.replace("# SPY\n", spy))
    completed = subprocess.run(_torchrun(2, str(tmp_path / "in_turn.py"),
                                         *(str(tmp_path / f"{name}.json") for name in configs)),
                               env=_rank_env(), cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


# `simslm train --config` of each config named, in turn, each process writing down what `Distributed.all_sum` (a
# collective read back on the host, which on a GPU waits for everything launched before it) was called with in
# each run: the number of values, call by call. The last run ends as the command's process does (`run`).
IN_TURN = """
import atexit, json, os, sys
from pathlib import Path

import simslm.train.distributed
from simslm.cli import main, run

RUN = None
# SPY
reads, all_sum = [], simslm.train.distributed.Distributed.all_sum
simslm.train.distributed.Distributed.all_sum = lambda self, values: reads.append(len(values)) or all_sum(self, values)


def note_reads():
    Path(RUN).with_suffix(f".reads.{os.environ['RANK']}.json").write_text(json.dumps(reads))
    reads.clear()


for RUN in sys.argv[1:-1]:
    code = main(["train", "--config", RUN])
    if code:
        sys.exit(code)
    note_reads()
RUN = sys.argv[-1]
atexit.register(note_reads)  # its exit handlers still run as the process ends
run(["train", "--config", RUN])
"""


def _told(completed: subprocess.CompletedProcess, spied: Path) -> str:
    """A failed torchrun's last output and what its processes did, as the spy noted it."""
    return f"{completed.stderr[-6000:]}\n--- {spied.name}:\n{spied.read_text() if spied.exists() else '(none)'}"


# What a process did that only the main one should (load the base model, read a checkpoint's weights or optimizer
# state), noted as "RANK what" in the file `log()` names.
_NOTES = """
import atexit, os
import safetensors.torch
import torch
import simslm.model

rank = os.environ["RANK"]


def noted(name, function):
    def called(*args, **kwargs):
        with open(log(), "a") as handle:
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
"""

# `simslm ARGS...` noted (`_NOTES`) in LOG: `spy.py LOG ARGS...`.
_SPY = """
import sys
from simslm.cli import run

log = lambda: sys.argv[1]
""" + _NOTES + """
run(sys.argv[2:])
"""

# `_NOTES` as the spy of `_torchrun_in_turn`: each run's notes in RUN.log, beside its config.
_SPY_IN_TURN = """
log = lambda: Path(RUN).with_suffix(".log")
""" + _NOTES

