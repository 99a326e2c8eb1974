import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from simslm.sequences.loader import PackedLoader
from simslm.sequences.vocabulary import Vocabulary
from simslm.train import (
    VALIDATION_SUMS,
    Plan,
    RunResult,
    TrainConfig,
    checkpoint_problem,
    learning_rate,
    loss_curve,
    make_plan,
    train,
)

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def data(speech_sequences):
    return speech_sequences


def _config(data, run_dir, **changes):
    values = dict(run_dir=str(run_dir), data=data, base_model="stories260K", budget_tokens=24 * 4 * 64,
                  batch_size=4, checkpoint_every=4)
    values.update(changes)
    return TrainConfig(**values)


def test_plan_fixes_steps_from_the_budget_within_one_step(data, tmp_path):
    from simslm.train import build_model

    model = build_model(_config(data, tmp_path), 600, 64)
    flops_per_token = 6 * sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    for budget in (1e9, 3.3e9, 7.7e10):
        plan = make_plan(_config(data, tmp_path, budget_tokens=None, budget_flops=budget), model, 64, 1, 600)
        assert abs(plan.total_steps * plan.tokens_per_step - budget / flops_per_token) <= plan.tokens_per_step / 2
        assert plan.total_flops == pytest.approx(plan.total_tokens * flops_per_token)
    with pytest.raises(ValueError, match="exactly one"):
        make_plan(_config(data, tmp_path, budget_flops=1e9), model, 64, 1, 600)


@pytest.mark.parametrize("total_steps", [1, 7, 264, 873, 1250])
def test_the_schedule_is_the_hf_trainers_cosine_with_min_lr_as_slamkit_trains(data, tmp_path, total_steps):
    """slamkit's SIMS recipe (config/training_args/scaling_interleaving.yaml): lr 5e-4, warmup_ratio 0.01,
    `cosine_with_min_lr` to 5e-5, through the HF Trainer. Checked against transformers' own scheduler and warm-up
    count, step by step (the demo's runs take 264-2000 steps)."""
    import torch
    from transformers import TrainingArguments
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    from simslm.train import build_model

    config = _config(data, tmp_path, budget_tokens=total_steps * 4 * 64)
    warmup = TrainingArguments(output_dir=str(tmp_path), warmup_steps=config.warmup_fraction,
                               report_to=[]).get_warmup_steps(total_steps)
    plan = make_plan(config, build_model(config, 600, 64), 64, 1, 600)
    assert (plan.total_steps, plan.warmup_steps) == (total_steps, warmup)
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=config.lr)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total_steps, min_lr=config.lr_min)
    theirs = []
    for _ in range(total_steps):
        theirs.append(optimizer.param_groups[0]["lr"])  # the lr the Trainer's step runs at
        optimizer.step()
        schedule.step()
    ours = [learning_rate(step, plan, config) for step in range(total_steps)]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-18)
    if total_steps > 1:
        assert ours[0] == 0.0 and max(ours) == pytest.approx(config.lr, rel=0.02) and ours[-1] > config.lr_min


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _run_command(config_path):
    return [sys.executable, "-m", "simslm", "train", "--config", str(config_path)]


@pytest.mark.slow
def test_a_training_curve_is_read_from_metrics_jsonl(tmp_path):
    records = [{"step": 1, "tokens": 512, "loss_speech": 6.5}, {"step": 2, "tokens": 1024, "loss_speech": None},
               {"step": 3, "tokens": 1536, "loss_speech": 6.1}, {"step": 3, "tokens": 1536, "loss_speech": 6.0},
               {"step": 4, "tokens": 2048, "loss_speech": float("nan")}, {"step": 5, "tokens": 2560, "loss_speech": 5.8}]
    lines = [json.dumps(record) for record in records]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:4] + ['{"step": 9, "tok'] + lines[4:]) + "\n")
    # No speech loss at step 2 (a batch of text), none that is a number at 4, a torn line, step 3 logged again
    # by a resumed run: its last record counts.
    assert loss_curve(tmp_path).tolist() == [[512, 1536, 2560], [6.5, 6.0, 5.8]]
    assert loss_curve(tmp_path, "loss_text") is None and loss_curve(tmp_path / "none") is None


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_with_identical_losses(data, tmp_path):
    env = _rank_env()
    reference = _config(data, tmp_path / "reference")
    (tmp_path / "reference.json").write_text(json.dumps(reference.__dict__))
    subprocess.run(_run_command(tmp_path / "reference.json"), check=True, env=env, cwd=REPO,
                   capture_output=True)
    killed = _config(data, tmp_path / "killed")
    (tmp_path / "killed.json").write_text(json.dumps(killed.__dict__))
    process = subprocess.Popen(_run_command(tmp_path / "killed.json"), env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-00000008"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (tmp_path / "killed" / "result.json").exists()
    subprocess.run(_run_command(tmp_path / "killed.json"), check=True, env=env, cwd=REPO, capture_output=True)
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "reference")  # bit for bit
    assert len(_losses(tmp_path / "reference")) == 24
    # The resumed run, built from its checkpoint's config without the base model, saves the same model folder.
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (tmp_path / "killed" / "model" / name).read_bytes() == \
            (tmp_path / "reference" / "model" / name).read_bytes(), name


def _as_written_before_model_configs(checkpoint):
    """A checkpoint as simslm wrote them before they kept their model's config, generation settings and buffers."""
    checksums = json.loads((checkpoint / "checksums.json").read_text())
    for name in ("model_config.json", "generation_config.json", "buffers.safetensors"):
        (checkpoint / name).unlink()
        del checksums[name]
    (checkpoint / "checksums.json").write_text(json.dumps(checksums))


def test_a_resumed_run_loads_no_base_model(data, tmp_path, monkeypatch):
    """Resumed, a run builds the model its checkpoint holds from the config stored beside it; the base model (28 GB
    for 7B parameters in fp32) is not loaded only to be replaced. A checkpoint from before that stored it still
    resumes, from the base model."""
    import simslm.model

    config = _config(data, tmp_path / "run", budget_tokens=8 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=5)
    train(config)
    losses = _losses(tmp_path / "run")

    def back_to_step_4():
        shutil.rmtree(tmp_path / "run" / "model")
        shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000008")
        (tmp_path / "run" / "result.json").unlink()

    back_to_step_4()
    loaded = []
    base = simslm.model.load_base_model
    monkeypatch.setattr(simslm.model, "load_base_model", lambda source: loaded.append(source) or base(source))
    train(config)
    assert loaded == [] and _losses(tmp_path / "run") == losses
    back_to_step_4()
    _as_written_before_model_configs(tmp_path / "run" / "checkpoints" / "step-00000004")
    train(config)
    assert loaded == ["stories260K"] and _losses(tmp_path / "run") == losses


def test_a_process_asked_to_stop_through_another_one_only_stops_too(tmp_path):
    """With no signal of its own to hand over to (another process was asked), a process still stops, saying so,
    rather than go on as if the run were finished (a sweep would then evaluate a half-trained run)."""
    import simslm.train as train_module
    from simslm.jobs import Stopped

    with pytest.raises(Stopped, match="stopped with the other processes after step 7"):
        train_module._StopRequest().finish(tmp_path, 7)


@pytest.mark.slow
def test_sigterm_stops_a_run_after_the_step_in_hand_with_a_checkpoint(data, tmp_path):
    """The time limit of one's own SLURM job, `kill`, a sweep stopping its runs: the run saves the step in hand
    and says so in one line, and a re-run goes on as if it had never stopped. The signal arriving twice at once
    (a scheduler signals every process of a job, and a sweep forwards it to its runs) is one request."""
    env = _rank_env()
    changes = dict(budget_tokens=100 * 4 * 64, checkpoint_every=1000)  # no periodic checkpoint before the end
    for name in ("reference", "stopped"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_config(data, tmp_path / name, **changes).__dict__))
    subprocess.run(_run_command(tmp_path / "reference.json"), check=True, env=env, cwd=REPO, capture_output=True)
    process = subprocess.Popen(_run_command(tmp_path / "stopped.json"), env=env, cwd=REPO, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)  # the same request again (a scheduler's and a sweep's): still one stop
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    (checkpoint,) = (tmp_path / "stopped" / "checkpoints").iterdir()
    step = int(checkpoint.name.split("-")[1])
    assert 3 <= step < 100 and len(_losses(tmp_path / "stopped")) == step
    assert stderr.splitlines()[-1] == (f"simslm train: {tmp_path / 'stopped'}: stopped by SIGTERM after step {step}, "
                                       f"which is saved as a checkpoint; run the same command again to resume")
    assert "Traceback" not in stderr and not (tmp_path / "stopped" / "result.json").exists()
    subprocess.run(_run_command(tmp_path / "stopped.json"), check=True, env=env, cwd=REPO, capture_output=True)
    assert _losses(tmp_path / "stopped") == _losses(tmp_path / "reference")  # bit for bit


@pytest.mark.slow
def test_a_run_of_two_processes_stopped_by_sigterm_destroys_its_process_group(data, tmp_path):
    """A stop on request ends both processes after the same step, none inside a collective: each destroys its
    process group at exit, as after a run's end. It was left to the interpreter's end after any exception, the stop's
    included, where gloo's threads can abort the process (the atexit spy says which process left it)."""
    env = _rank_env()
    config = _config(data, tmp_path / "run", budget_tokens=200 * 4 * 64, checkpoint_every=1000)
    (tmp_path / "run.json").write_text(json.dumps(config.__dict__))
    (tmp_path / "spy.py").write_text(_SPY)
    process = subprocess.Popen(_torchrun(2, str(tmp_path / "spy.py"), str(tmp_path / "spy.log"), "train", "--config",
                                         str(tmp_path / "run.json")), env=env, cwd=REPO, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)  # as a scheduler signals every process of a job
    _, stderr = process.communicate(timeout=120)
    assert "stopped by SIGTERM after step" in stderr, stderr[-3000:]
    assert not (tmp_path / "run" / "result.json").exists()
    assert "process group not destroyed" not in (tmp_path / "spy.log").read_text()


def test_a_runs_weights_are_as_readable_as_its_other_files(data, tmp_path):
    """safetensors 0.8 writes every file with mode 0600 whatever the umask (its issue #782): a colleague on a shared
    cluster could read a run's config but not load its model. The weights now take the mode the umask gives."""
    from simslm.train import train

    before = os.umask(0o022)
    try:
        train(_config(data, tmp_path / "run", base_model="family:1", init="random"))
    finally:
        os.umask(before)
    run = tmp_path / "run"
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    written = [run / "model" / "model.safetensors", checkpoint / "model.safetensors", checkpoint / "buffers.safetensors"]
    assert {oct(path.stat().st_mode & 0o777) for path in written} == {oct(0o644)}
    assert (run / "model" / "config.json").stat().st_mode & 0o777 == 0o644


