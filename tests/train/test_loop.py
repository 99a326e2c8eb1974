"""`train` from start to end: the run folder, refusals before it is written, divergence, the HF Trainer's parity."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from simslm.sequences.loader import PackedLoader
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.loop import train
from simslm.train.loss import VALIDATION_SUMS
from simslm.train.plan import RunResult
from tests.train.helpers import _config, _losses


def test_a_runs_weights_are_as_readable_as_its_other_files(data, tmp_path):
    """safetensors 0.8 writes every file with mode 0600 whatever the umask (its issue #782): a colleague on a shared
    cluster could read a run's config but not load its model. The weights now take the mode the umask gives."""
    from simslm.train.loop import train

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
    from simslm.train.loop import train

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


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and path.name != ".lock"}


def test_a_run_another_process_trains_is_refused_at_once_and_left_as_it_is(data, tmp_path, train_stopped_at,
                                                                          lock_held_elsewhere):
    """A job submitted again while the first still trained went on beside it: it resumed from the first's last
    checkpoint, cut metrics.jsonl back to it, and both then appended to it (steps ..., 120, 135, 136, 121, 137, ...);
    the first's result.json took a final loss from the mixed lines. The second is now refused before it loads."""
    from simslm import storage

    config = _config(data, tmp_path / "run", budget_tokens=12 * 4 * 64, validation_data=None)
    train_stopped_at(config, 6)
    before = _files(tmp_path / "run")
    pid, release = lock_held_elsewhere(tmp_path / "run" / ".lock")  # as `simslm train` holds it
    with pytest.raises(storage.Busy, match=rf"run: another process is training this run; wait for it to end, or stop "
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


def test_gradient_accumulation_matches_a_larger_batch(data, tmp_path):
    whole = train(_config(data, tmp_path / "whole", budget_tokens=4 * 4 * 64, batch_size=4))
    accumulated = train(_config(data, tmp_path / "accumulated", budget_tokens=4 * 4 * 64, batch_size=2,
                                grad_accumulation=2))
    assert whole.steps == accumulated.steps == 4
    assert np.allclose(_losses(tmp_path / "accumulated"), _losses(tmp_path / "whole"), rtol=1e-5)


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
    import simslm.train.loop as train_module

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


def test_validation_data_that_shares_the_training_utterances_is_said(data, extracted, tmp_path, capsys):
    """The held-out curves the fits read (Chinchilla's approach 1) come from --validation-data: the training data
    itself, or sequences of the same manifest, give no held-out loss. Allowed, and said; held-out text is not."""
    from simslm.sequences.build import BuildConfig, build_sequences
    from simslm.train.loop import validation_overlap

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


@pytest.mark.slow
def test_bf16_weights_train_as_slamkits_recipe_loads_them(data, tmp_path):
    """slamkit's model configs load the base model with torch_dtype bfloat16 and the HF Trainer (bf16=True) trains
    it as loaded: weights, gradients and AdamW's moments in bf16, no fp32 copy; RoPE's frequencies, computed in
    fp32 at construction, stay fp32. `--precision bf16` keeps fp32 weights under bf16 autocast instead."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from simslm.train.build import weights_to

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

    from simslm.train.build import build_model, weights_to

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

    logged, norms = [], []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append(logs["loss"])
                norms.append(logs["grad_norm"])

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
    # The gradient is the mean loss's: Adam's update, and so these losses, are blind to its scale when every step
    # is clipped; the norm before clipping is not (fp32: the Trainer's to 8e-7; bf16 weights: 7e-3, a bf16 norm).
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([m["grad_norm"] for m in metrics], norms,
                               rtol={"fp32": 1e-5, "bf16-weights": 2e-2}[precision])

