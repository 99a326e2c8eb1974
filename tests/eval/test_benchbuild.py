from pathlib import Path

import numpy as np
import pytest

from simslm import storage
from simslm.eval.benchbuild import (
    SLAMKIT_SEPARATORS,
    SLAMKIT_SUBFOLDERS,
    BenchBuildConfig,
    _letter_runs,
    blimp_pairs,
    build_benchmark,
    lexical_items,
    split_sentences,
    story_key,
    training_stories,
)
from simslm.eval.layouts import BenchError, load
from simslm.speech import audio
from simslm.speech.synth import read_corpus


def test_split_sentences_keeps_closing_quotes():
    assert split_sentences('Tom said, "Hi!" Then he left. "Bye," said Sue.') == [
        'Tom said, "Hi!"', "Then he left.", '"Bye," said Sue.']


def test_offline_tsc_uses_held_out_stories_only_and_refuses_training_ones(tmp_path):
    meta = build_benchmark(BenchBuildConfig(
        kind="tsc", out=str(tmp_path / "tsc"), source="tinystories-sample[2000:2008]",
        exclude="tinystories-sample[:2000]", num_items=5, voices="heldout", num_workers=2))
    assert meta["layout"] == "cross-modal" and meta["num_items"] == 5 and "not the published" in meta["note"]
    _, pairs = load(tmp_path / "tsc", "S")
    training = training_stories("tinystories-sample[:2000]")
    held_out = {index: value for index, value, _ in read_corpus("tinystories-sample[2000:2008]")}
    for pair in pairs:
        line = int(pair.id.split("-")[1])
        assert line in held_out and story_key(held_out[line]) not in training
        context, ending = (tmp_path / "tsc" / "audio" / f"{pair.id}_{r}.txt" for r in ("mutual", "correct"))
        assert story_key(context.read_text() + " " + ending.read_text()) in story_key(
            held_out[line])  # context + right ending = the story's last sentences
        wrong = (tmp_path / "tsc" / "audio" / f"{pair.id}_incorrect.txt").read_text().strip()
        assert wrong != ending.read_text().strip()
    with pytest.raises(BenchError, match="are in the training data"):
        build_benchmark(BenchBuildConfig(
            kind="tsc", out=str(tmp_path / "bad"), source="tinystories-sample[1990:2003]",
            exclude="tinystories-sample[:2000]", num_items=3))


def test_a_sequences_folder_excludes_the_stories_it_was_built_from(speech_sequences, tmp_path):
    """`--exclude SEQUENCES` was refused ("a folder, not a file"): the training data is what a user has at hand."""
    from simslm.sequences.build import BuildConfig, build_sequences, speech_manifest
    from simslm.speech.manifest import iter_utterances

    built = tmp_path / "seq"
    build_sequences(BuildConfig(out=str(built), streams=("text",), text_corpus="tinystories-sample[1995:2003]",
                                context_length=256))
    assert training_stories(str(built)) == training_stories("tinystories-sample[1995:2003]")
    spoken = {story_key(u.transcript) for u in iter_utterances(speech_manifest(speech_sequences))}
    assert spoken and training_stories(speech_sequences) == spoken
    with pytest.raises(BenchError, match=f"are in the training data \\({built}\\)"):
        build_benchmark(BenchBuildConfig(kind="tsc", out=str(tmp_path / "bad"), source="tinystories-sample[2000:2003]",
                                         exclude=str(built), num_items=3))


def test_a_sequences_folder_finds_its_text_corpus_from_anywhere_and_after_a_move(tmp_path, monkeypatch):
    """The index kept the corpus path as typed (`corpus.jsonl[0:6]`, relative to where the build ran), so
    `--exclude SEQUENCES` from any other folder was refused as "not found from here", and so was the project moved
    whole. It is now recorded relative to the folder, with its slice."""
    import json
    import os
    import shutil

    from simslm.sequences.build import BuildConfig, build_sequences, text_corpus

    if os.environ.get("SIMSLM_MIRROR"):  # CI's is relative to the checkout, which this test leaves
        monkeypatch.setenv("SIMSLM_MIRROR", str(Path(os.environ["SIMSLM_MIRROR"]).resolve()))
    project = tmp_path / "project"
    project.mkdir()
    stories = [value for _, value, _ in read_corpus("tinystories-sample[1995:2005]")]
    (project / "corpus.jsonl").write_text("".join(json.dumps({"text": story}) + "\n" for story in stories))
    monkeypatch.chdir(project)
    build_sequences(BuildConfig(out="seq", streams=("text",), text_corpus="corpus.jsonl[0:6]", context_length=256))
    expected = {story_key(story) for story in stories[:6]}
    monkeypatch.chdir(tmp_path)
    assert training_stories("project/seq") == expected
    shutil.move(project, tmp_path / "moved")
    assert text_corpus(tmp_path / "moved" / "seq") == f"{tmp_path / 'moved' / 'seq' / '..' / 'corpus.jsonl'}[0:6]"
    assert training_stories(str(tmp_path / "moved" / "seq")) == expected