def test_a_run_stopped_while_saving_its_model_leaves_no_part_of_one(data, tmp_path, monkeypatch):
    """model/ is written into a staging folder and renamed whole: a run stopped between its weights and its
    vocabulary (here, a Ctrl-C there) has no model/, and the same command writes it whole; its units record names
    the model folder, not the staging one."""
    import simslm.model as model_lib
    from simslm.train import train

    config = _config(data, tmp_path / "run", base_model="family:1", init="random")

    def interrupted(self, folder):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Vocabulary, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(config)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "result.json").exists()
    assert not [path for path in (tmp_path / "run").iterdir() if path.name.startswith(".model")]
    train(config)
    units = json.loads((tmp_path / "run" / "model" / model_lib.MODEL_UNITS_FILE).read_text())
    assert units["codebook"]["absolute"] == str((tmp_path / "run" / "model" / model_lib.MODEL_CODEBOOK).resolve())
    assert model_lib.model_unit_source(tmp_path / "run" / "model").codebook.is_file()


@pytest.mark.slow
def test_a_checkpoint_the_disk_cannot_hold_is_said_in_one_line_and_the_run_resumes(data, tmp_path):
    """torch.save reports a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598". A
    file size limit (RLIMIT_FSIZE, here below the optimiser's state and above everything else the run writes) fails
    the same write the same way, without root's tmpfs: the run names the checkpoint and what is wrong, leaves no
    half-written checkpoint, and goes on from its last whole one once the disk takes it."""
    config = _config(data, tmp_path / "run", base_model="family:1", init="random", checkpoint_every=4)
    (tmp_path / "run.json").write_text(json.dumps(config.__dict__))
    limit = 220_000  # family:1 here: its weights 189 kB, its optimiser state 245 kB (torch.save)
    command = _run_command(tmp_path / "run.json")
    limited = [sys.executable, "-c", f"import os, resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, "
                                     f"{limit})); os.execv({command[0]!r}, {command!r})"]
    refused = subprocess.run(limited, cwd=REPO, capture_output=True, text=True,
                             env=_rank_env())
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (f"simslm train: error: {tmp_path / 'run'}/checkpoints/step-00000004: "
                                               f"file too large")
    assert "Traceback" not in refused.stderr
    assert sorted(path.name for path in (tmp_path / "run").rglob("*") if path.name.startswith(".")) == [".lock"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, env=_rank_env())
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 24


def test_a_run_moved_with_its_data_resumes_under_the_new_names(data, tmp_path, train_stopped_at):
    """A run folder and the data beside it, moved together mid-run (another disk, a renamed project), resume
    under their new names; data at another place is still another run's."""
    config = dict(budget_tokens=12 * 4 * 64, checkpoint_every=4, validation_data=None)
    reference = train(_config(data, tmp_path / "reference", **config))
    shutil.copytree(data, tmp_path / "project" / "seq")
    train_stopped_at(_config(str(tmp_path / "project" / "seq"), tmp_path / "project" / "run", **config), 6)
    (tmp_path / "project").rename(tmp_path / "moved")
    shutil.copytree(tmp_path / "moved" / "seq", tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"another config \(other data\)"):
        train(_config(str(tmp_path / "elsewhere"), tmp_path / "moved" / "run", **config))
    resumed = train(_config(str(tmp_path / "moved" / "seq"), tmp_path / "moved" / "run", **config))
    assert _losses(tmp_path / "moved" / "run") == _losses(tmp_path / "reference")  # bit for bit, from step 4
    assert resumed.final_train == reference.final_train
    stored = json.loads((tmp_path / "moved" / "run" / "config.json").read_text())
    assert stored["data"] == str(tmp_path / "moved" / "seq")  # the new name from now on


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and path.name != ".lock"}


def test_a_run_another_process_trains_is_refused_at_once_and_left_as_it_is(data, tmp_path, train_stopped_at,
                                                                          lock_held_elsewhere):
    """A job submitted again while the first still trained went on beside it: it resumed from the first's last
    checkpoint, cut metrics.jsonl back to it, and both then appended to it (steps ..., 120, 135, 136, 121, 137, ...);
    the first's result.json took a final loss from the mixed lines. The second is now refused before it loads."""
    from simslm import jobs

    config = _config(data, tmp_path / "run", budget_tokens=12 * 4 * 64, validation_data=None)
    train_stopped_at(config, 6)
    before = _files(tmp_path / "run")
    pid, release = lock_held_elsewhere(tmp_path / "run" / ".lock")  # as `simslm train` holds it
    with pytest.raises(jobs.Busy, match=rf"run: another process is training this run; wait for it to end, or stop "
                                        rf"it \(held by process {pid} on "):
        train(config)
    assert _files(tmp_path / "run") == before
    release()
    assert train(config).steps == 12 and len(_losses(tmp_path / "run")) == 12


