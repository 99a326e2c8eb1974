import math
from dataclasses import replace

import numpy as np
import pytest

from simslm.sequences.interleave import (
    INTERLEAVERS,
    MARKER,
    SPEECH,
    SkipSample,
    build_interleaved,
    fixed_spans,
    poisson_spans,
    random_words,
    sample_rng,
    whole_utterance,
)


@pytest.mark.parametrize("num_words", [1, 5, 12, 40, 200])
def test_poisson_makes_at_least_eta_of_the_words_speech(num_words):
    for seed in range(50):
        mask = poisson_spans(num_words, np.random.default_rng(seed), speech_ratio=0.3)
        assert mask.sum() >= math.ceil(0.3 * num_words)

def test_poisson_overshoots_on_short_utterances_and_not_on_long_ones():
    share = lambda n: np.mean([poisson_spans(n, np.random.default_rng(s)).mean() for s in range(300)])  # noqa: E731
    assert share(12) > 0.45  # one 10-word span already covers most of 12 words
    assert 0.3 <= share(400) < 0.36

def test_other_interleaving_methods():
    rng = np.random.default_rng(0)
    assert set(INTERLEAVERS) == {"poisson", "span", "random", "utterance"}
    whole = [whole_utterance(20, np.random.default_rng(s)) for s in range(40)]
    assert all(mask.all() or not mask.any() for mask in whole) and 5 < sum(m.all() for m in whole) < 35
    assert abs(random_words(10000, rng, speech_ratio=0.3).mean() - 0.3) < 0.02
    spans = fixed_spans(1000, rng, span_length=4, span_start_probability=0.05)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([0], spans.astype(int), [0])))))[::2]
    assert runs.min() >= 4

def test_speech_spans_carry_only_units_inside_their_words_and_markers_open_every_run(corpus, vocabulary):
    utterances, units = corpus
    encode = vocabulary.encode_texts
    for utterance in utterances:
        mask = poisson_spans(len(utterance.words), sample_rng(0, utterance.id, 0))
        sample = build_interleaved(utterance, units[utterance.id], vocabulary, mask, encode)
        unit_units = units[utterance.id]
        midpoints = unit_units.start_times_sec() + unit_units.durations / (2 * unit_units.frame_rate_hz)
        assert sample.num_speech_words == mask.sum() >= math.ceil(0.3 * len(utterance.words))
        modalities = [run.modality for run in sample.runs]
        assert all(a != b for a, b in zip(modalities, modalities[1:]))  # runs alternate
        marker_positions = set(np.flatnonzero(np.isin(sample.tokens, [vocabulary.speech_id, vocabulary.text_id])))
        assert marker_positions == {run.first_token for run in sample.runs}  # markers exactly at switches
        for run in sample.runs:
            body = sample.tokens[run.first_token + 1:run.end_token]
            is_unit = vocabulary.is_unit(body)
            if run.modality == SPEECH:
                assert sample.tokens[run.first_token] == vocabulary.speech_id and is_unit.all()
                start = utterance.words[run.first_word].start_sec
                end = utterance.words[run.end_word - 1].end_sec
                inside = (midpoints >= start) & (midpoints < end)
                assert np.array_equal(body - vocabulary.unit_offset, unit_units.units[inside])
            else:
                assert sample.tokens[run.first_token] == vocabulary.text_id and not is_unit.any()
        assert (sample.kinds[list(marker_positions)] == MARKER).all()

def test_a_sample_is_rebuilt_from_seed_id_and_epoch_and_changes_across_epochs(corpus, vocabulary):
    utterances, units = corpus
    utterance = max(utterances, key=lambda u: len(u.words))
    encode = vocabulary.encode_texts

    def build(epoch):
        mask = poisson_spans(len(utterance.words), sample_rng(0, utterance.id, epoch))
        return build_interleaved(utterance, units[utterance.id], vocabulary, mask, encode).tokens

    assert np.array_equal(build(0), build(0))
    assert not np.array_equal(build(0), build(1))

def test_a_speech_span_with_no_units_under_its_words_is_refused(corpus, vocabulary):
    utterances, units = corpus
    utterance = utterances[0]
    first_second = units[utterance.id]
    keep = np.cumsum(first_second.durations) <= 25  # units of the first second only
    truncated = replace(first_second, units=first_second.units[keep], durations=first_second.durations[keep])
    speech_at_the_end = np.zeros(len(utterance.words), bool)
    speech_at_the_end[-3:] = True
    with pytest.raises(SkipSample, match="no units under its words"):
        build_interleaved(utterance, truncated, vocabulary, speech_at_the_end,
                                    vocabulary.encode_texts)
