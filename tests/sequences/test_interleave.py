"""Interleaving as slamkit's InterleavingTokeniser defines it (SIMS setting), checked from the definitions."""

import math
from dataclasses import replace

import numpy as np
import pytest

from simslm.sequences.interleave import (
    INTERLEAVERS,
    MARKER,
    SPEECH,
    TEXT,
    SkipSample,
    build_interleaved,
    fixed_spans,
    interleaved_string,
    poisson_spans,
    random_words,
    sample_rng,
    single_modality_sample,
    span_units,
    whole_utterance,
)
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech.manifest import Utterance, Word
from simslm.units.folder import UtteranceUnits


class RecordingRng:
    """A generator that records the starts and lengths it hands out, to replay the span drawing."""

    def __init__(self, seed):
        self.rng, self.draws = np.random.default_rng(seed), []

    def choice(self, candidates):
        self.draws.append(["start", int(self.rng.choice(candidates)), sorted(int(c) for c in candidates)])
        return self.draws[-1][1]

    def poisson(self, lam):
        self.draws[-1].append(int(self.rng.poisson(lam)))
        return self.draws[-1][-1]


@pytest.mark.parametrize("num_words", [1, 3, 12, 40, 200])
def test_poisson_spans_follow_slamkits_rules_draw_by_draw(num_words):
    for seed in range(40):
        rng = RecordingRng(seed)
        mask = poisson_spans(num_words, rng, poisson_lambda=10.0, speech_ratio=0.3)
        chosen, covered, eligible = [], np.zeros(num_words, bool), set(range(num_words))
        for _, start, candidates, length in rng.draws:
            assert candidates == sorted(eligible)  # starts come from the eligible words only
            end = min(start + length, num_words)
            if covered[start:end].any():
                continue  # an overlapping draw is rejected and changes nothing
            covered[start:end] = True
            chosen.append((start, end))
            eligible -= set(range(start, end)) | ({end} if end < num_words else set())
        # No chosen span starts where an earlier one ends; the mask is their union; the
        # drawing stops once ceil(eta * n) words are covered or no start is left.
        assert all(start not in {end for _, end in chosen[:k]} for k, (start, _) in enumerate(chosen))
        assert np.array_equal(mask, covered)
        target = math.ceil(0.3 * num_words)
        assert covered.sum() >= target or not eligible
        assert sum(end - start for start, end in chosen[:-1]) < target


def test_poisson_spans_are_shorter_than_merged_draws_would_be():
    """Rejecting overlaps (slamkit) keeps runs near λ; merging them (simslm before) made them ~20% longer."""
    runs = []
    for seed in range(400):
        mask = poisson_spans(200, np.random.default_rng(seed))
        edges = np.diff(np.concatenate(([0], mask.astype(int), [0])))
        runs.extend(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    assert 9.0 < np.mean(runs) < 10.6 and 0.3 <= np.mean([poisson_spans(200, np.random.default_rng(s)).mean()
                                                           for s in range(100)]) < 0.36


def test_other_interleaving_methods():
    rng = np.random.default_rng(0)
    assert set(INTERLEAVERS) == {"poisson", "span", "random", "utterance"}
    assert INTERLEAVERS["poisson"].parameters == ("poisson_lambda", "speech_ratio")
    whole = [whole_utterance(20, np.random.default_rng(s)) for s in range(40)]
    assert all(mask.all() or not mask.any() for mask in whole) and 5 < sum(m.all() for m in whole) < 35
    assert abs(random_words(10000, rng, speech_ratio=0.3).mean() - 0.3) < 0.02
    spans = fixed_spans(1000, rng, span_length=4, span_start_probability=0.05)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([0], spans.astype(int), [0])))))[::2]
    assert runs.min() >= 4


def test_every_method_option_is_a_build_option():
    import dataclasses

    from simslm.sequences.build import BuildConfig

    fields = {field.name for field in dataclasses.fields(BuildConfig)}
    for method in INTERLEAVERS.values():
        assert set(method.parameters) <= fields, method.name