def test_a_run_refused_before_it_trains_leaves_no_folder(data, tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        train(_config(str(tmp_path / "nowhere"), tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_its_data_is_refused_before_the_run_folder_is_written(data, tmp_path):
    # A folder left behind with this config would refuse the corrected rerun ("holds a run with another config").
    with pytest.raises(ValueError, match="fewer chunks than one global batch"):
        train(_config(data, tmp_path / "run", batch_size=100_000))
    assert not (tmp_path / "run").exists()
    train(_config(data, tmp_path / "run", budget_tokens=2 * 4 * 64))
    assert RunResult.exists(tmp_path / "run")


def test_a_budget_whole_steps_cannot_meet_is_said(data, tmp_path, capsys):
    result = train(_config(data, tmp_path / "run", budget_tokens=None, budget_flops=1e6, validation_data=None))
    assert result.steps == 1 and result.flops > 10 * 1e6
    assert "warning: the budget is 1e+06 FLOPs, but steps are whole batches of 256 tokens: 1 step(s) make" in \
        capsys.readouterr().err


def _rebuilt(data: str, **changes) -> None:
    """`simslm sequences build` again into the folder `data`, with its own settings changed."""
    from simslm.sequences.build import BuildConfig, build_sequences

    stored = json.loads((Path(data) / "index.json").read_text())["config"]
    build_sequences(BuildConfig.from_dict({**stored, "out": data, "overwrite": True, **changes}))


def test_a_run_is_not_resumed_on_data_built_again_since_it_started(data, tmp_path, train_stopped_at):
    # Same folder name, other sequences: the checkpoint's position in the data would point into data the run
    # never saw, and nothing in config.json (which names folders, not contents) tells the two apart.
    shutil.copytree(data, tmp_path / "seq")
    config = _config(str(tmp_path / "seq"), tmp_path / "run", budget_tokens=12 * 4 * 64, validation_data=None)
    train_stopped_at(config, 6)
    _rebuilt(str(tmp_path / "seq"), seed=1)
    with pytest.raises(ValueError, match="seq was built again since .*run started"):
        train(config)
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["data_sha256"] != \
        hashlib.sha256((tmp_path / "seq" / "index.json").read_bytes()).hexdigest()


def test_a_corrupt_checkpoint_is_detected_and_the_previous_one_used(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(_config(data, run, budget_tokens=8 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=3))
    latest = run / "checkpoints" / "step-00000008"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "checksum mismatch" in checkpoint_problem(latest)
    (run / "result.json").unlink()
    from simslm.train import latest_checkpoint

    assert latest_checkpoint(run).name == "step-00000004"
    assert "skipping checkpoint" in capsys.readouterr().err


def test_the_run_directory_and_a_standalone_model(data, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    monkeypatch.setenv("SIMSLM_PEAK_FLOPS", "1e9")  # the MFU denominator, as a sweep measures it for its runs
    result = train(_config(data, run, budget_tokens=6 * 4 * 64, validation_data=data))
    assert result.peak_flops_measured == 1e9
    assert {p.name for p in run.iterdir()} >= {"config.json", "plan.json", "metrics.jsonl", "checkpoints",
                                                "model", "result.json"}
    assert RunResult.load(run) == result
    assert result.validation.loss_speech is not None and result.steps == 6
    # Each validation batch's sums are kept, and they add up to the losses reported.
    sums = np.asarray(result.validation_batches)
    assert sums.shape == (min(16, PackedLoader(data, 4).batches_per_epoch()), len(VALIDATION_SUMS))
    assert sums[:, 2].sum() / sums[:, 3].sum() == pytest.approx(result.validation.loss_speech)
    assert sums[:, 0].sum() / sums[:, 1].sum() == pytest.approx(result.validation.loss)
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "loss_speech", "loss_text", "lr", "tokens", "flops", "tokens_per_sec", "mfu"} <= set(line)
    assert line["mfu"] == pytest.approx(line["tokens_per_sec"] * result.flops / result.tokens / 1e9)
    monkeypatch.setenv("SIMSLM_PEAK_FLOPS", "fast")
    with pytest.raises(ValueError, match="SIMSLM_PEAK_FLOPS=fast: not a positive number of FLOP/s"):
        train(_config(data, tmp_path / "other", budget_tokens=6 * 4 * 64))
    assert not (tmp_path / "other").exists()
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<speech>") == Vocabulary.load(f"{data}/tokenizer").speech_id


def test_a_checkpoint_becomes_a_model_folder_that_eval_reads_as_the_run_at_its_step(data, tmp_path, capsys,
                                                                                    monkeypatch):
    import torch
    from safetensors.torch import load_file

    from simslm.cli import main
    from simslm.eval.evaluate import EvalConfig, evaluate_run

    run = tmp_path / "run"
    result = train(_config(data, run, budget_tokens=8 * 4 * 64, validation_data=data, num_validation_batches=2,
                           num_checkpoints_kept=2))
    last, middle = run / "checkpoints" / "step-00000008", run / "checkpoints" / "step-00000004"
    assert main(["model", "from-checkpoint", str(last), str(tmp_path / "at-8")]) == 0
    assert "at-8" in capsys.readouterr().out
    # The last step's checkpoint holds the run's model: the same weights, config, tokenizer and units record.
    final, exported = load_file(str(run / "model" / "model.safetensors")), load_file(str(tmp_path / "at-8" /
                                                                                       "model.safetensors"))
    assert final.keys() == exported.keys() and all(torch.equal(final[name], exported[name]) for name in final)
    for name in ("config.json", "simslm_vocab.json", "tokenizer.json", "simslm_model.json"):
        assert json.loads((run / "model" / name).read_text()) == json.loads((tmp_path / "at-8" / name).read_text())
    assert json.loads((tmp_path / "at-8" / "simslm_checkpoint.json").read_text())["step"] == 8
    # eval finds the run's held-out data through the record, and scores the run's own validation loss.
    scored = evaluate_run(EvalConfig(run=str(tmp_path / "at-8"), bench=("validation",)))
    assert scored["validation"]["loss"] == pytest.approx(result.validation.loss, rel=1e-6)
    # A checkpoint mid-run: the model of step 4, not the run's, and so recorded.
    assert main(["model", "from-checkpoint", str(middle), str(tmp_path / "at-4")]) == 0
    earlier = load_file(str(tmp_path / "at-4" / "model.safetensors"))
    assert not torch.equal(earlier["model.embed_tokens.weight"], final["model.embed_tokens.weight"])
    recorded = json.loads((tmp_path / "at-4" / "simslm_checkpoint.json").read_text())
    assert recorded["step"] == 4 and recorded["tokens_seen"] == 4 * 4 * 64
    assert evaluate_run(EvalConfig(run=str(tmp_path / "at-4"), bench=("validation",)))["validation"]["loss"] != \
        pytest.approx(result.validation.loss, rel=1e-6)
    from safetensors.torch import save_file

    def rewritten(step: int, change) -> Path:
        """The last checkpoint again as step `step`, its weights changed, its checksum made to fit."""
        folder = run / "checkpoints" / f"step-{step:08d}"
        shutil.copytree(last, folder)
        save_file(change(load_file(str(folder / "model.safetensors"))), str(folder / "model.safetensors"))
        listing = json.loads((folder / "checksums.json").read_text())
        listing["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        (folder / "checksums.json").write_text(json.dumps(listing))
        return folder

    # Weights kept in the dtype they were stored in (a run of bf16 weights), not cast to fp32.
    halved = rewritten(9, lambda weights: {name: tensor.to(torch.bfloat16) for name, tensor in weights.items()})
    assert main(["model", "from-checkpoint", str(halved), str(tmp_path / "bf16")]) == 0
    assert {tensor.dtype for tensor in load_file(str(tmp_path / "bf16" / "model.safetensors")).values()} == \
        {torch.bfloat16}
    # Weights of another model than its config's are refused, a name too many as a name missing.
    extra = rewritten(10, lambda weights: {**weights,
                                           "model.layers.9.mlp.up_proj.weight": weights["model.norm.weight"].clone()})
    assert main(["model", "from-checkpoint", str(extra), str(tmp_path / "extra")]) == 2
    assert "its weights do not fit its model_config.json (not its: model.layers.9.mlp.up_proj.weight)" in \
        capsys.readouterr().err
    short = rewritten(11, lambda weights: {name: tensor for name, tensor in weights.items()
                                           if name != "model.norm.weight"})
    assert main(["model", "from-checkpoint", str(short), str(tmp_path / "short")]) == 2
    assert "its weights do not fit its model_config.json (no model.norm.weight)" in capsys.readouterr().err
    # The run replaces its checkpoints as it trains: one gone while it was read is said, and nothing is written.
    import simslm.train as train_module

    checked = train_module.checkpoint_problem
    monkeypatch.setattr(train_module, "checkpoint_problem",
                        lambda folder, **options: (checked(folder, **options), shutil.rmtree(folder))[0])
    assert main(["model", "from-checkpoint", str(middle), str(tmp_path / "gone")]) == 2
    assert "model_config.json went away while it was read (the run replaces its checkpoints as it trains)" in \
        capsys.readouterr().err
    assert not (tmp_path / "gone").exists()


def test_validations_during_a_run_change_no_step_and_resume_with_it(data, tmp_path):
    plain = train(_config(data, tmp_path / "plain", budget_tokens=12 * 4 * 64, validation_data=data))
    config = _config(data, tmp_path / "validated", budget_tokens=12 * 4 * 64, validation_data=data,
                     validation_every=5, num_checkpoints_kept=5)
    validated = train(config)
    assert _losses(tmp_path / "validated") == _losses(tmp_path / "plain")  # bit for bit: no step changes
    records = [json.loads(line) for line in (tmp_path / "validated" / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 12] and [r["tokens"] for r in records] == [1280, 2560, 3072]
    assert records[-1]["loss_speech"] == validated.validation.loss_speech == plain.validation.loss_speech
    assert records[0]["loss_speech"] > records[1]["loss_speech"]  # it learns
    curve = loss_curve(tmp_path / "validated", validation=True)
    assert curve.tolist() == [[1280, 2560, 3072], [r["loss_speech"] for r in records]]
    # Killed after step 10's validation, resumed from the checkpoint of step 8: the validations after it are done
    # again, once each, to the same numbers.
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "validated", killed)
    for name in ("result.json", "model"):
        shutil.rmtree(killed / name) if (killed / name).is_dir() else (killed / name).unlink()
    for checkpoint in (killed / "checkpoints").iterdir():
        if checkpoint.name > "step-00000008":
            shutil.rmtree(checkpoint)
    train(dataclasses.replace(config, run_dir=str(killed)))
    assert (killed / "validation.jsonl").read_text() == (tmp_path / "validated" / "validation.jsonl").read_text()
    assert _losses(killed) == _losses(tmp_path / "validated")


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


# `simslm` under torchrun, each process writing down what `_Distributed.all_sum` (a collective read back on the host,
# which on a GPU waits for everything launched before it) was called with: the number of values, call by call.
READS_COUNTED = """
import atexit, json, os, sys
from pathlib import Path

import simslm.train
from simslm.cli import run

reads, all_sum = [], simslm.train._Distributed.all_sum
simslm.train._Distributed.all_sum = lambda self, values: reads.append(len(values)) or all_sum(self, values)
# Written at exit, as the command's process ends (`run`): its exit handlers still run.
atexit.register(lambda: Path(__file__).with_name(f"reads.{os.environ['RANK']}.json").write_text(json.dumps(reads)))
run(sys.argv[1:])
"""


def _flash_like(seen: list[int]):
    """An attention function that keeps documents apart as transformers' flash-attn path does, for a machine
    without flash-attn: on transformers' own test (`_is_packed_sequence`), attention within the documents its
    cumulative lengths mark (`prepare_fa_kwargs_from_position_ids`), else causal over each whole row; SDPA computes
    each part. `seen` receives each call's batch size."""
    import torch
    import torch.nn.functional as F
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    def causal(query, key, value, scaling):
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)

    def attention(module, query, key, value, attention_mask, position_ids=None, scaling=None, **kwargs):
        seen.append(query.shape[0])
        if not _is_packed_sequence(position_ids, query.shape[0]):
            return causal(query, key, value, scaling).transpose(1, 2), None
        (starts, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
        bounds = starts.tolist()
        parts = [causal(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scaling) for a, b in zip(bounds, bounds[1:])]
        return torch.cat(parts, dim=2).transpose(1, 2), None

    return attention


def _register_varlen_like() -> list[int]:
    """`_flash_like` registered with transformers as `varlen_like`, with flash-attn's masks (none without padding);
    the batch sizes it is called with."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    seen: list[int] = []
    AttentionInterface.register("varlen_like", _flash_like(seen))  # no "flash" in it: transformers would load one
    AttentionMaskInterface.register("varlen_like", ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    return seen


def test_rows_end_to_end_keep_their_documents_apart_as_flash_attention_dispatches():
    """transformers keeps packed documents apart under flash-attn only in a batch of one row (`_is_packed_sequence`);
    given rows, each document sees the ones before it in its row. Rows of short documents given end to end to a
    stand-in with flash-attn's dispatch score every target as SDPA scores the rows."""
    import contextlib

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simslm.sequences.loader import Batch, pack_rows
    from simslm.train import _loss_and_totals, _to_device

    _register_varlen_like()
    rng = np.random.default_rng(0)
    batch = Batch(*pack_rows([rng.integers(1, 100, size=rng.integers(5, 40)) for _ in range(24)], 64, pad_id=0))
    assert (batch.positions == 0).sum(axis=1).min() >= 2  # several documents in every row
    torch.manual_seed(0)  # weights drawn wide, so attention is sharp and what a document sees shows in its losses
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)).eval()
    kinds = (0, 50, 100, torch.tensor([0]))  # pad 0, units 50-99, the rest text

    def totals(kernel: str, one_row: bool):
        model.set_attn_implementation(kernel)
        with torch.no_grad():
            return _loss_and_totals(model, *_to_device(batch, "cpu", one_row), kinds, contextlib.nullcontext())[1]

    rows = totals("sdpa", False)
    assert torch.allclose(totals("varlen_like", True), rows, rtol=1e-6, atol=0)
    assert torch.allclose(totals("sdpa", True), rows, rtol=1e-5, atol=0)  # end to end changes nothing under SDPA
    given_rows = totals("varlen_like", False)
    assert torch.equal(given_rows[3:], rows[3:]) and abs(given_rows[0] / rows[0] - 1) > 1e-3  # 1.5e-2 here


def test_an_architecture_whose_documents_see_each_other_when_packed_is_refused():
    """OPT places its tokens by the attention mask, not by the positions it is given, so packed documents see one
    another under every kernel; Llama, Qwen2, Mistral and GPT-2 keep them apart under SDPA and eager attention."""
    import transformers

    from simslm.config import ConfigError
    from simslm.train import check_documents_apart, documents_moved

    small = dict(num_hidden_layers=2, intermediate_size=64)
    for config in (transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, **small),
                   transformers.Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **small),
                   transformers.MistralConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **small),
                   transformers.GPT2Config(n_embd=64, n_head=4, n_layer=2)):
        for kernel in ("sdpa", "eager"):
            assert documents_moved(config, kernel, "cpu", False, False) < 1e-5, (config.model_type, kernel)
    opt = transformers.OPTConfig(hidden_size=64, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=64, **small)
    assert documents_moved(opt, "eager", "cpu", False, False) > 0.3
    with pytest.raises(ConfigError, match="--attention sdpa lets the documents packed in a row attend to one another "
                                          "in opt on cpu"):
        check_documents_apart(opt, "sdpa", "cpu", False, False)


def test_a_check_that_cannot_run_warns_and_lets_the_run_go_on(monkeypatch, capsys):
    import transformers

    import simslm.train as train_module

    def cannot(*arguments, **options):
        raise RuntimeError("no layer to cut")

    monkeypatch.setattr(train_module, "documents_moved", cannot)
    train_module.check_documents_apart(transformers.LlamaConfig(), "sdpa", "cpu", False, False)
    assert capsys.readouterr().err == ("simslm train: warning: could not check that sdpa keeps packed documents apart "
                                       "in llama (RuntimeError: no layer to cut)\n")


def test_flash_attention_is_given_every_batch_as_one_row_and_trains_as_sdpa(data, tmp_path, monkeypatch):
    """`train` gives a kernel of `ONE_ROW_KERNELS` each batch of training and validation as one row. Given as rows,
    the stand-in lets the documents of a row see one another, and the run is refused before its folder exists."""
    import simslm.train as train_module
    from simslm.config import ConfigError

    seen = _register_varlen_like()
    config = dict(budget_tokens=6 * 4 * 64, validation_data=data, num_validation_batches=2, checkpoint_every=1000)
    reference = train(_config(data, tmp_path / "sdpa", attention="sdpa", **config))
    monkeypatch.setattr(train_module, "attention_kernel", lambda *arguments, **options: "varlen_like")
    monkeypatch.setattr(train_module, "ONE_ROW_KERNELS", ())
    with pytest.raises(ConfigError, match=r"--attention varlen_like lets the documents packed in a row attend to one "
                                          r"another in llama on cpu with transformers [0-9.]+ \(a document's hidden "
                                          r"states moved by 0\.[0-9]+ of their size\); try another --attention"):
        train(_config(data, tmp_path / "flash", **config))
    assert not (tmp_path / "flash").exists()
    seen.clear()
    monkeypatch.setattr(train_module, "ONE_ROW_KERNELS", ("varlen_like",))
    flash = train(_config(data, tmp_path / "flash", **config))
    assert seen and set(seen) == {1}  # every forward of training and validation
    assert np.allclose(_losses(tmp_path / "flash"), _losses(tmp_path / "sdpa"), rtol=1e-5, atol=0)
    assert flash.validation.loss_speech == pytest.approx(reference.validation.loss_speech, rel=1e-5)


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(data, tmp_path):
    single, parallel = _one_process_and_torchrun(data, tmp_path)
    assert np.allclose(_losses(parallel), _losses(single), rtol=1e-4)


