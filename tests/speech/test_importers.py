import json
import shutil

import numpy as np
import pytest

from simslm import assets
from simslm.cli import main
from simslm.speech import audio
from simslm.speech.importers import ImportManifestConfig, detect_format, import_manifest
from simslm.speech.manifest import Word, read_manifest, validate_manifest

LIBRISPEECH = {"1272-128104-0000": assets.LIBRISPEECH_TRANSCRIPTS["1272-128104-0000"],
               "2412-153948-0000": assets.LIBRISPEECH_TRANSCRIPTS["2412-153948-0000"]}


def _flac(name: str):
    return assets.resolve("librispeech-samples").file(f"{name}.flac")


def _imported(tmp_path, source, **options):
    out = tmp_path / "out" / "manifest.jsonl"
    report = import_manifest(ImportManifestConfig(source=str(source), out=str(out), **options))
    assert validate_manifest(out) == []  # what it writes is a valid manifest, audio included
    return report, {u.id: u for u in read_manifest(out)}


def test_a_librispeech_tree_with_its_bad_items(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "1272" / "128104"
    chapter.mkdir(parents=True)
    shutil.copy(_flac("1272-128104-0000"), chapter)
    (chapter / "1272-128104-0001.flac").write_bytes(b"fLaC not really")  # unreadable audio
    (chapter / "1272-128104.trans.txt").write_text(
        f"1272-128104-0000 {LIBRISPEECH['1272-128104-0000']}\n1272-128104-0001 A BROKEN ONE\n"
        "1272-128104-0002 NO AUDIO AT ALL\n1272-128104-0003\n")
    assert detect_format(tmp_path / "LibriSpeech") == "librispeech"
    report, utterances = _imported(tmp_path, tmp_path / "LibriSpeech")
    assert list(utterances) == ["1272-128104-0000"] and utterances["1272-128104-0000"].speaker == "1272"
    assert utterances["1272-128104-0000"].duration_sec == pytest.approx(5.855, abs=1e-3)
    assert report.skipped_by_reason == {"not a readable audio file (WAV, FLAC, MP3, Ogg)": 1, "file does not exist": 1,
                                        "empty transcript": 1}


def test_librispeechs_capitals_are_lowercased_as_slamkit_reads_them(tmp_path, capsys):
    """LibriSpeech's transcripts are all in capitals; slamkit's helper for them (`utils/data_prep.py`,
    `parse_ls_text`) lowercases them, and a text LM reads "THE" apart from "the". The tree is lowercased by default
    (`--case keep` keeps it); any other layout is kept as written, and said when every transcript is in capitals."""
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "1272" / "128104"
    chapter.mkdir(parents=True)
    shutil.copy(_flac("1272-128104-0000"), chapter)
    (chapter / "1272-128104.trans.txt").write_text(f"1272-128104-0000 {LIBRISPEECH['1272-128104-0000']}\n")
    report, utterances = _imported(tmp_path, tmp_path / "LibriSpeech")
    assert utterances["1272-128104-0000"].transcript == LIBRISPEECH["1272-128104-0000"].lower()
    assert report.case == "lowercased" and "capitals" not in capsys.readouterr().err
    report, utterances = _imported(tmp_path, tmp_path / "LibriSpeech", case="keep")
    assert utterances["1272-128104-0000"].transcript == LIBRISPEECH["1272-128104-0000"]
    assert report.case == "kept in capitals" and "capitals" not in capsys.readouterr().err  # asked: not said again
    # The same capitals beside their audio in a folder: kept, and said; with --case lower the words' timings too.
    (tmp_path / "corpus").mkdir()
    shutil.copy(_flac("1272-128104-0000"), tmp_path / "corpus" / "a.flac")
    (tmp_path / "corpus" / "a.txt").write_text("MISTER QUILTER IS\n")
    report, utterances = _imported(tmp_path, tmp_path / "corpus")
    assert utterances["a"].transcript == "MISTER QUILTER IS" and report.case == "kept in capitals"
    assert "every transcript is in capitals (LibriSpeech's are)" in capsys.readouterr().err
    (tmp_path / "corpus" / "b.txt").write_text("Mister Quilter is\n")  # one not in capitals: nothing to say
    shutil.copy(_flac("1272-128104-0000"), tmp_path / "corpus" / "b.flac")
    report, _ = _imported(tmp_path, tmp_path / "corpus")
    assert report.case == "kept" and "capitals" not in capsys.readouterr().err
    words = [{"word": "MISTER", "start": 0.5, "end": 0.8}, {"word": "QUILTER'S", "start": 0.8, "end": 1.27}]
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "a", "audio": "corpus/a.flac",
                                                     "transcript": "MISTER QUILTER'S", "words": words}) + "\n")
    report, utterances = _imported(tmp_path, tmp_path / "other.jsonl", case="lower")
    assert utterances["a"].transcript == "mister quilter's" and report.case == "lowercased"
    assert [word.word for word in utterances["a"].words] == ["mister", "quilter's"]


