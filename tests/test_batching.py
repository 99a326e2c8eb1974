"""`--batching pieces`: slamkit's batches, `per_device_train_batch_size` documents through `DataCollatorWithFlattening`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simslm.sequences.loader import PieceLoader, pack_rows, read_index
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.loop import train
from simslm.train.plan import RunResult, TrainConfig
from tests.sequences.conftest import epoch_documents
from tests.train.helpers import _losses, _one_process_and_torchrun


def _pad_id(data) -> int:
    return Vocabulary.load(Path(data) / "tokenizer").pad_id


def _documents(data, epoch: int) -> list[tuple[int, ...]]:
    """The documents of a built epoch, read from its rows by the definition of the build's format."""
    return epoch_documents(data, read_index(data)["epochs"][epoch])


def _split(batch, pad_id: int | None = None) -> list[tuple[int, ...]]:
    """A batch cut back into its documents at each position 0, row by row, leaving out runs of padding."""
    documents = []
    for tokens, positions in zip(batch.tokens, batch.positions):
        starts = [*np.flatnonzero(positions == 0), len(tokens)]
        documents += [tuple(int(t) for t in tokens[a:b]) for a, b in zip(starts, starts[1:]) if tokens[a] != pad_id]
    return documents


@pytest.mark.parametrize("row_length", [None, 64])
def test_an_epoch_of_pieces_is_every_document_once_in_one_row_or_rows_of_the_context(data, row_length):
    pad_id = _pad_id(data)
    loader = PieceLoader(data, 3, pad_id=pad_id, seed=5, row_length=row_length)
    documents = _documents(data, 0)
    seen = []
    for _ in range(loader.batches_per_epoch()):
        batch = next(loader)
        assert batch.tokens.shape == batch.positions.shape
        if row_length is None:  # end to end in one row, as DataCollatorWithFlattening lays them
            assert batch.tokens.shape[0] == 1 and pad_id not in batch.tokens
        else:  # first-fit into rows of the context: fewer than one a document where two fit in one
            assert batch.tokens.shape[1] == 64 and batch.tokens.shape[0] <= 3
        pieces = _split(batch, pad_id)
        assert len(pieces) == 3 and all(0 < len(piece) <= 64 for piece in pieces)
        seen += pieces
    # Every document but the tail that fills no batch, each once (as many times as the epoch holds it).
    assert len(seen) == len(documents) - len(documents) % 3 and loader.batches_per_epoch() == len(documents) // 3
    remaining = list(documents)
    for piece in seen:
        remaining.remove(piece)
    assert len(remaining) == len(documents) % 3
    assert pad_id not in {token for piece in seen for token in piece}
    # The next epoch reads the second built epoch.
    assert loader.epoch == 0 and next(loader) and loader.epoch == 1
    assert set(_split(next(loader), pad_id)) <= set(_documents(data, 1))


def test_the_pieces_of_a_folder_of_the_first_format_are_its_rows_without_their_padding(data, tmp_path):
    # Folders of the first format have no positions: one document a row, padded at its end.
    old = tmp_path / "first-format"
    shutil.copytree(data, old)
    index = json.loads((old / "index.json").read_text())
    for entry in index["epochs"]:
        for name in entry.pop("position_shards"):
            (old / f"epoch-{entry['epoch']:03d}" / name).unlink()
    (old / "index.json").write_text(json.dumps(index))
    pad_id = _pad_id(data)
    rows = np.asarray(PieceLoader(old, 1, pad_id=pad_id).chunks(0))
    loader = PieceLoader(old, 1, pad_id=pad_id, seed=3)
    assert loader.batches_per_epoch() == len(rows)
    seen = sorted(piece for _ in range(len(rows)) for piece in _split(next(loader), pad_id))
    assert seen == sorted(tuple(int(t) for t in row[row != pad_id]) for row in rows)


def test_documents_fill_rows_first_fit_in_their_order():
    documents = [np.full(length, length, dtype=np.uint32) for length in (40, 20, 30, 64, 10)]
    tokens, positions = pack_rows(documents, 64, pad_id=0)
    assert [sorted(set(row) - {0}) for row in tokens.tolist()] == [[20, 40], [10, 30], [64]]
    assert positions[0].tolist() == [*range(40), *range(20), *range(4)]  # the padding: a document of its own
    assert positions[1].tolist() == [*range(30), *range(10), *range(24)] and positions[2].tolist() == [*range(64)]
    assert tokens.dtype == np.uint32 and positions.dtype == np.uint16


def test_pieces_resume_exactly_and_split_over_processes_as_one(data):
    pad_id = _pad_id(data)
    whole = PieceLoader(data, 2, pad_id=pad_id, seed=1)
    reference = [next(whole) for _ in range(2 * whole.batches_per_epoch() + 3)]  # into the third epoch
    resumed = PieceLoader(data, 2, pad_id=pad_id, seed=1)
    for _ in range(7):
        next(resumed)
    again = PieceLoader(data, 2, pad_id=pad_id, seed=1)
    again.load_state_dict(resumed.state_dict())
    for expected in reference[7:]:
        got = next(again)
        assert np.array_equal(got.tokens, expected.tokens) and np.array_equal(got.positions, expected.positions)
    # Two processes of 1 piece each read, step by step, the pieces one process of 2 reads.
    ranks = [PieceLoader(data, 1, pad_id=pad_id, seed=1, rank=rank, world_size=2) for rank in (0, 1)]
    for expected in reference[:5]:
        assert _split(expected) == [piece for rank in ranks for piece in _split(next(rank))]