@pytest.mark.slow
def test_fsdp_across_two_processes_matches_one_process(data, tmp_path):
    single, sharded = _one_process_and_torchrun(data, tmp_path, fsdp=True, validation_data=data, validation_every=2)
    assert np.allclose(_losses(sharded), _losses(single), rtol=1e-4)
    # Validations during the run: every process scores them (each sharded forward needs all), one line each.
    records = [json.loads(line) for line in (sharded / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert records[-1]["loss_speech"] == RunResult.load(sharded).validation.loss_speech
    from transformers import AutoModelForCausalLM

    gathered = AutoModelForCausalLM.from_pretrained(sharded / "model")
    reference = AutoModelForCausalLM.from_pretrained(single / "model")
    for (name, a), (_, b) in zip(gathered.state_dict().items(), reference.state_dict().items()):
        assert np.allclose(a.numpy(), b.numpy(), atol=1e-4), name


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_fsdp_of_real_architectures_matches_one_process(extracted, tmp_path, architecture):
    """Qwen2.5's shape (tied embeddings, biased q/k/v) and Llama 3.2's (tied, Llama 3's RoPE scaling), tiny and
    random: under FSDP the second process builds them on the meta device and receives weights and RoPE buffers.
    Their weights are drawn 25x wider than transformers' default, so attention is peaked and positions matter:
    at the default (std 0.02) attention is near uniform, and RoPE frequencies of 0.5 on the second process gave
    the same losses."""
    from simslm.sequences.build import BuildConfig, build_sequences
    from tests.conftest import tiny_base_model

    extra = {"llama": {"rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                       "rope_theta": 500000.0}}.get(architecture, {})
    base = tiny_base_model(tmp_path / architecture, architecture, 32, 2, tie_word_embeddings=True,
                           initializer_range=0.5, **extra)
    units, _, _ = extracted
    data = str(tmp_path / "seq")
    build_sequences(BuildConfig(out=data, tokenizer=base, manifest=units.manifest, units=units.out,
                                streams=("interleaved", "speech"), context_length=64))
    single, sharded = _one_process_and_torchrun(data, tmp_path, shared={"base_model": base, "validation_data": data},
                                                fsdp=True)
    assert np.allclose(_losses(sharded), _losses(single), rtol=1e-4)
    # The run's last validation scored the model gathered from the shards (its buffers copied, its embeddings tied
    # again); the saved model, loaded afresh, scores the same. (Against the one-process run the validation differs
    # by up to 0.3% at these wide weights, gathered as before or as now: the summation orders' drift, amplified.)
    from transformers import AutoModelForCausalLM

    from simslm.train import evaluate_modalities

    saved = AutoModelForCausalLM.from_pretrained(sharded / "model")
    assert saved.lm_head.weight is saved.model.embed_tokens.weight
    config = json.loads((sharded / "config.json").read_text())
    again = evaluate_modalities(saved, data, Vocabulary.load(sharded / "model"), config["batch_size"],
                                config["num_validation_batches"], "cpu")
    assert again.loss == pytest.approx(RunResult.load(sharded).validation.loss, rel=1e-6)


def test_gradient_accumulation_matches_a_larger_batch(data, tmp_path):
    whole = train(_config(data, tmp_path / "whole", budget_tokens=4 * 4 * 64, batch_size=4))
    accumulated = train(_config(data, tmp_path / "accumulated", budget_tokens=4 * 4 * 64, batch_size=2,
                                grad_accumulation=2))
    assert whole.steps == accumulated.steps == 4
    assert np.allclose(_losses(tmp_path / "accumulated"), _losses(tmp_path / "whole"), rtol=1e-5)


def test_a_packed_batch_scores_each_document_as_if_it_were_alone():
    import contextlib

    import torch

    from simslm.model import build_family_model
    from simslm.sequences.build import pack
    from simslm.sequences.interleave import Sample
    from simslm.sequences.vocabulary import Vocabulary
    from simslm.train import _token_losses

    vocabulary = Vocabulary.build("stories260K", 16)
    model = build_family_model(2, len(vocabulary), seed=0, context_length=64).eval()
    rng = np.random.default_rng(0)
    documents = [rng.integers(3, len(vocabulary) - 3, n).astype(np.uint32) for n in (40, 7, 64, 90, 12, 20)]
    samples = [Sample(id=str(i), tokens=d, kinds=np.zeros(len(d), np.uint8)) for i, d in enumerate(documents)]
    rows, positions, _ = pack(samples, 64, vocabulary)
    assert rows.shape[0] < len(documents) + 1  # documents do share rows
    as_tensor = lambda array: torch.from_numpy(array.astype(np.int64))  # noqa: E731
    with torch.no_grad():
        packed, sums = _token_losses(model, as_tensor(rows), as_tensor(positions), vocabulary, contextlib.nullcontext())
        alone_total, alone_count = 0.0, 0
        for document in documents:
            for start in range(0, len(document), 64):  # the pieces a long document is cut into
                piece = document[start:start + 64][None]
                loss, piece_sums = _token_losses(model, as_tensor(piece), as_tensor(np.arange(piece.shape[1])[None]),
                                                 vocabulary, contextlib.nullcontext())
                alone_total, alone_count = alone_total + float(loss), alone_count + piece_sums[1]
    num_pieces = sum(-(-len(d) // 64) for d in documents)
    assert sums[1] == alone_count == sum(len(d) for d in documents) - num_pieces  # a piece's first token: unscored
    assert float(packed) == pytest.approx(alone_total, rel=1e-5)


def test_the_attention_kernel_falls_back_to_sdpa_without_flash_attn_or_cuda():
    import importlib.util

    from simslm.train import attention_kernel

    assert attention_kernel("auto", "cpu") == "sdpa" and attention_kernel("eager", "cuda") == "eager"
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert attention_kernel("auto", "cuda:0") == expected == attention_kernel("auto", "cuda:0", bf16=True)
    # bf16 on a CPU: attention in fp32, which its flash kernel runs faster than bf16.
    assert attention_kernel("auto", "cpu", bf16=True) == "sdpa_fp32"
    assert attention_kernel("sdpa", "cpu", bf16=True) == "sdpa"


def test_fp32_attention_computes_in_fp32_under_bf16_autocast_and_is_sdpa_in_fp32():
    import torch
    import torch.nn.functional as F
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from simslm import model as model_lib
    from simslm.train import attention_kernel

    attention = ALL_ATTENTION_FUNCTIONS[attention_kernel("sdpa_fp32", "cpu")]
    module = torch.nn.Module()
    module.is_causal = True
    query, key, value = torch.randn(3, 2, 4, 40, 16, dtype=torch.bfloat16).unbind(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = attention(module, query, key, value, None, scaling=0.25)
    assert output.dtype == torch.bfloat16
    in_fp32 = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), is_causal=True, scale=0.25)
    assert torch.equal(output.transpose(1, 2), in_fp32.to(torch.bfloat16))  # transformers' layout: heads second
    # In fp32 it is sdpa bit for bit, documents of a packed row kept apart by the same masks.
    model = model_lib.build_family_model(2, 300, seed=0, context_length=64).eval()
    tokens = torch.randint(0, 300, (2, 64))
    positions = torch.cat([torch.arange(length) for length in (20, 30, 14)]).repeat(2, 1)
    logits = {}
    for kernel in ("sdpa", "sdpa_fp32"):
        model.set_attn_implementation(attention_kernel(kernel, "cpu"))
        with torch.no_grad():
            logits[kernel] = model(input_ids=tokens, position_ids=positions, use_cache=False).logits
    assert torch.equal(logits["sdpa"], logits["sdpa_fp32"])


def test_flex_attention_keeps_documents_apart_and_trains_on_cuda_only(data, tmp_path, monkeypatch):
    import torch
    import torch.nn.attention.flex_attention as flex_kernel
    import transformers.integrations.flex_attention as flex

    from simslm import model as model_lib
    from simslm.config import ConfigError

    # Its forward runs on the CPU: on packed rows, each document's logits must be those of the document alone.
    # The kernel runs uncompiled here (transformers compiles it, a minute per shape on this CPU); what is checked
    # is the block mask transformers builds from the restarting positions.
    monkeypatch.setattr(flex_kernel, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True)
    monkeypatch.setattr(flex, "compile_friendly_flex_attention", lambda query, key, value, training=False, **kwargs:
                        flex_kernel.flex_attention(query, key, value, **kwargs))
    model = model_lib.build_family_model(2, 300, seed=0, context_length=64).eval()
    tokens = torch.randint(0, 300, (2, 64))
    lengths = (20, 30, 14)
    positions = torch.cat([torch.arange(length) for length in lengths]).repeat(2, 1)
    model.set_attn_implementation("flex_attention")
    with torch.no_grad():
        packed = model(input_ids=tokens, position_ids=positions, use_cache=False).logits
    model.set_attn_implementation("sdpa")
    start = 0
    for length in lengths:
        with torch.no_grad():
            alone = model(input_ids=tokens[:, start:start + length], use_cache=False).logits
        assert torch.allclose(packed[:, start:start + length], alone, atol=1e-5)
        start += length
    with pytest.raises(ConfigError, match="CUDA only"):
        train(_config(data, tmp_path / "flex", attention="flex_attention", device="cpu"))
    assert not (tmp_path / "flex").exists()


def test_a_loss_that_is_no_longer_finite_stops_the_run_without_a_result(data, tmp_path):
    run = tmp_path / "diverged"
    with pytest.raises(ValueError, match="the loss became"):
        train(_config(data, run, budget_tokens=12 * 4 * 64, lr=1e10, lr_min=0.0, warmup_fraction=0.0))
    assert not (run / "result.json").exists() and not (run / "model").exists()


def test_a_last_update_that_diverges_leaves_no_model(data, tmp_path):
    """The last step's loss is the last one checked: its update (here to infinite weights) was saved as the
    finished model, whose NaN scores `eval` then counted as lost pairs (0%)."""
    run = tmp_path / "diverged"
    with pytest.raises(ValueError, match="after its last step the model's weights are not all finite"):
        train(_config(data, run, budget_tokens=4 * 64, lr=1e39, lr_min=0.0, warmup_fraction=0.0))
    assert not (run / "result.json").exists() and not (run / "model").exists()


def test_numbers_read_back_steps_later_as_on_a_gpu_log_and_checkpoint_the_same(data, tmp_path, monkeypatch):
    import simslm.train as train_module

    def logged(run):
        return [{key: value for key, value in json.loads(line).items() if key not in ("tokens_per_sec", "mfu")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    config = dict(budget_tokens=10 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=5)
    train(_config(data, tmp_path / "at-once", **config))
    monkeypatch.setitem(train_module.READBACK_LAG, "cpu", 2)  # the host two steps ahead of its numbers
    train(_config(data, tmp_path / "later", **config))
    assert logged(tmp_path / "later") == logged(tmp_path / "at-once") and len(logged(tmp_path / "later")) == 10
    checkpoints = lambda run: sorted(p.name for p in (run / "checkpoints").iterdir())  # noqa: E731
    assert checkpoints(tmp_path / "later") == checkpoints(tmp_path / "at-once") == [
        "step-00000004", "step-00000008", "step-00000010"]
    # A loss that stops being finite is still caught before any checkpoint holds it.
    run = tmp_path / "diverged"
    with pytest.raises(ValueError, match="the loss became"):
        train(_config(data, run, budget_tokens=12 * 4 * 64, lr=1e10, lr_min=0.0, warmup_fraction=0.0))
    assert not (run / "result.json").exists() and not (run / "checkpoints").exists()


def test_a_time_limit_warning_saves_the_step_in_hand_and_hands_over_to_submitit(data, tmp_path, monkeypatch):
    """The warning SLURM sends before a job's time limit: the run saves a checkpoint after the step in hand (not
    the last periodic one), calls submitit's handler (which requeues the job and exits), and the requeued run
    ends as one never stopped did."""
    pytest.importorskip("submitit")
    import simslm.train as train_module

    config = dict(budget_tokens=12 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=5)
    reference = train(_config(data, tmp_path / "reference", **config))

    class Requeued(SystemExit):
        pass

    handed_over = []

    def submitit_handler(signum, frame):  # what submitit's does on the main process: requeue, then exit
        handed_over.append(signum)
        raise Requeued(-1)

    def learning_rate_warned_at_step_5(step, plan, config):
        if step == 5:  # the warning lands while step 6 (index 5) starts; Python runs the handler at once
            os.kill(os.getpid(), signal.SIGUSR2)
        return learning_rate(step, plan, config)

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        monkeypatch.setattr(train_module, "learning_rate", learning_rate_warned_at_step_5)
        with pytest.raises(Requeued):
            train(_config(data, tmp_path / "warned", **config))
        assert handed_over == [signal.SIGUSR2]
        # Restored once the loop is left: a warning during evaluation goes straight to submitit.
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        signal.signal(signal.SIGUSR2, previous)
    warned = tmp_path / "warned"
    assert sorted(p.name for p in (warned / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert len(_losses(warned)) == 6 and not (warned / "result.json").exists()
    monkeypatch.setattr(train_module, "learning_rate", learning_rate)
    requeued = train(_config(data, warned, **config))  # the requeued job resumes from step 6
    assert _losses(warned) == _losses(tmp_path / "reference")  # bit for bit
    assert requeued.final_train == reference.final_train and requeued.validation == reference.validation
    # Outside a submitit job the signal is left alone.
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    with train_module._StopRequest() as stop:
        assert stop.signum != signal.SIGUSR2 and signal.getsignal(signal.SIGUSR2) is previous


def test_a_torn_metrics_line_and_garbage_checksums_still_resume(data, tmp_path, capsys):
    run = tmp_path / "run"
    finished = train(_config(data, run, budget_tokens=8 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=3))
    (run / "result.json").unlink()
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "lo')  # a kill in the middle of a line
    (run / "checkpoints" / "step-00000008" / "checksums.json").write_text("not json at all")
    again = train(_config(data, run, budget_tokens=8 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=3))
    assert "checksums.json is unreadable" in capsys.readouterr().err  # fell back to step 4
    assert again.steps == finished.steps and again.final_train == finished.final_train


def test_resuming_with_another_number_of_processes_is_refused_unless_a_replan_is_allowed(data, tmp_path):
    run = tmp_path / "run"
    train(_config(data, run, budget_tokens=4 * 4 * 64))
    plan = json.loads((run / "plan.json").read_text())
    (run / "plan.json").write_text(json.dumps({**plan, "world_size": 2}))
    (run / "result.json").unlink()  # a run to resume: a finished one's result stands however many processes ask
    with pytest.raises(ValueError, match="planned for 2 process.*--allow-replan"):
        train(_config(data, run, budget_tokens=4 * 4 * 64))


def test_a_replan_keeps_the_total_tokens_and_continues_the_schedule():
    config = TrainConfig(run_dir="", data="", budget_tokens=2048, warmup_fraction=0.25)
    two = Plan(total_steps=8, warmup_steps=2, tokens_per_step=256, total_tokens=2048, total_flops=0.0,
               flops_per_token={"all_params": 6.0}, parameter_groups={}, context_length=64, world_size=2,
               vocab_size=1)
    one = dataclasses.replace(two, total_steps=16, warmup_steps=4, tokens_per_step=128, world_size=1)
    replanned = two.replanned(one, 4)
    assert replanned.total_steps == 12 and replanned.total_tokens == 2048 and replanned.tokens_before(12) == 2048
    assert replanned.resumed_from == {"step": 4, "tokens": 1024, "world_size": 2}
    # Step 4 + 2k of the re-planned run sits where step 4 + k of the first plan did.
    for k in range(4):
        assert learning_rate(4 + 2 * k, replanned, config) == pytest.approx(learning_rate(4 + k, two, config))
    again = replanned.replanned(two, 8)  # back to 2 processes at step 8 (6 tokens-steps of the first plan)
    assert again.total_tokens == 2048 and again.total_steps == 10
    assert learning_rate(8, again, config) == pytest.approx(learning_rate(6, two, config))


@pytest.mark.slow
def test_a_run_of_two_processes_resumes_with_one_when_a_replan_is_allowed(data, tmp_path):
    env = _rank_env()
    parallel = _config(data, tmp_path / "run", budget_tokens=8 * 4 * 64, batch_size=2, checkpoint_every=2,
                       num_checkpoints_kept=10)
    (tmp_path / "parallel.json").write_text(json.dumps(parallel.__dict__))
    torchrun = _torchrun(2, "-m", "simslm", "train", "--config", str(tmp_path / "parallel.json"))
    completed = subprocess.run(torchrun, env=env, cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    run = tmp_path / "run"
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # As if killed after step 4 of 8.
    (run / "result.json").unlink()
    for step in (6, 8):
        subprocess.run(["rm", "-r", str(run / "checkpoints" / f"step-{step:08d}")], check=True)
    before = json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())["wall_sec"]
    result = train(dataclasses.replace(parallel, allow_replan=True))
    assert result.wall_sec > before > 0  # wall time adds up across resumes
    plan = json.loads((run / "plan.json").read_text())
    assert plan["resumed_from"] == {"step": 4, "tokens": 4 * 256, "world_size": 2}
    assert result.steps == 12 and result.tokens == 8 * 4 * 64  # 4 steps of 256 tokens, then 8 of 128
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in resumed] == list(range(1, 13)) and resumed[-1]["tokens"] == 8 * 4 * 64
    # The schedule goes on by tokens: step 5 + 2k reads the lr the two processes used at step 5 + k.
    for k in range(4):
        assert resumed[4 + 2 * k]["lr"] == pytest.approx(first[4 + k]["lr"])


def test_data_built_with_another_tokenizer_is_refused_before_training(data, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-lm"  # a base model whose vocabulary is not the data's (tok512)
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(other)
    with pytest.raises(ValueError, match="built with another tokenizer"):
        train(_config(data, tmp_path / "run", base_model=str(other), budget_tokens=4 * 4 * 64))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_base_with_more_spare_rows_than_units_trains_on_its_tokens_rows(extracted, tmp_path):
    """Qwen2.5 with fewer than 270 units: the model has more rows than the tokenizer, units and markers need.
    Refused before ("cannot shrink"); slamkit drops the spare rows past its vocabulary, and so does simslm."""
    from transformers import AutoModelForCausalLM

    from simslm.sequences.build import BuildConfig, build_sequences
    from tests.conftest import tiny_base_model

    base = tiny_base_model(tmp_path / "padded", "qwen2", 32, 1, rows=1024, tie_word_embeddings=True)
    units, _, _ = extracted
    data = str(tmp_path / "seq")
    build_sequences(BuildConfig(out=data, tokenizer=base, manifest=units.manifest, units=units.out,
                                streams=("interleaved",), context_length=64))
    size = len(Vocabulary.load(Path(data) / "tokenizer"))
    assert size < 1024
    train(_config(data, tmp_path / "run", base_model=base, budget_tokens=2 * 4 * 64))
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert trained.get_input_embeddings().weight.shape[0] == trained.config.vocab_size == size


def test_validation_data_that_shares_the_training_utterances_is_said(data, extracted, tmp_path, capsys):
    """The held-out curves the fits read (Chinchilla's approach 1) come from --validation-data: the training data
    itself, or sequences of the same manifest, give no held-out loss. Allowed, and said; held-out text is not."""
    from simslm.sequences.build import BuildConfig, build_sequences
    from simslm.train import validation_overlap

    units, _, _ = extracted
    same_manifest = str(tmp_path / "speech-only")
    build_sequences(BuildConfig(out=same_manifest, manifest=units.manifest, units=units.out, streams=("speech",),
                                context_length=64))
    # A manifest of its own made of the training manifest's first line (a split by copying lines, the classic slip):
    # its recording is the training data's. It was not said before: only the manifests' files were compared.
    first = json.loads(Path(units.manifest).read_text().splitlines()[0])
    recording = Path(units.manifest).parent / first["audio"]  # its audio, wherever the copy is written
    (tmp_path / "held-out.jsonl").write_text(json.dumps({**first, "audio": str(recording)}) + "\n")
    copied = str(tmp_path / "held-out")
    build_sequences(BuildConfig(out=copied, manifest=str(tmp_path / "held-out.jsonl"), units=units.out,
                                streams=("speech",), context_length=64))
    assert validation_overlap(data, data) == "is the training data itself"
    assert validation_overlap(data, same_manifest).startswith("was built from the training data's manifest")
    assert validation_overlap(data, copied) == (
        f"was built from {os.path.realpath(tmp_path / 'held-out.jsonl')}, 1 of whose 1 utterances are recordings of the training "
        f"data's manifest ({os.path.realpath(units.manifest)})")
    # The same utterance recorded elsewhere (another file) is held out: compared by recording, not by id.
    shutil.copy(recording, tmp_path / f"other{recording.suffix}")
    (tmp_path / "other.jsonl").write_text(json.dumps({**first, "audio": f"other{recording.suffix}"}) + "\n")
    other = str(tmp_path / "other")
    build_sequences(BuildConfig(out=other, manifest=str(tmp_path / "other.jsonl"), units=units.out,
                                streams=("speech",), context_length=64))
    assert validation_overlap(data, other) is None
    train(_config(data, tmp_path / "run", budget_tokens=2 * 4 * 64, validation_data=same_manifest))
    assert "warning: --validation-data" in capsys.readouterr().err


def test_the_plan_counts_the_passes_over_the_data_and_warns_past_four(data, tmp_path, capsys, monkeypatch):
    import torch

    class Planned(Exception):
        """Where the run makes its optimiser, after its plan is written and said: the 7 passes of training that
        would follow (47 s of the suite) check nothing here."""

    def planned(*args, **kwargs):
        raise Planned

    monkeypatch.setattr(torch.optim, "AdamW", planned)
    loader_batches = PackedLoader(data, 4).batches_per_epoch()
    for passes, warned in ((2, False), (5, True)):
        run = tmp_path / f"run{passes}"
        with pytest.raises(Planned):
            train(_config(data, run, budget_tokens=passes * loader_batches * 4 * 64, checkpoint_every=1000))
        assert json.loads((run / "plan.json").read_text())["data_passes"] == pytest.approx(passes, abs=1e-3)
        assert ("passes repeat data" in capsys.readouterr().err) == warned


def test_documents_longer_than_the_base_models_positions_are_said(tmp_path, capsys):
    """Data built with the default context (2,048) trained stories260K, which learnt 512 positions, on documents
    four times as long without a word; a random init has no positions to go past."""
    from simslm.sequences.build import BuildConfig, build_sequences

    data = tmp_path / "seq"
    build_sequences(BuildConfig(out=str(data), streams=("text",), text_corpus="tinystories-sample[:8]",
                                context_length=1024))
    capsys.readouterr()
    for init, warned in (("twist", True), ("random", False)):
        train(TrainConfig(run_dir=str(tmp_path / init), data=str(data), init=init, budget_tokens=1024,
                          batch_size=1))
        said = ("stories260K was trained on 512 positions, and the data's documents run to 1024 tokens"
                in capsys.readouterr().err)
        assert said == warned


def test_a_finished_run_given_again_keeps_its_result_even_without_its_checkpoints(data, tmp_path, capsys):
    """A finished run trained again validated again and rewrote its model and result.json (its wall_sec grew); with
    its checkpoints deleted to save space, the same command trained the whole run anew over its model."""
    run = tmp_path / "run"
    config = _config(data, run, budget_tokens=4 * 4 * 64, validation_data=data, num_validation_batches=1)
    first = train(config)
    shutil.rmtree(run / "checkpoints")
    kept = {path.name: path.read_bytes() for path in [*run.glob("*.json*"), *(run / "model").iterdir()]}
    capsys.readouterr()
    assert train(config) == first
    assert f"{run} finished before; its result stands" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in [*run.glob("*.json*"), *(run / "model").iterdir()]} == kept
    assert not (run / "checkpoints").exists()
    with pytest.raises(ValueError, match="another config"):  # another run asked of the folder: refused as before
        train(dataclasses.replace(config, lr=config.lr * 2))


def test_tensorboard_events_carry_the_metrics_and_a_plain_log_line_per_interval(data, tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("SIMSLM_LOG_EVERY_SEC", "0")
    run = tmp_path / "run"
    train(_config(data, run, budget_tokens=4 * 4 * 64, tensorboard=True, validation_data=data,
                  num_validation_batches=1))
    log = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[train]")]
    assert log[0].startswith("[train] 1/4 (25%)") and "loss" in log[0] and "tokens_per_sec" in log[0]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [(event.step, event.value) for event in events.Scalars("train/loss")]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [(m["step"], pytest.approx(m["loss"])) for m in metrics]
    assert "validation/loss_speech" in events.Tags()["scalars"]


def test_a_checkpoint_of_another_model_is_refused_naming_it(data, tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    train(_config(data, small, base_model="family:1", init="random", budget_tokens=4 * 4 * 64, checkpoint_every=2))
    train(_config(data, large, base_model="family:2", init="random", budget_tokens=4 * 4 * 64, checkpoint_every=2))
    (large / "result.json").unlink()
    for name in ("step-00000002", "step-00000004"):  # checkpoints copied from the smaller run, checksums and all
        shutil.rmtree(large / "checkpoints" / name)
        shutil.copytree(small / "checkpoints" / name, large / "checkpoints" / name)
    with pytest.raises(ValueError, match="step-00000004: does not fit this run's model"):
        train(_config(data, large, base_model="family:2", init="random", budget_tokens=4 * 4 * 64,
                      checkpoint_every=2))


def test_cross_entropy_in_chunks_gives_the_same_training(data, tmp_path, monkeypatch):
    whole = train(_config(data, tmp_path / "whole", budget_tokens=4 * 4 * 64, validation_data=data))
    from simslm import train as train_module

    evaluate, heads = train_module.evaluate_modalities, []
    monkeypatch.setattr(train_module, "evaluate_modalities",
                        lambda *arguments, **keywords: heads.append(keywords.get("chunked")) or
                        evaluate(*arguments, **keywords))
    chunked = train(_config(data, tmp_path / "chunked", budget_tokens=4 * 4 * 64, loss_chunk_tokens=50,
                            activation_checkpointing=True, validation_data=data, validation_every=2))
    assert np.allclose(_losses(tmp_path / "chunked"), _losses(tmp_path / "whole"), rtol=1e-5, atol=1e-5)
    assert chunked.final_train.loss_speech == pytest.approx(whole.final_train.loss_speech, rel=1e-5)
    # Its validations (at step 2 and its own at the end) go through the chunked head too, to the same numbers.
    assert heads == [True, True]
    assert chunked.validation.loss_speech == pytest.approx(whole.validation.loss_speech, rel=1e-5)


@pytest.mark.slow
def test_fsdp_with_chunked_loss_and_activation_checkpointing_matches_one_process(data, tmp_path):
    single, sharded = _one_process_and_torchrun(data, tmp_path, fsdp=True, loss_chunk_tokens=40,
                                                activation_checkpointing=True, validation_data=data,
                                                validation_every=3)
    assert np.allclose(_losses(sharded), _losses(single), rtol=1e-4)
    # A validation during the run goes through FSDP's root, which holds the chunked head.
    assert [json.loads(line)["step"] for line in (sharded / "validation.jsonl").read_text().splitlines()] == [3, 6]


@pytest.mark.slow
def test_fsdp_bf16_parameters_train_close_to_fp32(data, tmp_path):
    single, sharded = _one_process_and_torchrun(data, tmp_path, fsdp=True, fsdp_mixed_precision="bf16")
    assert np.allclose(_losses(sharded), _losses(single), rtol=2e-2)
    assert _losses(sharded) != _losses(single)  # bf16 really was used


@pytest.mark.slow
def test_fsdp_with_bf16_weights_matches_one_process(data, tmp_path):
    # bf16 on the CPU attends in fp32 through simslm's own kernel (sdpa_fp32), which the second process's skeleton
    # must find registered before it is built.
    single, sharded = _one_process_and_torchrun(data, tmp_path, shared={"precision": "bf16-weights"}, fsdp=True)
    assert np.allclose(_losses(sharded), _losses(single), rtol=2e-2)
    import torch
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(sharded / "model" / "model.safetensors")).values()} == {torch.bfloat16}


@pytest.mark.slow
def test_an_fsdp_run_killed_mid_training_resumes_bit_for_bit(data, tmp_path):
    """SIGKILLed (torchrun and both ranks) once its first checkpoint is whole, an FSDP run resumes to the losses of
    the run never stopped, from full checkpoints and from sharded ones (a format changes no loss: one reference)."""
    env = _rank_env()

    def torchrun(name: str, checkpoint_format: str) -> list[str]:
        config = _config(data, tmp_path / name, budget_tokens=8 * 4 * 64, batch_size=2, checkpoint_every=2,
                         num_checkpoints_kept=5, fsdp=True, checkpoint_format=checkpoint_format)
        (tmp_path / f"{name}.json").write_text(json.dumps(config.__dict__))
        return _torchrun(2, "-m", "simslm", "train", "--config", str(tmp_path / f"{name}.json"))

    completed = subprocess.run(torchrun("reference", "full"), env=env, cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for checkpoint_format in ("full", "sharded"):
        killed = f"killed-{checkpoint_format}"
        process = subprocess.Popen(torchrun(killed, checkpoint_format), env=env, cwd=REPO, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = tmp_path / killed / "checkpoints" / "step-00000002" / "checksums.json"
        deadline = time.time() + 120
        while not first.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert not (tmp_path / killed / "result.json").exists(), "the run finished before it could be killed"
        completed = subprocess.run(torchrun(killed, checkpoint_format), env=env, cwd=REPO, capture_output=True,
                                   text=True)
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert _losses(tmp_path / killed) == _losses(tmp_path / "reference"), checkpoint_format
        checkpoint = tmp_path / killed / "checkpoints" / "step-00000008"
        if checkpoint_format == "sharded":  # each process wrote its own shards; nothing was gathered
            assert not (checkpoint / "model.safetensors").exists()
            assert sorted(p.name for p in (checkpoint / "sharded").glob("*.distcp")) == ["__0_0.distcp",
                                                                                          "__1_0.distcp"]
            assert set(json.loads((checkpoint / "checksums.json").read_text())) >= {"sharded/.metadata",
                                                                                    "sharded/__1_0.distcp"}
        else:
            assert (checkpoint / "model.safetensors").exists()
        assert not list((tmp_path / killed / "checkpoints").glob(".*"))  # no save left part way


@pytest.mark.slow
def test_a_sharded_checkpoint_of_two_processes_resumes_on_three(data, tmp_path):
    # torch.distributed.checkpoint reshards on load: the weights three processes read back from two processes'
    # shards are the weights the two saved (resumed at the last step, nothing more is trained).
    import torch
    from safetensors.torch import load_file

    env = _rank_env()
    config = _config(data, tmp_path / "run", budget_tokens=6 * 4 * 64, batch_size=2, checkpoint_every=3, fsdp=True,
                     checkpoint_format="sharded", allow_replan=True)
    (tmp_path / "run.json").write_text(json.dumps(config.__dict__))
    (tmp_path / "spy.py").write_text(_SPY)

    def torchrun(processes: int, log: str) -> subprocess.CompletedProcess:
        completed = subprocess.run(_torchrun(processes, str(tmp_path / "spy.py"), str(tmp_path / log), "train",
                                             "--config", str(tmp_path / "run.json")),
                                   env=env, cwd=REPO, capture_output=True, text=True)
        assert completed.returncode == 0, _told(completed, tmp_path / log)
        return completed

    torchrun(2, "fresh.log")
    assert (tmp_path / "fresh.log").read_text() == "0 base model\n"
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    # The last checkpoint's shards, read by one process with no group, are the model the run saved.
    from simslm.train import FromCheckpointConfig, model_from_checkpoint

    model_from_checkpoint(FromCheckpointConfig(checkpoint=str(tmp_path / "run" / "checkpoints" / "step-00000006"),
                                               out=str(tmp_path / "at-6")))
    exported = load_file(str(tmp_path / "at-6" / "model.safetensors"))
    assert exported.keys() == saved.keys() and all(torch.equal(exported[name], saved[name]) for name in saved)
    shutil.rmtree(tmp_path / "run" / "model")
    (tmp_path / "run" / "result.json").unlink()
    again = torchrun(3, "resumed.log")
    assert again.stderr.count("re-planned") == 1  # said once for the run, not once per process
    # Every process read its own shards of the checkpoint into the skeleton of its model; none loaded the base
    # model, and no process read the weights whole.
    assert not (tmp_path / "resumed.log").exists()
    loaded = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[name], saved[name]) for name in saved)


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


@pytest.mark.slow
def test_under_fsdp_only_the_main_process_reads_the_weights_and_checkpoints(data, tmp_path):
    """Each process loaded the base model and read every checkpoint whole: for a 7B model 28 GB and 84 GB of host
    memory, once per GPU. The others now build the model on the meta device and receive their shards, and a resumed
    run loads no base model at all; the run is the same, and resumes bit for bit."""
    env = _rank_env()
    config = _config(data, tmp_path / "run", budget_tokens=6 * 4 * 64, batch_size=2, checkpoint_every=3, fsdp=True,
                     num_checkpoints_kept=5)
    (tmp_path / "run.json").write_text(json.dumps(config.__dict__))
    (tmp_path / "spy.py").write_text(_SPY)

    def torchrun(log: str) -> None:
        completed = subprocess.run(_torchrun(2, str(tmp_path / "spy.py"), str(tmp_path / log), "train", "--config",
                                             str(tmp_path / "run.json")), env=env, cwd=REPO, capture_output=True,
                                   text=True)
        assert completed.returncode == 0, _told(completed, tmp_path / log)

    def back_to_step_3() -> None:
        for name in ("result.json", "model", "checkpoints/step-00000006"):
            shutil.rmtree(tmp_path / "run" / name) if (tmp_path / "run" / name).is_dir() else \
                (tmp_path / "run" / name).unlink()

    torchrun("fresh.log")
    assert (tmp_path / "fresh.log").read_text() == "0 base model\n"
    losses = _losses(tmp_path / "run")
    back_to_step_3()
    torchrun("resumed.log")
    # Resumed, no process loads the base model: every one builds the checkpoint's model from the config stored
    # beside it, and the main one reads the weights into it.
    assert sorted((tmp_path / "resumed.log").read_text().splitlines()) == ["0 checkpoint weights", "0 optimizer state"]
    assert _losses(tmp_path / "run") == losses
    # A checkpoint written before checkpoints stored their model's config: the base model is loaded, as then.
    _as_written_before_model_configs(tmp_path / "run" / "checkpoints" / "step-00000003")
    back_to_step_3()
    torchrun("older.log")
    assert sorted((tmp_path / "older.log").read_text().splitlines()) == [
        "0 base model", "0 checkpoint weights", "0 optimizer state"]
    assert _losses(tmp_path / "run") == losses


@pytest.mark.slow
def test_a_compiled_step_trains_as_the_eager_one_for_50_steps(data, tmp_path):
    budget = 50 * 4 * 64  # 50 steps of 4 x 64
    train(_config(data, tmp_path / "eager", budget_tokens=budget, checkpoint_every=100))
    compiled = _config(data, tmp_path / "compiled", budget_tokens=budget, checkpoint_every=100, compile=True)
    train(compiled)
    eager_losses, compiled_losses = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(eager_losses) == len(compiled_losses) == 50
    assert np.max(np.abs(np.asarray(compiled_losses) - eager_losses)) <= 1e-4


@pytest.mark.parametrize(("asked", "compiled_with"), [("auto", "max-autotune-no-cudagraphs"), ("default", "default")])
def test_compile_mode_auto_autotunes_on_the_cpu(data, tmp_path, monkeypatch, asked, compiled_with):
    import torch

    modes = []

    def record(function, **options):
        modes.append(options["mode"])
        return function  # eager: the mode is what is checked

    monkeypatch.setattr(torch, "compile", record)
    train(_config(data, tmp_path / asked, budget_tokens=4 * 4 * 64, compile=True, compile_mode=asked))
    assert modes == [compiled_with]


def test_a_step_that_cannot_compile_says_so_and_trains_eagerly(data, tmp_path, monkeypatch, capsys):
    import torch

    def cannot_compile(function, **_):
        def fails(*arguments):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fails

    monkeypatch.setattr(torch, "compile", cannot_compile)
    train(_config(data, tmp_path / "eager", budget_tokens=4 * 4 * 64))
    train(_config(data, tmp_path / "fallback", budget_tokens=4 * 4 * 64, compile=True))
    assert "--compile failed (RuntimeError: no C++ compiler found); training eagerly" in capsys.readouterr().err
    assert _losses(tmp_path / "fallback") == _losses(tmp_path / "eager")  # eager is bit for bit the default


def test_fsdp_in_one_process_is_refused_before_the_run_folder_is_written(data, tmp_path):
    # Its plan for one process would then have refused the torchrun that follows (planned for 1 process, not 2).
    with pytest.raises(ValueError, match="--fsdp needs several processes: start the run with torchrun"):
        train(_config(data, tmp_path / "run", fsdp=True))
    assert not (tmp_path / "run").exists()


# `simslm ARGS...` with torch.compile noted (what each process compiles) and, with COMPILE=fail, failing at its
# first call as a machine without a C++ compiler does.
_COMPILE_SPY = """
import atexit, os, sys
import torch
from simslm.cli import run

compile = torch.compile


def noted(target, **options):
    with open(sys.argv[1], "a") as handle:
        handle.write(f"{os.environ['RANK']} {getattr(target, '__qualname__', type(target).__name__)}\\n")
    if os.environ.get("COMPILE") != "fail":
        return compile(target, **options)

    def fails(*arguments, **keywords):
        raise RuntimeError("no C++ compiler found")
    return fails


torch.compile = noted
run(sys.argv[2:])
"""


@pytest.mark.slow
def test_compiled_runs_of_two_processes_train_as_one_eager_process(data, tmp_path):
    """--compile --fsdp: each process compiles each decoder layer's forward (FSDP's hooks, which gather a layer's
    weights, stay outside); the run trains as one eager process does, to 1e-4, and saves a model under its own
    names. A compile that fails at its first call falls back to eager, to the same losses as --fsdp alone.
    --compile with data parallelism (DDP) compiles the whole step's forward and loss, as one process does."""
    env = _rank_env()
    (tmp_path / "spy.py").write_text(_COMPILE_SPY)
    runs = {name: _config(data, tmp_path / name, budget_tokens=6 * 4 * 64, batch_size=batch_size, checkpoint_every=3,
                          **changes)
            for name, batch_size, changes in (("single", 4, {}), ("eager", 2, {"fsdp": True}),
                                              ("compiled", 2, {"fsdp": True, "compile": True}),
                                              ("fallback", 2, {"fsdp": True, "compile": True}),
                                              ("data-parallel", 2, {"compile": True}))}
    for name, config in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config.__dict__))
    train(runs["single"])  # in this process, as `_one_process_and_torchrun` runs it
    for name in ("eager", "compiled", "fallback", "data-parallel"):
        completed = subprocess.run(_torchrun(2, str(tmp_path / "spy.py"), str(tmp_path / f"{name}.log"), "train",
                                             "--config", str(tmp_path / f"{name}.json")),
                                   env={**env, "COMPILE": "fail" if name == "fallback" else ""}, cwd=REPO,
                                   capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr[-3000:]
        if name == "fallback":
            assert "--compile failed (RuntimeError: no C++ compiler found); training eagerly" in completed.stderr
    num_layers = json.loads((tmp_path / "single" / "model" / "config.json").read_text())["num_hidden_layers"]
    assert sorted((tmp_path / "compiled.log").read_text().splitlines()) == sorted(
        [f"{rank} LlamaDecoderLayer.forward" for rank in (0, 1)] * num_layers)
    assert np.allclose(_losses(tmp_path / "compiled"), _losses(tmp_path / "single"), rtol=1e-4)
    from transformers import AutoModelForCausalLM

    gathered = AutoModelForCausalLM.from_pretrained(tmp_path / "compiled" / "model").state_dict()
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "single" / "model").state_dict()
    assert list(gathered) == list(reference)
    for name, weight in gathered.items():
        assert np.allclose(weight.numpy(), reference[name].numpy(), atol=1e-4), name
    assert _losses(tmp_path / "fallback") == _losses(tmp_path / "eager")
    assert sorted((tmp_path / "data-parallel.log").read_text().splitlines()) == ["0 _loss_and_totals",
                                                                                "1 _loss_and_totals"]
    assert np.allclose(_losses(tmp_path / "data-parallel"), _losses(tmp_path / "single"), rtol=1e-4)


def test_the_peak_is_measured_on_a_cpu_a_product_at_a_time(monkeypatch):
    """A CPU without native bf16 takes seconds a product: timed in rounds of 10, as a GPU is, the peak took 20
    products (26-51 s) before each bf16 run here. One at a time it takes as long as asked, give or take a product."""
    import time

    import torch

    from simslm.train import measure_peak_flops

    class SlowProduct:  # a product of 0.2 s, counted
        count = 0

        def __matmul__(self, other):
            SlowProduct.count += 1
            time.sleep(0.2)

    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: SlowProduct())
    started = time.perf_counter()
    peak = measure_peak_flops("cpu", size=100, seconds=0.5, bf16=True)
    # Warm-up: 0.25 s (2 products); measured: 0.5 s (3 products).
    assert SlowProduct.count <= 6 and time.perf_counter() - started < 1.5
    assert peak == pytest.approx(2 * 100 ** 3 / 0.2, rel=0.2)


@pytest.mark.slow
def test_precision_bf16_trains_in_bf16_autocast_on_the_cpu_and_warns_where_that_is_slow(data, tmp_path, monkeypatch,
                                                                                         capsys, measured_peak):
    import torch

    import simslm.train as train_module

    budget = 4 * 4 * 64
    train(_config(data, tmp_path / "fp32", budget_tokens=budget))
    # The MFU denominator is measured in the precision trained; here bf16 is made to measure slower than fp32.
    measured = []

    def peak(device, bf16=None, **_):
        measured.append(bf16)
        return 1e9 if bf16 else 1e10

    monkeypatch.setattr(train_module, "measure_peak_flops", peak)
    dtypes = set()
    linear = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward",
                        lambda self, x: dtypes.add(linear(self, x).dtype) or linear(self, x))
    train(_config(data, tmp_path / "bf16", budget_tokens=budget, precision="bf16"))
    assert torch.bfloat16 in dtypes and measured == [True, False]
    assert "--precision bf16: this CPU's bf16 matrix products run at 1.0 GFLOP/s against 10.0 in fp32" in \
        capsys.readouterr().err
    fp32, bf16 = np.asarray(_losses(tmp_path / "fp32")), np.asarray(_losses(tmp_path / "bf16"))
    assert not np.array_equal(fp32, bf16) and np.max(np.abs(fp32 - bf16)) < 0.05  # bf16 products, the same run
    # Given by a sweep, both peaks are taken as given: nothing is measured, and the slow bf16 is still said.
    monkeypatch.setenv("SIMSLM_PEAK_FLOPS", "1e10")
    monkeypatch.setenv("SIMSLM_PEAK_FLOPS_BF16", "2e9")
    measured.clear()
    given = train(_config(data, tmp_path / "given", budget_tokens=budget, precision="bf16"))
    assert measured == [] and given.peak_flops_measured == 2e9
    assert "bf16 matrix products run at 2.0 GFLOP/s against 10.0 in fp32" in capsys.readouterr().err
    for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines():
        logged = json.loads(line)  # MFU against the bf16 peak: 1e9 FLOP/s here
        assert logged["mfu"] == pytest.approx(logged["flops"] / logged["tokens"] * logged["tokens_per_sec"] / 1e9)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "bf16-weights"])
def test_a_bf16_run_on_the_cpu_resumes_bit_for_bit(data, tmp_path, train_stopped_at, precision):
    budget = 8 * 4 * 64  # 8 steps, checkpoints at 4 and 8
    train(_config(data, tmp_path / "whole", budget_tokens=budget, precision=precision))
    stopped = _config(data, tmp_path / "stopped", budget_tokens=budget, precision=precision)
    train_stopped_at(stopped, 6)
    assert not (tmp_path / "stopped" / "result.json").exists()
    train(stopped)
    assert _losses(tmp_path / "stopped") == _losses(tmp_path / "whole") and len(_losses(tmp_path / "whole")) == 8


@pytest.mark.slow
def test_bf16_weights_train_as_slamkits_recipe_loads_them(data, tmp_path):
    """slamkit's model configs load the base model with torch_dtype bfloat16 and the HF Trainer (bf16=True) trains
    it as loaded: weights, gradients and AdamW's moments in bf16, no fp32 copy; RoPE's frequencies, computed in
    fp32 at construction, stay fp32. `--precision bf16` keeps fp32 weights under bf16 autocast instead."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from simslm.train import weights_to

    shape = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                        vocab_size=64, tie_word_embeddings=True)
    loaded = AutoModelForCausalLM.from_config(shape, dtype=torch.bfloat16)  # as slamkit's UnitLM builds it
    model = AutoModelForCausalLM.from_config(shape)
    weights_to(model, torch.bfloat16)
    for built in (loaded, model):
        assert {p.dtype for p in built.parameters()} == {torch.bfloat16}
        assert {b.dtype for b in built.buffers()} == {torch.float32}
    assert model.lm_head.weight is model.model.embed_tokens.weight

    runs = {}
    for precision in ("bf16", "bf16-weights"):
        train(_config(data, tmp_path / precision, budget_tokens=4 * 4 * 64, precision=precision))
        checkpoint = tmp_path / precision / "checkpoints" / "step-00000004"
        weights = load_file(str(checkpoint / "model.safetensors"))
        moments = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
        runs[precision] = ({t.dtype for t in weights.values()},
                           {t.dtype for state in moments.values() for key, t in state.items() if key != "step"})
    assert runs == {"bf16": ({torch.float32}, {torch.float32}), "bf16-weights": ({torch.bfloat16}, {torch.bfloat16})}
    assert _losses(tmp_path / "bf16-weights") != _losses(tmp_path / "bf16")


def test_bf16_weights_grow_the_vocabulary_as_slamkit_does(data, tmp_path):
    """slamkit's `UnitLM` loads the base model in bf16, then `resize_token_embeddings` (mean-resizing) gives the new
    rows the mean of the bf16 rows; the fp32 mean rounded afterwards differs in some entries by a bf16 step."""
    import torch

    from simslm import model as model_lib
    from simslm.train import build_model, weights_to

    vocabulary = Vocabulary.load(Path(data) / "tokenizer")
    built = build_model(_config(data, tmp_path, precision="bf16-weights"), len(vocabulary), 64)
    slamkits = model_lib.load_base_model("stories260K")
    weights_to(slamkits, torch.bfloat16)  # from_pretrained(torch_dtype=bfloat16) rounds the stored weights alike
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # simslm seeds the draw transformers makes around the mean
        slamkits.resize_token_embeddings(len(vocabulary), mean_resizing=True)
    assert torch.equal(built.get_input_embeddings().weight, slamkits.get_input_embeddings().weight)
    rounded_after = build_model(_config(data, tmp_path, precision="fp32"), len(vocabulary), 64)
    weights_to(rounded_after, torch.bfloat16)
    assert not torch.equal(rounded_after.get_input_embeddings().weight, slamkits.get_input_embeddings().weight)


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "accumulation"), [("fp32", 1), ("bf16-weights", 1), ("fp32", 2)])
def test_the_loop_trains_as_slamkits_hf_trainer(data, tmp_path, precision, accumulation):
    """slamkit trains with the Hugging Face Trainer (SIMS: lr 5e-4 to 5e-5 by `cosine_with_min_lr`, warm-up ratio
    0.01, clipping at 0.5, no weight decay; `torch_dtype: bfloat16` weights and `bf16: true`) over
    `DataCollatorWithFlattening` batches, whose labels are -100 at each document's first token. The Trainer, given
    that configuration, the same initial model and simslm's batches in simslm's order, must log simslm's losses step
    for step: in fp32, and with `--precision bf16-weights` (slamkit's recipe) as it trains bf16 weights; with
    accumulation, a step's loss the mean over all its micro-batches' targets (the Trainer's `num_items_in_batch`)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from simslm.train import build_model, weights_to

    steps = 12
    config = _config(data, tmp_path / "run", budget_tokens=steps * accumulation * 4 * 64, checkpoint_every=100,
                     precision=precision, grad_accumulation=accumulation,
                     attention="sdpa")  # the Trainer's kernel (on a CPU in bf16, simslm's own default is sdpa_fp32)
    train(config)
    vocabulary = Vocabulary.load(Path(data) / "tokenizer")
    loader = PackedLoader(data, config.batch_size, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(config, len(vocabulary), int(loader.index["context_length"]), "cpu", vocabulary)
    if precision == "bf16-weights":
        weights_to(model, torch.bfloat16)

    class Rows(torch.utils.data.IterableDataset):  # simslm's rows in simslm's order (no sampler reorders them)
        def __iter__(self):
            for _ in range(steps * accumulation):
                batch = next(loader)
                for tokens, positions in zip(batch.tokens.astype(np.int64), batch.positions.astype(np.int64)):
                    labels = np.where((positions == 0) | (tokens == vocabulary.pad_id), -100, tokens)
                    yield {"input_ids": torch.from_numpy(tokens), "position_ids": torch.from_numpy(positions),
                           "labels": torch.from_numpy(labels)}

    logged = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append(logs["loss"])

    # warm-up 0.01: slamkit's `warmup_ratio: 0.01`, which transformers 5 takes as a fraction given to warmup_steps.
    arguments = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=config.batch_size,
                                  gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=5e-4,
                                  lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 5e-5},
                                  warmup_steps=0.01, max_grad_norm=0.5, weight_decay=0.0, logging_steps=1, report_to=[],
                                  save_strategy="no", use_cpu=True, bf16=precision != "fp32", seed=config.seed,
                                  disable_tqdm=True, dataloader_num_workers=0)
    Trainer(model=model, args=arguments, train_dataset=Rows(), callbacks=[Losses()]).train()
    assert len(logged) == steps
    # fp32: the same to 2e-7 (the Trainer logs in fp32). bf16 weights: 7e-4 after 12 steps, from the products'
    # rounding (simslm's forward is one token shorter, so its kernels block otherwise); the Trainer over fp32
    # weights, bf16 mixed precision, is 7e-2 off. With warm-up 0, the floor 0, or document starts scored, fp32
    # differs by 0.26, 1.3e-2 and 6e-4. (Clipping is on at every step of these: Adam's update is blind to its
    # level.)
    np.testing.assert_allclose(_losses(tmp_path / "run"), logged, rtol={"fp32": 1e-5, "bf16-weights": 2e-3}[precision])


def test_a_cuda_device_is_refused_where_there_is_none_and_cuda_n_is_that_gpu(data, tmp_path, monkeypatch, capsys):
    """`--device cuda` on a machine without CUDA failed in torch's assertion after the run's folder was written,
    and `--device cuda:1` trained on the CPU without a word (only "cuda" itself was taken as a GPU)."""
    import torch

    from simslm.cli import main
    from simslm.train import _Distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        assert main(["train", "--run-dir", str(tmp_path / "run"), "--data", data, "--budget-tokens", "1000",
                     "--device", device]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"simslm train: error: --device {device}: torch sees no CUDA device here")
        assert "\n" not in error and not (tmp_path / "run").exists()
    # Where there are GPUs (two, faked): cuda:N is that GPU, one past them is refused, and under torchrun each
    # process takes its LOCAL_RANK's (cuda:N would put them all on one).
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert _Distributed("cuda:1").device == "cuda:1" and chosen == ["cuda:1"]
    assert _Distributed("cuda").device == "cuda" and _Distributed("cpu").device == "cpu"
    with pytest.raises(ValueError, match=r"--device cuda:2: torch sees 2 CUDA device\(s\) here"):
        _Distributed("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device cuda:1 names one GPU for all 2 processes; under torchrun give"):
        _Distributed("cuda:1")


def test_a_hub_base_model_that_cannot_be_had_here_is_said_at_once(data, tmp_path, monkeypatch, capsys):
    """`train --base-model ORG/NAME` not cached, with the hub out of reach, ended after 25 s of transformers'
    retries; one request, no retries, says it now, with how to bring the model."""
    import huggingface_hub

    from simslm.cli import main

    for variable in ("SIMSLM_OFFLINE", "HF_HUB_OFFLINE"):  # downloads allowed: the hub is asked, and out of reach
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *_: None)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *_, **__: (_ for _ in ()).throw(OSError()))
    started = time.perf_counter()
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--data", data, "--budget-tokens", "1000",
                 "--base-model", "Org/Absent-0.5B"]) == 2
    assert time.perf_counter() - started < 10
    assert capsys.readouterr().err.strip() == (
        "simslm train: error: Org/Absent-0.5B: not in the Hugging Face cache and the hub cannot be reached (OSError); "
        "where there is a network, run `hf download Org/Absent-0.5B`, and bring that Hugging Face cache (HF_HOME) here")
    assert not (tmp_path / "run").exists()
    # Its tokenizer alone (`sequences build --tokenizer ORG/NAME`) likewise.
    from simslm.sequences.vocabulary import load_base_tokenizer

    with pytest.raises(ValueError, match=r"^Org/Absent-0.5B: not in the Hugging Face cache and the hub cannot be"):
        load_base_tokenizer("Org/Absent-0.5B")