def test_a_librispeech_tree_with_corentinjs_alignments_merged_in_has_their_word_timings(tmp_path, mirror, capsys):
    """The alignments' README: merge their LibriSpeech folder into LibriSpeech's, a chapter's .alignment.txt beside
    its .trans.txt. Their words come with the import, lowercased with the transcript; an utterance they leave out
    (MFA could not align it) comes without; a file that cannot be read, or words that are not the transcript's,
    skip the utterance and say why."""
    from simslm.speech.align import read_ctm

    for name, published in (("1272-128104-0000", True), ("2412-153948-0000", False), ("61-70968-0000", True)):
        speaker, chapter, _ = name.split("-")
        folder = tmp_path / "LibriSpeech" / "dev-clean" / speaker / chapter
        folder.mkdir(parents=True)
        shutil.copy(_flac(name), folder)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text(f"{name} {assets.LIBRISPEECH_TRANSCRIPTS[name]}\n")
    tree = tmp_path / "LibriSpeech" / "dev-clean"
    line = (mirror / "librispeech" / "1272-128104-0000.alignment.txt").read_text()
    (tree / "1272" / "128104" / "1272-128104.alignment.txt").write_text(line)
    (tree / "2412" / "153948" / "2412-153948.alignment.txt").write_text('2412-153948-0007 ",IF," "0.1,0.4,0.5"\n')
    (tree / "61" / "70968" / "61-70968.alignment.txt").write_text('61-70968-0000 ",HE," "0.1,0.4"\n')  # 2 times
    report, utterances = _imported(tmp_path, tmp_path / "LibriSpeech")
    reference = read_ctm(assets.resolve("librispeech-samples").file("1272-128104-0000.ctm"))["1272-128104-0000"]
    words = utterances["1272-128104-0000"].words
    assert [(w.word, w.start_sec, w.end_sec) for w in words] == [
        (word.lower(), pytest.approx(start), pytest.approx(end)) for word, start, end in reference]
    assert utterances["2412-153948-0000"].words is None and report.num_timed == 1
    assert "61-70968-0000" not in utterances and report.skipped_by_reason == {"unreadable .alignment.txt": 1}
    assert f"{tree / '61' / '70968' / '61-70968.alignment.txt'}:1: not a line of LibriSpeech alignments (3 words " \
           "and 2 end times)" in capsys.readouterr().err
    # Words that are not the transcript's (another utterance's line under its id): skipped, named.
    (tree / "61" / "70968" / "61-70968.alignment.txt").write_text('61-70968-0000 ",SHE,SAID," "0.1,0.4,0.9,1.0"\n')
    report, utterances = _imported(tmp_path, tmp_path / "LibriSpeech")
    assert "61-70968-0000" not in utterances
    assert report.skipped_by_reason == {"word timings do not match the transcript": 1}
    assert "skipped 61-70968-0000: word timings do not match the transcript (2 timed words" in capsys.readouterr().err


