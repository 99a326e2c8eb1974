"""The run's contract: steps from the budget, the schedule, resumes and re-plans, a moved run, data built again."""

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from simslm.sequences.loader import PackedLoader
from simslm.train.loop import train
from simslm.train.plan import Plan, TrainConfig, learning_rate, make_plan
from tests.train.helpers import REPO, _config, _losses, _rank_env, _torchrun


def test_plan_fixes_steps_from_the_budget_within_one_step(data, tmp_path):
    from simslm.train.build import build_model

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

    from simslm.train.build import build_model

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


@pytest.mark.slow
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
    # With accumulation a step reads that many batches: the same tokens are half the steps and the same passes.
    run = tmp_path / "accumulated"
    with pytest.raises(Planned):
        train(_config(data, run, budget_tokens=2 * loader_batches * 4 * 64, checkpoint_every=1000, grad_accumulation=2))
    assert json.loads((run / "plan.json").read_text())["data_passes"] == pytest.approx(2, abs=1e-3)

