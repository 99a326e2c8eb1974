import pytest

from simslm.sequences.vocabulary import VOCAB_FILE, Vocabulary


def test_vocabulary_extends_tok512_with_units_markers_and_a_fresh_pad(vocabulary):
    assert (vocabulary.unit_offset, len(vocabulary)) == (512, 512 + 32 + 3)
    assert vocabulary.tokenizer.convert_tokens_to_ids("<unit_31>") == 512 + 31
    assert vocabulary.pad_id not in range(512) and vocabulary.pad_id != vocabulary.tokenizer.eos_token_id
    import sentencepiece

    from simslm import assets

    model = sentencepiece.SentencePieceProcessor(
        model_file=str(assets.resolve("stories260K").file("tok512.model")))
    sentence = "Once upon a time, there was a little girl named Lily."
    assert vocabulary.tokenizer.encode(sentence, add_special_tokens=False) == model.encode(sentence)


def test_saved_tokenizer_round_trips_through_autotokenizer(vocabulary, tmp_path):
    from transformers import AutoTokenizer

    vocabulary.save(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "The dog<speech><unit_3><unit_7><text> ran home."
    assert reloaded.encode(text, add_special_tokens=False) == vocabulary.tokenizer.encode(text, add_special_tokens=False)
    assert reloaded.pad_token_id == vocabulary.pad_id and len(reloaded) == len(vocabulary)
    assert Vocabulary.load(tmp_path).speech_id == vocabulary.speech_id
    # Built on again (a speech LM trained on): the saved vocabulary itself, not extended twice.
    again = Vocabulary.build(str(tmp_path), vocabulary.num_units)
    assert len(again) == len(vocabulary) and again.mismatch(vocabulary) is None
    (tmp_path / VOCAB_FILE).unlink()  # unit tokens with no record of their layout: extending would duplicate them
    with pytest.raises(ValueError, match="already has unit tokens"):
        Vocabulary.build(str(tmp_path), vocabulary.num_units)


def test_any_hf_tokenizer_can_be_extended(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "the", "dog", "ran"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(tmp_path)
    extended = Vocabulary.build(str(tmp_path), 4)
    assert (extended.unit_offset, extended.bos_id) == (4, None)
    assert extended.tokenizer.encode("the dog ran", add_special_tokens=False) == [1, 2, 3]


def test_a_vocabulary_knows_whether_it_extends_a_given_base_tokenizer():
    from simslm.sequences.vocabulary import load_base_tokenizer

    vocabulary = Vocabulary.build("stories260K", 4)
    assert vocabulary.base_mismatch(load_base_tokenizer("stories260K")) is None
    grown = load_base_tokenizer("stories260K")
    grown.add_tokens(["<speech>"], special_tokens=True)  # e.g. a text-LM family's tokenizer, markers included
    assert "513 tokens, but the data's text tokens are 512" in vocabulary.base_mismatch(grown)
    other_bos = load_base_tokenizer("stories260K")
    other_bos.bos_token = "<unk>"
    assert "bos_token_id" in vocabulary.base_mismatch(other_bos)