def test_a_speech_lm_trains_on_from_its_own_vocabulary(trained_run, extracted, data, tmp_path):
    """Continued training of a speech LM (a run's model/, a `model from-slamkit` conversion): `train` said "build the
    sequences with --tokenizer MODEL", and `sequences build --tokenizer MODEL` said "already has unit tokens; it was
    extended before". The model's vocabulary is now the data's, units and all, for units of its own number."""
    from simslm.sequences.build import BuildConfig, build_sequences
    from simslm.sequences.vocabulary import Vocabulary

    run, _ = trained_run
    config, _, _ = extracted
    model_dir = run / "model"
    own = Vocabulary.load(model_dir)
    built = Vocabulary.build(str(model_dir), own.num_units)
    assert built.mismatch(own) is None and len(built) == len(own)
    with pytest.raises(ValueError, match=f"a speech LM's vocabulary of {own.num_units} units, but the units are of a "
                                         f"16-unit codebook"):
        Vocabulary.build(str(model_dir), 16)
    build_sequences(BuildConfig(out=str(tmp_path / "seq"), manifest=config.manifest, units=config.out,
                                tokenizer=str(model_dir), streams=("interleaved", "speech"), context_length=64))
    for more in (str(tmp_path / "seq"), data):  # built on the model's vocabulary, or on the one it was trained on
        result = train(_config(more, tmp_path / f"on-{len(str(more))}", base_model=str(model_dir),
                               budget_tokens=2 * 4 * 64))
        assert result.steps == 2
    text_only = tmp_path / "text"
    build_sequences(BuildConfig(out=str(text_only), streams=("text",), text_corpus="tinystories-sample[:40]",
                                context_length=64))
    with pytest.raises(ValueError, match="built with another tokenizer than .*model's, which has num_units"):
        train(_config(str(text_only), tmp_path / "text-run", base_model=str(model_dir), budget_tokens=4 * 64))