def test_a_folder_of_audio_with_transcripts_beside_it(tmp_path):
    (tmp_path / "corpus" / "alice").mkdir(parents=True)
    for name, suffix in (("1272-128104-0000", ".txt"), ("2412-153948-0000", ".lab")):
        shutil.copy(_flac(name), tmp_path / "corpus" / "alice")
        (tmp_path / "corpus" / "alice" / f"{name}{suffix}").write_text(LIBRISPEECH[name] + "\n")
    shutil.copy(_flac("61-70968-0000"), tmp_path / "corpus")  # no transcript beside it
    report, utterances = _imported(tmp_path, tmp_path / "corpus")
    assert set(utterances) == {"alice_1272-128104-0000", "alice_2412-153948-0000"}
    assert {u.speaker for u in utterances.values()} == {"alice"}
    assert report.skipped_by_reason == {"no transcript (.txt or .lab) beside the audio": 1}


def test_a_file_name_or_transcript_that_is_not_utf8_is_skipped_and_named(tmp_path, capsys):
    """A Latin-1 name from an old archive (b"caf\\xe9.flac") ended the whole import with "'utf-8' codec can't encode
    character '\\udce9' ... surrogates not allowed", naming no file: a manifest (JSON) cannot hold it, nor soundfile
    open it."""
    import os

    (tmp_path / "corpus").mkdir()
    for name in ("plain", os.fsdecode(b"caf\xe9")):
        shutil.copy(_flac("61-70968-0000"), tmp_path / "corpus" / f"{name}.flac")
        (tmp_path / "corpus" / f"{name}.txt").write_text("he began a confused complaint\n")
    # A transcript in Latin-1 ended the import of the whole folder ("a.txt: not UTF-8 text (byte 3)").
    shutil.copy(_flac("61-70968-0000"), tmp_path / "corpus" / "latin.flac")
    (tmp_path / "corpus" / "latin.txt").write_bytes(b"caf\xe9 au lait\n")
    report, utterances = _imported(tmp_path, tmp_path / "corpus")
    assert set(utterances) == {"plain"}
    assert report.skipped_by_reason == {"its file name is not UTF-8 (rename it)": 1, "transcript not UTF-8 text": 1}
    said = capsys.readouterr().err
    assert "caf\\xe9.flac: its file name is not UTF-8 (rename it)" in said
    assert "latin.txt: not UTF-8 text (byte 3)" in said


