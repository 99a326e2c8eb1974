"""The model a run trains: its base and vocabulary, attention kernels, and packed documents kept apart."""

import time
from pathlib import Path

import numpy as np
import pytest

from simslm.sequences.vocabulary import Vocabulary
from simslm.train.loop import train
from simslm.train.plan import TrainConfig
from tests.train.helpers import _config, _losses


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
    from simslm.train.loss import _loss_and_totals, to_device

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
            return _loss_and_totals(model, *to_device(batch, "cpu", one_row), kinds, contextlib.nullcontext())[1]

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
    from simslm.train.build import check_documents_apart, documents_moved

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

    import simslm.train.build as train_module

    def cannot(*arguments, **options):
        raise RuntimeError("no layer to cut")

    monkeypatch.setattr(train_module, "documents_moved", cannot)
    train_module.check_documents_apart(transformers.LlamaConfig(), "sdpa", "cpu", False, False)
    assert capsys.readouterr().err == ("simslm train: warning: could not check that sdpa keeps packed documents apart "
                                       "in llama (RuntimeError: no layer to cut)\n")


@pytest.mark.slow
def test_flash_attention_is_given_every_batch_as_one_row_and_trains_as_sdpa(data, tmp_path, monkeypatch):
    """`train` gives a kernel of `ONE_ROW_KERNELS` each batch of training and validation as one row. Given as rows,
    the stand-in lets the documents of a row see one another, and the run is refused before its folder exists."""
    import simslm.train.build as build_module
    import simslm.train.loop as train_module
    from simslm.config import ConfigError

    seen = _register_varlen_like()
    config = dict(budget_tokens=6 * 4 * 64, validation_data=data, num_validation_batches=2, checkpoint_every=1000)
    reference = train(_config(data, tmp_path / "sdpa", attention="sdpa", **config))
    for module in (train_module, build_module):  # the run's kernel, and the one its model is built with
        monkeypatch.setattr(module, "attention_kernel", lambda *arguments, **options: "varlen_like")
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


def test_the_attention_kernel_falls_back_to_sdpa_without_flash_attn_or_cuda():
    import importlib.util

    from simslm.train.build import attention_kernel

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
    from simslm.train.build import attention_kernel

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


def test_a_skeleton_built_first_in_its_process_finds_its_fp32_attention_registered(monkeypatch, tmp_path):
    """An FSDP process other than the main one builds its model as a skeleton before anything else in it has
    registered simslm's `sdpa_fp32` with transformers; set on the skeleton unregistered, transformers refuses it."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from simslm import model as model_lib
    from simslm.train.build import FP32_ATTENTION, model_skeleton

    for interface in (AttentionInterface, AttentionMaskInterface):  # as in a fresh process
        monkeypatch.delitem(interface._global_mapping, FP32_ATTENTION, raising=False)
    assert FP32_ATTENTION not in ALL_ATTENTION_FUNCTIONS
    model_config = model_lib.build_family_model(2, 300, seed=0, context_length=64).config
    config = TrainConfig(run_dir=tmp_path / "run", data=tmp_path / "data", precision="bf16-weights",
                         budget_tokens=1000)
    skeleton = model_skeleton(model_config, config, "cpu")
    assert skeleton.config._attn_implementation == FP32_ATTENTION
    assert next(skeleton.parameters()).device.type == "meta"


@pytest.mark.slow
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


def test_bf16_weights_grow_the_vocabulary_as_slamkit_does(data, tmp_path):
    """slamkit's `UnitLM` loads the base model in bf16, then `resize_token_embeddings` (mean-resizing) gives the new
    rows the mean of the bf16 rows; the fp32 mean rounded afterwards differs in some entries by a bf16 step."""
    import torch

    from simslm import model as model_lib
    from simslm.train.build import build_model, weights_to

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