def test_bench_json_finds_what_the_build_read_after_a_move(tmp_path, monkeypatch):
    """bench.json's config keeps --source and --exclude as typed (relative to where `bench build` ran), which name
    nothing from elsewhere or once the project moved; its inputs record them relative to the benchmark's folder,
    with their slices, as a sequences folder records its text corpus."""
    import json
    import os
    import shutil

    from simslm.speech.corpus import placed_corpus

    if os.environ.get("SIMSLM_MIRROR"):  # CI's is relative to the checkout, which this test leaves
        monkeypatch.setenv("SIMSLM_MIRROR", str(Path(os.environ["SIMSLM_MIRROR"]).resolve()))
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    stories = [value for _, value, _ in read_corpus("tinystories-sample[2000:2010]")]
    for name, lines in (("held.jsonl", stories[:6]), ("train.jsonl", stories[6:])):
        (project / "data" / name).write_text("".join(json.dumps({"text": story}) + "\n" for story in lines))
    monkeypatch.chdir(project)
    meta = build_benchmark(BenchBuildConfig(kind="tsc", out="bench/tsc", source="data/held.jsonl[1:5]",
                                            exclude="data/train.jsonl, tinystories-sample[:10]", num_items=2,
                                            num_workers=1))
    assert meta["config"]["source"] == "data/held.jsonl[1:5]"  # as given
    assert meta["inputs"]["source"] == {"relative": "../../data/held.jsonl", "slice": "[1:5]",
                                        "absolute": str(project.resolve() / "data" / "held.jsonl")}
    assert [entry["relative"] for entry in meta["inputs"]["exclude"]] == ["../../data/train.jsonl"]  # not the asset
    assert "counted_in" not in meta["inputs"]
    shutil.move(project, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "moved" / "bench" / "tsc"
    recorded = json.loads((folder / "bench.json").read_text())["inputs"]
    assert [value for _, value, _ in read_corpus(placed_corpus(recorded["source"], folder))] == stories[1:5]
    excluded = storage.placed_path(recorded["exclude"][0], folder)
    assert excluded.resolve() == (tmp_path / "moved" / "data" / "train.jsonl")


def test_a_benchmark_built_again_into_its_folder_replaces_it(tmp_path):
    """Built again with fewer items and another seed, the folder kept the first build's other items beside the
    new ones (item files are numbered by position), and `eval` scored all of them. A folder holding anything else
    is refused, and left as it was."""
    def build(num_items: int, seed: int, out: Path) -> dict:
        return build_benchmark(BenchBuildConfig(kind="tsc", out=str(out), source="tinystories-sample[2000:2010]",
                                                num_items=num_items, seed=seed, num_workers=1))

    build(4, 0, tmp_path / "tsc")
    meta = build(2, 5, tmp_path / "tsc")
    _, pairs = load(tmp_path / "tsc", "S")
    assert len(pairs) == meta["num_items"] == 2 and len(list((tmp_path / "tsc" / "audio").iterdir())) == 2 * 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tsc"]  # nothing left beside it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="mine: not empty, and not a benchmark"):
        build(2, 0, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_offline_sblimp_has_a_fixed_sample_per_phenomenon(tmp_path):
    from simslm import assets

    meta = build_benchmark(BenchBuildConfig(kind="sblimp", out=str(tmp_path / "sb"),
                                                                per_phenomenon=1, num_workers=2))
    _, pairs = load(tmp_path / "sb")
    assert meta["num_items"] == len(pairs) == len(assets.BLIMP_PHENOMENA)
    assert {p.group for p in pairs} == set(assets.BLIMP_PHENOMENA)
    again = blimp_pairs("", 1, 0)
    assert [r["sentence_good"] for r in again] == [r["sentence_good"] for r in blimp_pairs("", 1, 0)]
    # A seeded draw from each phenomenon's pairs, not its first ones: another seed, another sample.
    other = [r["sentence_good"] for r in blimp_pairs("", 1, 1)]
    assert len(other) == len(again) and sum(a["sentence_good"] != b for a, b in zip(again, other)) > len(other) / 2
    # ZeroSpeech's syntactic gold.csv, in its column order (its evaluator reads type, subtype and transcriptions by
    # position: `benchmarks/side_by_side_zerospeech.py --built` runs it on such a folder), each row its sentence.
    import csv

    rows = list(csv.DictReader(open(tmp_path / "sb" / "gold.csv")))
    assert list(rows[0]) == ["id", "voice", "filename", "type", "subtype", "transcription", "correct"]
    assert [row["transcription"] for row in rows[:2]] == [again[0]["sentence_good"], again[0]["sentence_bad"]]


def test_a_wav_tsc_is_the_layout_slamkits_cross_modal_evaluator_reads(tmp_path):
    build_benchmark(BenchBuildConfig(kind="tsc", out=str(tmp_path / "tsc"), source="tinystories-sample[2000:2004]",
                                     num_items=3, audio_format="wav", num_workers=1))
    folder = tmp_path / "tsc" / "audio"
    # slamkit's CrossModalMetricDataset (subfolder=False): every `*_correct.wav`, and beside it the
    # `_incorrect` and `_mutual` audio and the three .txt files.
    correct = sorted(folder.glob("*_correct.wav"))
    assert len(correct) == 3
    for path in correct:
        base = str(path).split("_correct.wav")[0]
        for role in ("correct", "incorrect", "mutual"):
            assert Path(f"{base}_{role}.wav").exists() and Path(f"{base}_{role}.txt").read_text().strip()
    assert len(load(tmp_path / "tsc", "T")[1]) == 3  # and simslm reads it too


def test_spelt_swuggy_pairs_each_word_with_a_non_word_that_no_word_of_its_corpus_sounds_like(tmp_path):
    import collections
    import csv

    from simslm.eval.layouts import frequency_band
    from simslm.speech import text
    from simslm.speech.align import espeak_arpabet, pocketsphinx_lexicon
    from simslm.speech.espeak import Espeak

    source = "tinystories-sample[:300]"
    meta = build_benchmark(BenchBuildConfig(kind="swuggy", out=str(tmp_path / "sw"), source=source, num_items=16,
                                            nonwords="spelling", num_workers=2))
    layout, pairs = load(tmp_path / "sw")
    assert layout == "slm21-lexical" and meta["num_items"] == len(pairs) == 16
    counts = collections.Counter(word.lower() for _, value, _ in read_corpus(source)
                                 for word in text.words(text.speakable(value or "")))
    dictionary_words, dictionary_sounds = pocketsphinx_lexicon()
    assert "stiffed" in dictionary_words  # what "stuffed" gave when only the corpus's words were known
    sounds = {Espeak.instance().phonemes(word) for word in counts}
    rows = list(csv.DictReader(open(tmp_path / "sw" / "gold.csv")))
    words = {row["id"]: row for row in rows if row["correct"] == "1"}
    for row in rows:
        if row["correct"] == "1":  # a word of the corpus, counted there, as ZeroSpeech counts LibriSpeech's
            assert int(row["frequency"]) == counts[row["word"]] > 0
            continue
        word, made = words[row["id"]]["word"], row["word"]
        assert row["phones"] == espeak_arpabet(made) and int(row["length"]) == len(espeak_arpabet(word).split())
        # No word of the corpus or of English (the CMU dictionary), nor like one in sound.
        assert made not in counts and made not in dictionary_words
        assert Espeak.instance().phonemes(made) not in sounds and espeak_arpabet(made) not in dictionary_sounds
        # One run of vowels or of consonants replaced by another of its kind, in its place.
        ours, theirs = _letter_runs(word), _letter_runs(made)
        assert [run[1:] for run in ours] == [run[1:] for run in theirs]
        assert sum(a[0] != b[0] for a, b in zip(ours, theirs)) == 1
    # Words drawn evenly from ZeroSpeech's frequency bands, each of a pair's sides spoken.
    bands = collections.Counter(pair.group for pair in pairs)
    assert len(bands) >= 3 and max(bands.values()) - min(bands.values()) <= 1, bands
    assert all(pair.group == frequency_band(words[pair.item]["frequency"]) for pair in pairs)
    assert all(len(audio.load_audio(side[0].audio)) > 1600 for pair in pairs for side in (pair.positive,
                                                                                          pair.negative))
    # Seeded, and a word's non-word is its own: the same whichever other words are drawn beside it.
    first = lexical_items(source, 16, 0)
    assert first == lexical_items(source, 16, 0) and first != lexical_items(source, 16, 1)
    more = {item["word"]: item["nonword"] for item in lexical_items(source, 40, 0)}
    assert all(more[item["word"]] == item["nonword"] for item in first if item["word"] in more)
    # Counted in the training text (ZeroSpeech counts LibriSpeech's words): the words it lacks are out of vocabulary.
    training = collections.Counter(word.lower() for _, value, _ in read_corpus("tinystories-sample[:100]")
                                   for word in text.words(text.speakable(value or "")))
    counted = lexical_items(source, 20, 0, "tinystories-sample[:100]")
    assert all(item["frequency"] == training[item["word"]] for item in counted)
    assert collections.Counter(frequency_band(str(item["frequency"])) == "oov" for item in counted)[True] >= 3


def test_letter_runs_take_y_as_a_vowel_but_at_a_words_start():
    assert _letter_runs("yellow") == [("y", "c", "first"), ("e", "v", "inside"), ("ll", "c", "inside"),
                                      ("o", "v", "inside"), ("w", "c", "last")]
    assert _letter_runs("happy") == [("h", "c", "first"), ("a", "v", "inside"), ("pp", "c", "inside"),
                                     ("y", "v", "last")]


@pytest.mark.parametrize("kind", ["sblimp", "tsc", "swuggy"])
def test_slamkit_pairs_are_named_so_its_evaluator_pairs_them_right(kind, tmp_path):
    options = {"sblimp": {"per_phenomenon": 1, "source": ""}, "tsc": {"num_items": 3,
                                                                     "source": "tinystories-sample[2000:2004]"},
               "swuggy": {"num_items": 6, "source": "tinystories-sample[:300]"}}
    build_benchmark(BenchBuildConfig(kind=kind, out=str(tmp_path / kind), slamkit_pairs=True, num_workers=2,
                                     **options[kind]))
    folder, separator = tmp_path / kind / "slamkit", SLAMKIT_SEPARATORS[kind]
    # slamkit's ModellingMetricDataset as its own metric config reads the folder (sblimp: `subfolder: true`,
    # tstorycloze: false): the .wav files of each sub-folder, or of the folder, each list sorted by the integer
    # before the separator and the lists joined, then taken two by two as (positive, negative). Shuffling the
    # glob order first shows the naming leaves nothing to it.
    rng = np.random.default_rng(0)
    folders = [sub for sub in folder.iterdir() if sub.is_dir()] if SLAMKIT_SUBFOLDERS[kind] else [folder]
    files = []
    for sub in folders:
        listed = list(sub.glob("*.wav"))
        rng.shuffle(listed)
        files += sorted(listed, key=lambda path: int(path.name.split(separator)[0]))
    ours = load(tmp_path / kind, "S")[1]
    assert len(files) == 2 * len(ours)
    for positive, negative in zip(files[::2], files[1::2]):
        number, name = positive.stem.split(separator, 1)
        pair = ours[int(number) // 2]  # pair i is numbered 2i (its positive) and 2i + 1
        assert name.endswith("_correct") and negative.stem == f"{int(number) + 1}{separator}{name[:-8]}_incorrect"
        if SLAMKIT_SUBFOLDERS[kind]:  # one sub-folder per phenomenon, or per frequency band
            assert positive.parent.name == negative.parent.name == pair.group.replace(">", "-")
        expected = sum(len(audio.load_audio(part.audio)) for part in pair.positive)  # tSC: context + ending
        assert abs(len(audio.load_audio(positive)) - expected) <= 1
    layout, pairs = load(folder)  # simslm reads the folder too, paired the same way
    assert layout == "slamkit-pairs" and sorted(p.positive[0].audio for p in pairs) == sorted(map(str, files[::2]))
