import pytest

from simslm.sequences.loader import read_index
from simslm.sequences.show import rebuild_sample, render_chunk, render_sample
from simslm.speech.manifest import read_manifest
from tests.sequences.conftest import epoch_documents


def test_render_shows_words_of_speech_spans(build, extracted):
    _, out = build(num_epochs=1)
    config, _, _ = extracted
    utterance = next(u for u in read_manifest(config.manifest) if u.words)
    sample, vocabulary = rebuild_sample(out, utterance.id)
    shown = render_sample(sample, vocabulary)
    assert "<speech> [" in shown and "units:" in shown and "<text>" in shown
    assert utterance.words[0].word in shown


def test_a_rows_padding_is_counted_not_printed_token_by_token(vocabulary):
    """`sequences show` of a row printed `<simslm_pad>` once for each of a row's pad tokens (89 in a row of 256)."""
    import numpy as np

    ids = vocabulary.tokenizer("Once upon a time")["input_ids"]
    row = np.array([vocabulary.text_id, *ids, vocabulary.speech_id, vocabulary.unit_offset + 3,
                    vocabulary.unit_offset + 3, *[vocabulary.pad_id] * 89])
    shown = render_chunk(row, vocabulary)
    assert shown.endswith("<speech> [2 units: 3 3] [89 padding]") and "Once upon a time" in shown
    assert "pad" not in render_chunk(row[:-89], vocabulary)


@pytest.mark.parametrize("span_draws", ["epoch", "once"])
def test_a_rebuilt_sample_is_the_one_its_epoch_holds(build, extracted, span_draws):
    # With --span-draws once every epoch takes the first epoch's spans: `show --sample --epoch 1` rebuilt spans of
    # its own that no epoch holds.
    _, out = build(streams=("interleaved",), num_epochs=2, span_draws=span_draws, context_length=1024)
    config, _, _ = extracted
    built = set(epoch_documents(out, read_index(out)["epochs"][1]))
    rebuilt = []
    for utterance in read_manifest(config.manifest):
        try:
            rebuilt.append(tuple(rebuild_sample(out, utterance.id, 1)[0].tokens.tolist()))
        except ValueError:  # the corpus's deliberately bad utterances (no units, no words)
            continue
    assert len(rebuilt) >= 4 and all(len(tokens) <= 1024 for tokens in rebuilt)  # none cut into pieces
    assert all(tokens in built for tokens in rebuilt)
    with pytest.raises(ValueError, match=r"2 epoch\(s\) were built \(0 to 1\); --epoch 2 is not one of them"):
        rebuild_sample(out, next(u for u in read_manifest(config.manifest) if u.words).id, 2)
