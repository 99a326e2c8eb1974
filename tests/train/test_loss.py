"""Losses of packed rows: each document scored alone, the head in chunks, the step compiled."""

import numpy as np
import pytest

from simslm.sequences.vocabulary import Vocabulary
from simslm.train.loop import train
from tests.train.helpers import _config, _losses


def test_a_packed_batch_scores_each_document_as_if_it_were_alone():
    import contextlib

    import torch

    from simslm.model import build_family_model
    from simslm.sequences.build import pack
    from simslm.sequences.interleave import Sample
    from simslm.train.loss import _token_losses

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


@pytest.mark.slow
def test_cross_entropy_in_chunks_gives_the_same_training(data, tmp_path, monkeypatch):
    whole = train(_config(data, tmp_path / "whole", budget_tokens=4 * 4 * 64, validation_data=data))
    from simslm.train import loop as train_module

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