def _config(data, run_dir, **changes):
    values = dict(run_dir=str(run_dir), data=data, base_model="stories260K", budget_tokens=12 * 4 * 60,
                  batch_size=4, checkpoint_every=4, batching="pieces")
    values.update(changes)
    return TrainConfig(**values)


def _plan(run_dir):
    return json.loads((Path(run_dir) / "plan.json").read_text())


@pytest.mark.slow
def test_a_run_of_pieces_trains_as_slamkits_trainer_over_its_flattening_collator(data, tmp_path):
    """slamkit's SIMS recipe (`data.packing: true`): the HF Trainer takes `per_device_train_batch_size` dataset items
    at a time through `DataCollatorWithFlattening`, and SLAMTrainer counts as tokens seen the labels that are not
    -100. Given simslm's documents in simslm's order, the same initial model and slamkit's optimiser and schedule,
    it must log simslm's losses step for step, and have seen the tokens simslm counts."""
    import torch
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    from simslm.train.build import build_model

    config = _config(data, tmp_path / "run", checkpoint_every=100, attention="sdpa")
    train(config)
    plan = _plan(tmp_path / "run")
    steps = plan["total_steps"]
    assert plan["batching"] == "pieces" and steps == 12
    vocabulary = Vocabulary.load(Path(data) / "tokenizer")
    loader = PieceLoader(data, config.batch_size, pad_id=vocabulary.pad_id, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(config, len(vocabulary), int(loader.index["context_length"]), "cpu", vocabulary)

    class Documents(torch.utils.data.IterableDataset):  # simslm's documents in simslm's order, one item each
        def __iter__(self):
            for _ in range(steps):
                for piece in _split(next(loader)):
                    yield {"input_ids": list(piece)}

    logged, seen = [], []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append(logs["loss"])

    class SlamkitCount(Trainer):  # SLAMTrainer.training_step's count of tokens seen
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append(int((inputs["labels"] != -100).sum()) + (seen[-1] if seen else 0))
            return super().training_step(model, inputs, num_items_in_batch)

    arguments = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=config.batch_size,
                                  max_steps=steps, learning_rate=5e-4, lr_scheduler_type="cosine_with_min_lr",
                                  lr_scheduler_kwargs={"min_lr": 5e-5}, warmup_steps=0.01, max_grad_norm=0.5,
                                  weight_decay=0.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                                  seed=config.seed, disable_tqdm=True, dataloader_num_workers=0)
    SlamkitCount(model=model, args=arguments, train_dataset=Documents(), callbacks=[Losses()],
                 data_collator=DataCollatorWithFlattening(return_tensors="pt")).train()
    assert len(logged) == steps
    np.testing.assert_allclose(_losses(tmp_path / "run"), logged, rtol=1e-5)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["tokens"] for m in metrics] == seen
    result = RunResult.load(tmp_path / "run")
    assert result.tokens == seen[-1] and result.flops == seen[-1] * plan["flops_per_token"]["all_params"]
    assert len(set(np.diff([0, *seen]))) > 1  # a step holds as many tokens as its documents
    # The plan's steps come from the mean document; what was seen lands near the budget.
    assert abs(result.tokens / config.budget_tokens - 1) < 0.25


@pytest.mark.slow
def test_pieces_train_alike_in_one_row_and_in_rows_of_the_context(data, tmp_path, monkeypatch):
    """SDPA takes pieces in rows of the context; flash-attn and flex attention (CUDA only) take them in one row.
    Laid out either way, the documents and so the losses are the same."""
    import simslm.train.loop as train_module

    train(_config(data, tmp_path / "rows", attention="sdpa"))
    monkeypatch.setattr(train_module, "ROW_FREE_KERNELS", ("sdpa",))
    train(_config(data, tmp_path / "one-row", attention="sdpa"))
    np.testing.assert_allclose(_losses(tmp_path / "one-row"), _losses(tmp_path / "rows"), rtol=1e-5)
    assert RunResult.load(tmp_path / "one-row").tokens == RunResult.load(tmp_path / "rows").tokens


@pytest.mark.slow
def test_a_run_of_pieces_killed_mid_way_resumes_bit_for_bit(data, tmp_path, train_stopped_at):
    train(_config(data, tmp_path / "whole"))
    stopped = _config(data, tmp_path / "stopped")
    train_stopped_at(stopped, 6)
    assert not (tmp_path / "stopped" / "result.json").exists()
    train(stopped)
    assert _losses(tmp_path / "stopped") == _losses(tmp_path / "whole")
    whole, again = ([{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_sec", "mfu")}
                     for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                    for run in ("whole", "stopped"))
    assert again == whole  # the tokens seen too, counted on from the checkpoint's
    assert RunResult.load(tmp_path / "stopped").tokens == RunResult.load(tmp_path / "whole").tokens


@pytest.mark.slow
def test_pieces_over_two_processes_train_as_one_process(data, tmp_path):
    single, parallel = _one_process_and_torchrun(data, tmp_path, shared={"batching": "pieces"})
    assert _plan(single)["total_steps"] == _plan(parallel)["total_steps"]
    assert np.allclose(_losses(parallel), _losses(single), rtol=1e-4)
    tokens = [[json.loads(line)["tokens"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (single, parallel)]
    assert tokens[0] == tokens[1]

