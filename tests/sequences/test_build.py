from dataclasses import replace

import numpy as np
import pytest

from simslm.sequences.build import mix_streams, parse_mix
from simslm.sequences.interleave import Sample
from simslm.sequences.show import stats
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech.manifest import Word, read_manifest, write_manifest


def test_build_mixes_streams_by_token_share_and_packs_with_reopening_markers(build, extracted, tmp_path):
    index, out = build(mix=("interleaved=0.5", "speech=0.25", "text=0.25"))
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


def test_bad_utterances_are_skipped_and_counted(build, extracted, tmp_path):
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
    index, _ = build(manifest=str(manifest), streams=("interleaved",), num_epochs=1)
    skipped = index["epochs"][0]["skipped"]
    assert skipped == {"word timings do not match the transcript": 1, "empty utterance": 1,
                       "word timings past the end of the audio": 1} and index["epochs"][0]["samples_by_stream"]["interleaved"] == 1




def test_a_failed_build_leaves_nothing_behind(build, extracted, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr("simslm.sequences.build.pack", explode)
    with pytest.raises(RuntimeError):
        build()
    assert not (tmp_path / "seq").exists()