def test_a_span_carries_the_units_whose_end_time_falls_in_its_words():
    units = UtteranceUnits(id="u", units=np.arange(6), durations=np.array([1, 2, 1, 3, 1, 2]), frame_rate_hz=25.0)
    ends = np.cumsum(units.durations) * 0.04  # 0.04 0.12 0.16 0.28 0.32 0.40
    for start, end in ((0.0, 0.12), (0.05, 0.30), (0.12, 0.16), (0.13, 0.15), (0.3, 1.0)):
        expected = [u for u, e in zip(units.units, ends) if start <= e + 1e-12 and e <= end + 1e-12]
        assert span_units(units, start, end).tolist() == expected, (start, end)
    # The midpoint rule takes a unit with the word it is mostly inside.
    assert span_units(units, 0.05, 0.30, "midpoint").tolist() == [1, 2, 3]


TRANSCRIPT = 'Once upon a time, there was a girl. "Hello," she said to the big dog.'


def _utterance_and_units():
    words = TRANSCRIPT.split(" ")
    timed = tuple(Word(word=w.strip('".,'), start_sec=0.5 * i, end_sec=0.5 * i + 0.4) for i, w in enumerate(words))
    utterance = Utterance(id="u1", audio="u1.wav", sample_rate=16000, duration_sec=0.5 * len(words),
                          transcript=TRANSCRIPT, speaker="s", words=timed)
    num_frames = int(0.5 * len(words) * 25)
    units = UtteranceUnits(id="u1", units=np.arange(num_frames) % 32, durations=np.ones(num_frames, np.int32),
                           frame_rate_hz=25.0)
    return utterance, units


def _reference_string(utterance, units, mask):
    """The sample as slamkit's `_create_interleaved_text` writes it, from Whisper-style words
    (each carrying its leading space and trailing punctuation, joined with '')."""
    pieces = TRANSCRIPT.split(" ")
    chunks = [pieces[0]] + [" " + piece for piece in pieces[1:]]
    out = ""
    for i, (chunk, word) in enumerate(zip(chunks, utterance.words)):
        if i == 0 or mask[i] != mask[i - 1]:
            out += "<speech>" if mask[i] else "<text>"
        if not mask[i]:
            out += chunk
        elif i + 1 == len(chunks) or not mask[i + 1]:
            start = next(j for j in range(i, -1, -1) if j == 0 or not mask[j - 1])
            ends = np.cumsum(units.durations) * 0.04
            first = np.searchsorted(ends, utterance.words[start].start_sec, "left")
            last = np.searchsorted(ends, word.end_sec, "right")
            out += "".join(f"<unit_{u}>" for u in units.units[first:last])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("base", ["stories260K", "smollm2"])
def test_text_runs_keep_the_transcripts_spacing_and_tokenise_as_the_whole_string(base):
    from simslm.model import smollm2_gguf_path

    vocabulary = Vocabulary.build(str(smollm2_gguf_path()) if base == "smollm2" else base, 32)
    utterance, units = _utterance_and_units()
    space = "Ġ" if base == "smollm2" else "▁"  # byte-level BPE / SentencePiece word-initial space
    for seed in range(20):
        mask = poisson_spans(len(utterance.words), sample_rng(seed, utterance.id, 0))
        string = interleaved_string(utterance, units, vocabulary, mask)
        assert string == _reference_string(utterance, units, mask)
        sample = build_interleaved(utterance, units, vocabulary, mask)
        assert sample.tokens.tolist() == vocabulary.tokenizer(string, add_special_tokens=True)["input_ids"]
        for run in sample.runs:
            if run.modality == TEXT and run.first_word > 0:
                first_text = int(sample.tokens[run.first_token + 1])
                assert vocabulary.tokenizer.convert_ids_to_tokens(first_text).startswith(space), string