def test_audio_without_transcripts_is_kept_as_speech_only_utterances_when_asked(tmp_path, capsys):
    """Libri-Light's recordings have no transcript, and slamkit's feature extraction reads a folder of audio as it
    is; `manifest import` skipped every such file, so the speech-only stream of the paper's data could not enter
    simslm at all. Kept with --untranscribed (an empty transcript), beside the transcribed ones; every importer."""
    corpus = tmp_path / "librilight" / "61" / "book"
    corpus.mkdir(parents=True)
    shutil.copy(_flac("61-70968-0000"), corpus)
    shutil.copy(_flac("1272-128104-0000"), corpus)
    (corpus / "1272-128104-0000.txt").write_text(LIBRISPEECH["1272-128104-0000"] + "\n")
    (corpus / "empty.lab").write_text("\n")
    shutil.copy(_flac("2412-153948-0000"), corpus / "empty.flac")
    report, utterances = _imported(tmp_path, tmp_path / "librilight")
    assert set(utterances) == {"61_book_1272-128104-0000"}
    assert report.skipped_by_reason == {"no transcript (.txt or .lab) beside the audio": 1, "empty transcript": 1}
    # Libri-Light's JSON beside a file names its speaker (the audio's folder is the book).
    (corpus / "61-70968-0000.json").write_text(json.dumps({"speaker": "61", "voice_activity": [[0.1, 2.0]]}))
    report, utterances = _imported(tmp_path, tmp_path / "librilight", untranscribed=True)
    assert {name: u.transcript for name, u in utterances.items()} == {
        "61_book_61-70968-0000": "", "61_book_empty": "",
        "61_book_1272-128104-0000": LIBRISPEECH["1272-128104-0000"]} and report.num_skipped == 0
    assert {name: u.speaker for name, u in utterances.items()} == {
        "61_book_61-70968-0000": "61", "61_book_empty": "book", "61_book_1272-128104-0000": "book"}
    # Nothing but untranscribed audio, without the option: one line that names it.
    (corpus / "1272-128104-0000.txt").unlink()
    code = main(["manifest", "import", "--source", str(tmp_path / "librilight"), "--out", str(tmp_path / "a.jsonl")])
    said = capsys.readouterr().err
    assert code == 2 and "nothing to import as folder" in said and "--untranscribed keeps audio with none" in said
    # A JSONL with no transcript field, a Kaldi directory with no text file.
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "a", "audio": str(_flac("61-70968-0000"))}) + "\n")
    assert _imported(tmp_path, tmp_path / "other.jsonl", untranscribed=True)[1]["a"].transcript == ""
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"rec1 {_flac('1272-128104-0000')}\n")
    (kaldi / "segments").write_text("u1 rec1 0.0 2.5\nu2 rec1 2.5 5.8\n")
    with pytest.raises(ValueError, match="no text"):
        _imported(tmp_path, kaldi)
    (kaldi / "text").write_text("u2 IS THE APOSTLE\n")
    report, utterances = _imported(tmp_path, kaldi, untranscribed=True)
    assert {name: u.transcript for name, u in utterances.items()} == {"u1": "", "u2": "IS THE APOSTLE"}


def test_a_corpus_of_links_into_a_store_is_recorded_by_its_own_names(tmp_path):
    """A Hugging Face snapshot links each file to a blob named by its digest. The importer recorded the blob,
    with no extension and outside the corpus, so moving the corpus with its manifest broke every line."""
    store, corpus = tmp_path / "store", tmp_path / "work" / "corpus"
    store.mkdir()
    corpus.mkdir(parents=True)
    for number, name in enumerate(LIBRISPEECH):
        shutil.copy(_flac(name), store / f"blob{number}")
        (corpus / f"{name}.flac").symlink_to(store / f"blob{number}")
        (corpus / f"{name}.txt").write_text(LIBRISPEECH[name] + "\n")
    out = tmp_path / "work" / "out" / "manifest.jsonl"
    import_manifest(ImportManifestConfig(source=str(corpus), out=str(out)))
    assert sorted(u.audio for u in read_manifest(out)) == sorted(f"../corpus/{name}.flac" for name in LIBRISPEECH)
    (tmp_path / "work").rename(tmp_path / "moved")
    assert validate_manifest(tmp_path / "moved" / "out" / "manifest.jsonl") == []


def test_a_repeated_id_names_the_file_it_skips(tmp_path, capsys):
    """A folder's ids are its paths with "/" made "_": a_b/c.flac and a/b_c.flac are both a_b_c, and the second
    was dropped as a "repeated id" with nothing to say which file that was."""
    for folder, name in (("a", "b_c"), ("a_b", "c")):
        (tmp_path / "corpus" / folder).mkdir(parents=True)
        shutil.copy(_flac("1272-128104-0000"), tmp_path / "corpus" / folder / f"{name}.flac")
        (tmp_path / "corpus" / folder / f"{name}.txt").write_text(f"{folder} {name}\n")
    report, utterances = _imported(tmp_path, tmp_path / "corpus")
    assert list(utterances) == ["a_b_c"] and report.skipped_by_reason == {"repeated id": 1}
    kept = tmp_path / "corpus" / utterances["a_b_c"].speaker
    dropped = next(f for f in (tmp_path / "corpus").glob("*/*.flac") if f.parent != kept)
    assert f"skipped {dropped}: its id a_b_c is an earlier utterance's" in capsys.readouterr().err


