from simslm.sequences.show import rebuild_sample, render_sample
from simslm.speech.manifest import read_manifest


def test_render_shows_words_of_speech_spans(build, extracted):
    _, out = build(num_epochs=1)
    config, _, _ = extracted
    utterance = next(u for u in read_manifest(config.manifest) if u.words)
    sample, vocabulary = rebuild_sample(out, utterance.id)
    shown = render_sample(sample, vocabulary)
    assert "<speech> [" in shown and "units:" in shown and "<text>" in shown
    assert utterance.words[0].word in shown
