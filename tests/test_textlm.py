import json

import pytest
import torch

from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.vocabulary import Vocabulary
from simslm.textlm import TextLMConfig, family_tokenizer, pretrain_family
from simslm.train.loop import train
from simslm.train.plan import TrainConfig


@pytest.mark.slow
def test_family_pretrains_and_a_member_is_a_twist_source(extracted, tmp_path):
    corpus = tmp_path / "stories.txt"
    corpus.write_text("\n".join(["Once upon a time there was a cat. The cat liked to nap in the sun."] * 40) + "\n")
    family = pretrain_family(TextLMConfig(out=str(tmp_path / "family"), text_corpus=str(corpus), depths=(1, 2),
                                          tokens_per_parameter=0.1, context_length=32, batch_size=4))
    members = family["members"]
    assert [m["depth"] for m in members] == [1, 2] and members[0]["parameters"] < members[1]["parameters"]
    assert all(m["pretraining_flops"] == 6 * m["parameters"] * m["pretraining_tokens"] for m in members)
    assert json.loads((tmp_path / "family" / "family.json").read_text())["members"] == members
    # Re-running reuses finished members.
    assert pretrain_family(TextLMConfig(out=str(tmp_path / "family"), text_corpus=str(corpus), depths=(1, 2),
                                        tokens_per_parameter=0.1, context_length=32,
                                        batch_size=4))["members"][0]["pretraining_tokens"] == members[0]["pretraining_tokens"]
    # A finished member trained on other settings is refused, naming them, rather than kept as this family's.
    with pytest.raises(ValueError, match=r"other settings \(budget_tokens \d+, not \d+\): this family"):
        pretrain_family(TextLMConfig(out=str(tmp_path / "family"), text_corpus=str(corpus), depths=(1, 2),
                                     tokens_per_parameter=0.2, context_length=32, batch_size=4))

    # TWIST from the pretrained member: units are added after its vocabulary, which
    # already holds <text>, so every pretrained row (the markers' included) is kept.
    source = str(tmp_path / "family" / members[1]["model_dir"])
    config, _, _ = extracted
    data = tmp_path / "slm-data"
    build_sequences(BuildConfig(out=str(data), tokenizer=source, manifest=config.manifest,
                                                    units=config.out, streams=("interleaved",), context_length=32))
    vocabulary = Vocabulary.load(data / "tokenizer")
    from transformers import AutoModelForCausalLM

    pretrained = AutoModelForCausalLM.from_pretrained(source)
    old_rows = pretrained.get_input_embeddings().weight.shape[0]
    assert vocabulary.unit_offset == old_rows and vocabulary.text_id < old_rows
    run = tmp_path / "slm"
    train(TrainConfig(run_dir=str(run), data=str(data), base_model=source, budget_tokens=2 * 4 * 32, batch_size=4,
                      lr=1e-12, lr_min=1e-12))
    slm = AutoModelForCausalLM.from_pretrained(run / "model")
    assert slm.get_input_embeddings().weight.shape[0] == len(vocabulary)
    assert torch.allclose(slm.get_input_embeddings().weight[:old_rows], pretrained.get_input_embeddings().weight,
                          atol=1e-6)

    # Sequences built with the bare base tokenizer would put units on the family's marker rows:
    # refused, naming the tokenizer to use.
    bare = tmp_path / "bare-data"
    build_sequences(BuildConfig(out=str(bare), tokenizer="stories260K", manifest=config.manifest,
                                units=config.out, streams=("interleaved",), context_length=32))
    with pytest.raises(ValueError, match="another tokenizer") as refused:
        train(TrainConfig(run_dir=str(tmp_path / "wrong"), data=str(bare), base_model=source,
                          budget_tokens=2 * 4 * 32, batch_size=4))
    assert "515 tokens, but the data's text tokens are 512" in str(refused.value)
    assert family_tokenizer(tmp_path / "family") == tmp_path / "family" / json.loads(
        (tmp_path / "family" / "family.json").read_text())["tokenizer"]
    assert (tmp_path / "family" / members[0]["model_dir"] / "model.safetensors").exists()  # relative to the family
    # A moved family is still finished: its members' data is the family's own folder, wherever that is.
    (tmp_path / "family").rename(tmp_path / "moved")
    assert pretrain_family(TextLMConfig(out=str(tmp_path / "moved"), text_corpus=str(corpus), depths=(1, 2),
                                        tokens_per_parameter=0.1, context_length=32,
                                        batch_size=4))["members"][1]["final_loss"] == members[1]["final_loss"]


def test_a_family_record_without_its_config_is_named(tmp_path):
    from simslm.textlm import family_aspect_ratio

    assert family_aspect_ratio("") == 32 and family_aspect_ratio(tmp_path) == 32  # no folder, or no record yet
    (tmp_path / "family.json").write_text('{"members": []}')
    with pytest.raises(ValueError, match=f"{tmp_path / 'family.json'}: not a family record"):
        family_aspect_ratio(tmp_path)