def test_common_voices_mp3_clips_import_from_a_folder_and_from_a_datasets_column(tmp_path):
    import soundfile
    from datasets import Audio, Dataset

    name = "1272-128104-0000"
    samples = audio.load_audio(_flac(name))
    (tmp_path / "cv").mkdir()
    soundfile.write(tmp_path / "cv" / "clip_1.mp3", samples, 16000, format="MP3")
    soundfile.write(tmp_path / "cv" / "clip_2.opus", samples, 16000, format="OGG", subtype="OPUS")
    for clip in ("clip_1", "clip_2"):
        (tmp_path / "cv" / f"{clip}.txt").write_text(LIBRISPEECH[name])
    report, utterances = _imported(tmp_path / "cv", tmp_path / "cv")
    assert set(utterances) == {"clip_1", "clip_2"} and report.skipped_by_reason == {}
    assert all(u.duration_sec == pytest.approx(5.855, abs=1e-3) for u in utterances.values())
    # The hub's Common Voice holds MP3 bytes: they are written as .mp3, not under a name that says FLAC.
    rows = {"id": ["cv-1"], "audio": [{"bytes": (tmp_path / "cv" / "clip_1.mp3").read_bytes(), "path": None}],
            "text": [LIBRISPEECH[name]]}
    Dataset.from_dict(rows).cast_column("audio", Audio(decode=False)).save_to_disk(tmp_path / "hub")
    _, utterances = _imported(tmp_path / "hub", tmp_path / "hub")
    assert utterances["cv-1"].audio.endswith(".mp3")
    assert utterances["cv-1"].duration_sec == pytest.approx(5.855, abs=1e-3)


def test_a_kaldi_directory_with_segments_cut_into_files(tmp_path):
    kaldi = tmp_path / "data" / "train"
    kaldi.mkdir(parents=True)
    recording = _flac("1272-128104-0000")
    (kaldi / "wav.scp").write_text(f"rec1 {recording}\nrec2 sox x.wav -t wav - |\n")
    (kaldi / "segments").write_text("u1 rec1 0.0 2.5\nu2 rec1 2.5 5.8\nu3 rec2 0 1\nu4 rec1 5.0 99.0\n")
    (kaldi / "text").write_text("u1 MISTER QUILTER\nu2 IS THE APOSTLE\nu3 PIPED\nu4 TOO LONG\nu5 NO SEGMENT\n")
    (kaldi / "utt2spk").write_text("u1 s1\nu2 s1\n")
    report, utterances = _imported(tmp_path, kaldi)
    assert set(utterances) == {"u1", "u2"} and utterances["u1"].speaker == "s1"
    assert utterances["u1"].duration_sec == pytest.approx(2.5, abs=1e-3)
    whole = audio.load_audio(recording)
    first = audio.load_audio(tmp_path / "out" / utterances["u1"].audio)
    np.testing.assert_allclose(first, whole[:len(first)], atol=1e-4)  # the cut is the recording's first 2.5 s
    assert report.num_skipped == 3
    # Another Kaldi directory into the same output would reuse u1's cut, which is another recording's: refused.
    other = tmp_path / "data" / "test"
    shutil.copytree(kaldi, other)
    (other / "wav.scp").write_text(f"rec1 {_flac('2412-153948-0000')}\n")
    with pytest.raises(ValueError, match=r"manifest-segments: imported with other settings \(--source .*train then, "
                                         r".*test now\); import into another --out"):
        _imported(tmp_path, other)
    assert len(read_manifest(tmp_path / "out" / "manifest.jsonl")) == 2


