import math
from dataclasses import replace

import numpy as np
import pytest

from simslm.sequences.build import BuildConfig, build_sequences, mix_streams, parse_mix
from simslm.sequences.interleave import (
    INTERLEAVERS,
    MARKER,
    SPEECH,
    Sample,
    SkipSample,
    build_interleaved,
    fixed_spans,
    poisson_spans,
    random_words,
    sample_rng,
    whole_utterance,
)
from simslm.sequences.loader import PackedLoader
from simslm.sequences.show import rebuild_sample, render_sample, stats
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech.manifest import Word, read_manifest, write_manifest
from simslm.units.extract import read_units


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.build("stories260K", 32)


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
    with pytest.raises(ValueError, match="already has unit tokens"):
        Vocabulary.build(str(tmp_path), 32)  # extending twice would duplicate the units


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
    spans = fixed_spans(1000, rng, span_length=4, start_probability=0.05)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([0], spans.astype(int), [0])))))[::2]
    assert runs.min() >= 4


@pytest.fixture(scope="module")
def corpus(extracted):
    config, _, _ = extracted
    units = {u.id: u for u in read_units(config.out)}
    utterances = [u for u in read_manifest(config.manifest) if u.words and u.id in units]
    return utterances, units


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


def _build(extracted, tmp_path, **changes):
    config, _, _ = extracted
    options = dict(out=str(tmp_path / "seq"), manifest=config.manifest, units=config.out,
                   text_corpus="tinystories-sample", context_length=256, num_epochs=2)
    options.update(changes)
    return build_sequences(BuildConfig(**options)), options["out"]


def test_build_mixes_streams_by_token_share_and_packs_with_reopening_markers(extracted, tmp_path):
    index, out = _build(extracted, tmp_path, mix="interleaved=0.5,speech=0.25,text=0.25")
    vocabulary = Vocabulary.load(f"{out}/tokenizer")
    for entry in index["epochs"]:
        taken = entry["tokens_by_stream"]
        assert abs(taken["text"] / sum(taken.values()) - 0.25) < 0.05  # text samples are small: a close share
        chunks = np.load(f"{out}/epoch-{entry['epoch']:03d}/{entry['shards'][0]}")
        assert chunks.dtype == np.uint32 and chunks.shape[1] == 256
        # Every chunk opens with BOS or a modality marker.
        openers = {vocabulary.bos_id, vocabulary.speech_id, vocabulary.text_id}
        assert all(int(chunk[0]) in openers for chunk in chunks)
        counts = entry["token_counts"]
        assert counts["speech"] + counts["text"] + counts["marker"] == entry["num_chunks"] * 256 + counts["dropped"]
    rows = stats(out)
    assert 0.3 <= rows[0]["interleaved_speech_word_share"] < 0.6
    assert rows[0]["skipped"] == {"no units extracted": 2}  # the empty and the corrupt file


def test_mixing_meets_token_shares_within_half_a_sample():
    def stream(name, lengths):
        return [Sample(id=f"{name}{i}", tokens=np.zeros(n, np.uint32), kinds=np.zeros(n, np.uint8))
                for i, n in enumerate(lengths)]

    samples = {"interleaved": stream("i", [100] * 50), "speech": stream("s", [37] * 400),
               "text": stream("t", [11] * 2000)}
    chosen, taken = mix_streams(samples, {"interleaved": 0.5, "speech": 0.3, "text": 0.2})
    assert taken["interleaved"] == 5000  # the scarcest stream relative to its share is used whole
    assert abs(taken["speech"] - 3000) <= 37 / 2 and abs(taken["text"] - 2000) <= 11 / 2
    assert sum(len(s.tokens) for s in chosen) == sum(taken.values())
    with pytest.raises(ValueError, match="not built"):
        parse_mix("audio=1", ["text"])


def test_bad_utterances_are_skipped_and_counted(extracted, tmp_path):
    config, _, _ = extracted
    good = [u for u in read_manifest(config.manifest) if u.id not in ("empty", "corrupt")]
    words = good[0].words
    bad = [
        replace(good[0], id=good[1].id, transcript=good[1].transcript + " extra words"),        # mismatch
        replace(good[2], words=words[:-1] + (Word(word=words[-1].word, start_sec=500.0, end_sec=501.0),),
                transcript=good[0].transcript),                                                 # past the end
        replace(good[3], words=()),                                                             # empty
    ]
    manifest = tmp_path / "bad.jsonl"
    write_manifest(manifest, [good[0], *bad])
    index, _ = _build(extracted, tmp_path, manifest=str(manifest), streams="interleaved", num_epochs=1)
    skipped = index["epochs"][0]["skipped"]
    assert skipped == {"word timings do not match the transcript": 1, "empty utterance": 1,
                       "word timings past the end of the audio": 1} and index["epochs"][0]["samples_by_stream"]["interleaved"] == 1


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


def test_a_failed_build_leaves_nothing_behind(extracted, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr("simslm.sequences.build.pack", explode)
    with pytest.raises(RuntimeError):
        _build(extracted, tmp_path)
    assert not (tmp_path / "seq").exists()


def test_loader_resumes_at_exactly_the_next_batch(extracted, tmp_path):
    _, out = _build(extracted, tmp_path, context_length=64, num_epochs=2)
    reference = PackedLoader(out, batch_size=3, seed=5)
    per_epoch = reference.batches_per_epoch()
    uninterrupted = [next(reference) for _ in range(2 * per_epoch + 4)]  # runs past two epochs
    first = PackedLoader(out, batch_size=3, seed=5)
    for _ in range(per_epoch + 2):
        next(first)
    state = first.state_dict()
    resumed = PackedLoader(out, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    for expected in uninterrupted[per_epoch + 2:]:
        assert np.array_equal(next(resumed), expected)
    assert not np.array_equal(uninterrupted[0], uninterrupted[per_epoch])  # a new order each epoch


def test_ranks_split_each_global_batch(extracted, tmp_path):
    _, out = _build(extracted, tmp_path, context_length=64, num_epochs=1)
    ranks = [PackedLoader(out, batch_size=2, rank=r, world_size=2) for r in range(2)]
    seen = [np.concatenate([next(loader) for _ in range(ranks[0].batches_per_epoch())]) for loader in ranks]
    rows = {tuple(row) for part in seen for row in part}
    assert len(rows) == sum(len(part) for part in seen)  # no chunk read twice


def test_render_shows_words_of_speech_spans(extracted, tmp_path):
    _, out = _build(extracted, tmp_path, num_epochs=1)
    config, _, _ = extracted
    utterance = next(u for u in read_manifest(config.manifest) if u.words)
    sample, vocabulary = rebuild_sample(out, utterance.id)
    shown = render_sample(sample, vocabulary)
    assert "<speech> [" in shown and "units:" in shown and "<text>" in shown
    assert utterance.words[0].word in shown