def test_markers_open_an_interleaved_sample_and_every_switch_only(vocabulary):
    utterance, units = _utterance_and_units()
    mask = np.zeros(len(utterance.words), bool)
    mask[3:6] = mask[9:] = True
    sample = build_interleaved(utterance, units, vocabulary, mask)
    markers = np.flatnonzero(np.isin(sample.tokens, [vocabulary.speech_id, vocabulary.text_id]))
    assert markers.tolist() == [run.first_token for run in sample.runs] and len(markers) == 4
    assert [run.modality for run in sample.runs] == [TEXT, SPEECH, TEXT, SPEECH]
    assert (sample.kinds[markers] == MARKER).all()
    # Speech-only and text-only samples carry no marker: only what the tokenizer adds itself.
    speech = single_modality_sample("s", vocabulary.encode_samples([vocabulary.unit_string(units.units)])[0],
                                    SPEECH, vocabulary, [])
    text = single_modality_sample("t", vocabulary.encode_samples([TRANSCRIPT])[0], TEXT, vocabulary, [])
    for single in (speech, text):
        assert not np.isin(single.tokens, [vocabulary.speech_id, vocabulary.text_id]).any()
    assert speech.tokens[speech.kinds == SPEECH].tolist() == (units.units + vocabulary.unit_offset).tolist()
    assert text.tokens.tolist() == vocabulary.tokenizer(TRANSCRIPT, add_special_tokens=True)["input_ids"]


def test_spans_of_real_utterances_carry_the_units_ending_under_their_words(corpus, vocabulary):
    utterances, units = corpus
    for utterance in utterances:
        mask = poisson_spans(len(utterance.words), sample_rng(0, utterance.id, 0))
        sample = build_interleaved(utterance, units[utterance.id], vocabulary, mask)
        ends = np.cumsum(units[utterance.id].durations) / units[utterance.id].frame_rate_hz
        assert sample.num_speech_words == mask.sum() >= math.ceil(0.3 * len(utterance.words))
        for run in sample.runs:
            body = sample.tokens[run.first_token + 1:run.end_token]
            if run.modality == SPEECH:
                start, end = utterance.words[run.first_word].start_sec, utterance.words[run.end_word - 1].end_sec
                inside = (ends >= start - 1e-9) & (ends <= end + 1e-9)
                assert np.array_equal(body - vocabulary.unit_offset, units[utterance.id].units[inside])
            else:
                assert not vocabulary.is_unit(body).any()


def test_a_sample_is_rebuilt_from_seed_id_and_epoch_and_changes_across_epochs(corpus, vocabulary):
    utterances, units = corpus
    utterance = max(utterances, key=lambda u: len(u.words))

    def build(epoch):
        mask = poisson_spans(len(utterance.words), sample_rng(0, utterance.id, epoch))
        return build_interleaved(utterance, units[utterance.id], vocabulary, mask).tokens

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
        build_interleaved(utterance, truncated, vocabulary, speech_at_the_end)


def test_an_unset_speech_ratio_takes_each_methods_own_default_as_slamkit_has_it():
    """slamkit's `random` makes each word speech with probability 0.5 whatever η is; poisson's η is SIMS's 0.3."""
    from simslm.sequences.build import BuildConfig

    unset = BuildConfig(out="o", tokenizer="t", manifest="m", units="u", streams=("interleaved",), method="random")
    assert INTERLEAVERS["random"].arguments(unset) == {}
    words = [INTERLEAVERS["random"].draw(1000, np.random.default_rng(seed), **INTERLEAVERS["random"].arguments(unset))
             for seed in range(20)]
    assert abs(np.mean(words) - 0.5) < 0.01
    poisson = [INTERLEAVERS["poisson"].draw(200, np.random.default_rng(seed)).mean() for seed in range(100)]
    assert 0.3 <= np.mean(poisson) < 0.36
    given = BuildConfig(out="o", tokenizer="t", manifest="m", units="u", streams=("interleaved",), method="random",
                        speech_ratio=0.2)
    assert INTERLEAVERS["random"].arguments(given) == {"speech_ratio": 0.2}  # a given η is used, as before