def test_the_mirrors_own_librispeech_manifest_imports_with_its_field_names(tmp_path, mirror, capsys):
    out = tmp_path / "ls.jsonl"
    # Without the mapping, the one line names the missing fields, the ones there are, and the option.
    assert main(["manifest", "import", "--source", str(mirror / "librispeech" / "manifest.jsonl"), "--out",
                 str(out)]) == 2
    assert ("no 'id' or 'transcript' field (its fields: utt_id, audio, split, duration, text, word_alignment, "
            "audio_source; map with --fields id=NAME transcript=NAME)") in capsys.readouterr().err
    assert main(["manifest", "import", "--source", str(mirror / "librispeech" / "manifest.jsonl"), "--out", str(out),
                 "--fields", "id=utt_id", "transcript=text"]) == 0
    assert "imported 3 utterance(s)" in capsys.readouterr().out
    assert main(["manifest", "validate", str(out)]) == 0  # before, this very file failed validation
    assert {u.id for u in read_manifest(out)} == {"1272-128104-0000", "61-70968-0000", "2412-153948-0000"}
    (tmp_path / "nothing").mkdir()
    assert main(["manifest", "import", "--source", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "new" / "n.jsonl")]) == 2
    assert "nothing to import" in capsys.readouterr().err and not (tmp_path / "new").exists()
    json.loads(out.read_text().splitlines()[0])
    # Its word timings: a field naming a word-timing JSON file (or holding the list itself, or a bad value).
    assert main(["manifest", "import", "--source", str(mirror / "librispeech" / "manifest.jsonl"), "--out", str(out),
                 "--fields", "id=utt_id", "transcript=text", "words=word_alignment"]) == 0
    timed = {u.id: u.words for u in read_manifest(out)}
    assert timed["1272-128104-0000"][0] == Word(word="MISTER", start_sec=0.5, end_sec=0.8)
    assert len(timed["1272-128104-0000"]) == 17 and timed["61-70968-0000"] is None
    other = tmp_path / "other.jsonl"
    audio_path = (mirror / "librispeech" / "61-70968-0000.flac").resolve()
    other.write_text("".join(json.dumps({"id": name, "audio": str(audio_path), "transcript": "HE BEGAN",
                                         "words": words}) + "\n"
                             for name, words in (("inline", [{"word": "HE", "start": 0.1, "end": 0.3},
                                                             {"word": "BEGAN", "start": 0.3, "end": 0.7}]),
                                                 ("bad", [{"word": "HE"}]), ("missing", "nowhere.json"))))
    capsys.readouterr()
    assert main(["manifest", "import", "--source", str(other), "--out", str(tmp_path / "o.jsonl"), "--fields",
                 "words=words"]) == 0
    assert "skipped 2" in capsys.readouterr().out  # mapped, so the two bad values are the user's to know of
    assert read_manifest(tmp_path / "o.jsonl")[0].words[1] == Word(word="BEGAN", start_sec=0.3, end_sec=0.7)
    # Not mapped: a field that happens to be called words but holds no timings is not a reason to skip a line.
    assert main(["manifest", "import", "--source", str(other), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert [u.words is None for u in read_manifest(tmp_path / "o.jsonl")] == [False, True, True]


def test_lhotse_recordings_and_supervisions_with_word_alignments(tmp_path):
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    from simslm.speech.align import read_ctm

    name = "1272-128104-0000"
    recording = Recording.from_file(_flac(name), recording_id="r1")
    reference = read_ctm(assets.resolve("librispeech-samples").file(f"{name}.ctm"))[name]
    words = [AlignmentItem(symbol=w, start=s, duration=e - s) for w, s, e in reference]
    late = [w for w in words if w.start >= 2.0]  # the words of a supervision starting at 2 s (recording time)
    supervisions = [
        SupervisionSegment(id="whole", recording_id="r1", start=0.0, duration=recording.duration,
                           text=LIBRISPEECH[name], speaker="1272", alignment={"word": words}),
        SupervisionSegment(id="part", recording_id="r1", start=late[0].start, duration=recording.duration - late[0].start,
                           text=" ".join(w.symbol for w in late), alignment={"word": late}),
        SupervisionSegment(id="lost", recording_id="nowhere", start=0.0, duration=1.0, text="NO RECORDING"),
        SupervisionSegment(id="silent", recording_id="r1", start=0.0, duration=1.0, text=" ")]
    (tmp_path / "lhotse").mkdir()
    RecordingSet.from_recordings([recording]).to_file(tmp_path / "lhotse" / "ls_recordings_dev.jsonl.gz")
    SupervisionSet.from_segments(supervisions).to_file(tmp_path / "lhotse" / "ls_supervisions_dev.jsonl.gz")
    assert detect_format(tmp_path / "lhotse") == "lhotse"
    report, utterances = _imported(tmp_path, tmp_path / "lhotse")
    assert set(utterances) == {"whole", "part"} and report.num_skipped == 2
    assert [(w.word, w.start_sec) for w in utterances["whole"].words] == [(w, round(s, 3)) for w, s, _ in reference]
    part = utterances["part"]
    assert part.words[0].start_sec == 0.0  # shifted into the cut's own time
    assert part.duration_sec == pytest.approx(recording.duration - late[0].start, abs=2e-3)
    # A supervision with no text is a speech-only utterance with --untranscribed.
    shutil.rmtree(tmp_path / "out")
    assert _imported(tmp_path, tmp_path / "lhotse", untranscribed=True)[1]["silent"].transcript == ""


def test_a_hugging_face_dataset_on_disk_and_as_streamed_files(tmp_path):
    from datasets import Audio, Dataset

    name = "1272-128104-0000"
    from simslm.speech.align import read_ctm

    reference = read_ctm(assets.resolve("librispeech-samples").file(f"{name}.ctm"))[name]
    rows = {"id": [name, "no-text", "../../escape"],
            "audio": [{"bytes": _flac(name).read_bytes(), "path": f"{name}.flac"},
                      {"bytes": _flac("61-70968-0000").read_bytes(), "path": "x.flac"},
                      {"bytes": _flac("2412-153948-0000").read_bytes(), "path": "y.flac"}],
            "text": [LIBRISPEECH[name], "", LIBRISPEECH["2412-153948-0000"]],
            "speaker_id": ["1272", "61", "2412"],
            "words": [[{"word": w, "start": s, "end": e} for w, s, e in reference], [], []]}
    dataset = Dataset.from_dict(rows).cast_column("audio", Audio(decode=False))
    dataset.save_to_disk(tmp_path / "saved")
    (tmp_path / "files").mkdir()
    dataset.to_parquet(tmp_path / "files" / "train-00000.parquet")
    for source in ("saved", "files"):
        assert detect_format(tmp_path / source) == "hf"
        report, utterances = _imported(tmp_path / source, tmp_path / source)
        assert set(utterances) == {name, "../../escape"} and report.skipped_by_reason == {"no text in column 'text'": 1}
        assert [w.word for w in utterances[name].words] == [w for w, _, _ in reference]
        assert utterances[name].speaker == "1272"
        # An id from the data names a file inside the output's audio folder, whatever it says.
        written = (tmp_path / source / "out" / utterances["../../escape"].audio).resolve()
        assert written.is_relative_to((tmp_path / source / "out").resolve()) and written.exists()
    assert not (tmp_path / "escape").exists()


def test_a_hub_id_that_is_not_cached_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    import datasets.config
    import huggingface_hub.constants

    # As on this machine: no network. The libraries read these at import, so they are set where they live.
    for module, name in ((datasets.config, "HF_DATASETS_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
                         (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, name, True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["manifest", "import", "--source", "nobody/no-such-speech-set", "--out",
                 str(tmp_path / "m.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "nobody/no-such-speech-set: cannot open as a Hugging Face dataset" in error and error.count("\n") == 1
