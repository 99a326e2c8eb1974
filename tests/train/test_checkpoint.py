"""Checkpoints: bit-for-bit resumes, whole and sharded, corrupt or foreign ones, `model from-checkpoint`."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simslm.train.checkpoint import checkpoint_problem
from simslm.train.loop import train
from tests.train.helpers import (
    _SPY,
    REPO,
    _as_written_before_model_configs,
    _config,
    _losses,
    _rank_env,
    _run_command,
    _told,
    _torchrun,
    _torchrun_in_turn,
)


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


def test_a_corrupt_checkpoint_is_detected_and_the_previous_one_used(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(_config(data, run, budget_tokens=8 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=3))
    latest = run / "checkpoints" / "step-00000008"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "checksum mismatch" in checkpoint_problem(latest)
    # Every file it lists is checked, the optimizer's and the generators' states too: a byte changed anywhere in
    # them is a checkpoint not to resume from.
    for name in ("optimizer.pt", "rng.pt"):
        earlier = run / "checkpoints" / "step-00000004" / name
        kept = earlier.read_bytes()
        earlier.write_bytes(kept[:len(kept) // 2] + bytes([kept[len(kept) // 2] ^ 1]) + kept[len(kept) // 2 + 1:])
        assert checkpoint_problem(earlier.parent) == f"{name} is corrupt or truncated (checksum mismatch)"
        earlier.write_bytes(kept)
    (run / "result.json").unlink()
    from simslm.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(run).name == "step-00000004"
    assert "skipping checkpoint" in capsys.readouterr().err


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
    import simslm.train.checkpoint as train_module

    checked = train_module.checkpoint_problem
    monkeypatch.setattr(train_module, "checkpoint_problem",
                        lambda folder, **options: (checked(folder, **options), shutil.rmtree(folder))[0])
    assert main(["model", "from-checkpoint", str(middle), str(tmp_path / "gone")]) == 2
    assert "model_config.json went away while it was read (the run replaces its checkpoints as it trains)" in \
        capsys.readouterr().err
    assert not (tmp_path / "gone").exists()


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


@pytest.mark.slow
def test_an_fsdp_run_killed_mid_training_resumes_bit_for_bit(data, tmp_path):
    """SIGKILLed (torchrun and both ranks) once its first checkpoint is whole, an FSDP run resumes to the losses of
    the run never stopped, from full checkpoints and from sharded ones (a format changes no loss: one reference).
    The two resume in one torchrun and the reference is trained after them. The sharded one resumes first, in
    fresh processes; an FSDP run resumes from a full checkpoint in fresh ones in
    `test_under_fsdp_only_the_main_process_reads_the_weights_and_checkpoints`."""
    configs = {name: _config(data, tmp_path / name, budget_tokens=8 * 4 * 64, batch_size=2, checkpoint_every=2,
                             num_checkpoints_kept=5, fsdp=True, checkpoint_format=checkpoint_format)
               for name, checkpoint_format in (("killed-sharded", "sharded"), ("killed-full", "full"),
                                               ("reference", "full"))}
    for name in ("killed-sharded", "killed-full"):
        (tmp_path / f"{name}.json").write_text(json.dumps(configs[name].__dict__))
        process = subprocess.Popen(_torchrun(2, "-m", "simslm", "train", "--config", str(tmp_path / f"{name}.json")),
                                   env=_rank_env(), cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        first = tmp_path / name / "checkpoints" / "step-00000002" / "checksums.json"
        deadline = time.time() + 120
        while not first.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert not (tmp_path / name / "result.json").exists(), f"{name} finished before it could be killed"
    _torchrun_in_turn(tmp_path, configs)
    for name in ("killed-sharded", "killed-full"):
        assert _losses(tmp_path / name) == _losses(tmp_path / "reference"), name
        checkpoint = tmp_path / name / "checkpoints" / "step-00000008"
        if name == "killed-sharded":  # each process wrote its own shards; nothing was gathered
            assert not (checkpoint / "model.safetensors").exists()
            assert sorted(p.name for p in (checkpoint / "sharded").glob("*.distcp")) == ["__0_0.distcp",
                                                                                          "__1_0.distcp"]
            assert set(json.loads((checkpoint / "checksums.json").read_text())) >= {"sharded/.metadata",
                                                                                    "sharded/__1_0.distcp"}
        else:
            assert (checkpoint / "model.safetensors").exists()
        assert not list((tmp_path / name / "checkpoints").glob(".*"))  # no save left part way


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
    from simslm.train.checkpoint import FromCheckpointConfig, model_from_checkpoint

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

