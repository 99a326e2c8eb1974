"""What a run logs: its loss curves, TensorBoard's events, validations during the run."""

import dataclasses
import json
import shutil

import pytest

from simslm.train.loop import train
from simslm.train.metrics import loss_curve
from tests.train.helpers import _config, _losses


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

