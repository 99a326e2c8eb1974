import json

import numpy as np
import pytest
import soundfile

from simslm.speech.manifest import (
    ManifestError,
    Utterance,
    Word,
    iter_utterances,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def _utterance(**changes):
    fields = dict(id="u1", audio="a.wav", sample_rate=16000, duration_sec=1.0, transcript="hello big world",
                  speaker="s1", words=(Word(word="hello", start_sec=0.1, end_sec=0.3),
                                       Word(word="big", start_sec=0.3, end_sec=0.5),
                                       Word(word="world", start_sec=0.5, end_sec=0.9)))
    fields.update(changes)
    return Utterance(**fields)


def test_round_trip(tmp_path):
    utterances = [_utterance(), _utterance(id="u2", words=None, meta={"voice": "en-us"})]
    write_manifest(tmp_path / "m.jsonl", utterances)
    assert read_manifest(tmp_path / "m.jsonl") == utterances


def test_a_manifest_line_is_the_utterances_fields_in_order_with_its_words_as_objects():
    import dataclasses

    for utterance in (_utterance(meta={"recording": "r1", "spans": [[0.1, 0.2]]}), _utterance(words=None)):
        line = utterance.to_json()
        # The definition: every field in declaration order (the bytes of a manifest line), words as plain objects.
        expected = dataclasses.asdict(utterance)
        if utterance.words is not None:
            expected["words"] = [dataclasses.asdict(word) for word in utterance.words]
        assert json.dumps(line) == json.dumps(expected)
        line["meta"].setdefault("spans", []).append("changed")  # a copy, not the utterance's own
        assert "changed" not in json.dumps(utterance.meta)


def test_validator_reports_every_problem_with_file_and_line(tmp_path):
    soundfile.write(tmp_path / "a.wav", 0.1 * np.ones(16000), 16000)
    soundfile.write(tmp_path / "b.wav", 0.1 * np.ones(8000), 8000)
    good = _utterance().to_json()
    lines = [
        json.dumps(good),                                                           # 1 fine
        "{not json",                                                                # 2
        json.dumps({k: v for k, v in good.items() if k != "transcript"}),           # 3
        json.dumps(good),                                                           # 4 duplicate id
        json.dumps({**good, "id": "u5", "transcript": "hello world"}),              # 5 mismatch
        json.dumps({**good, "id": "u6", "words": [{"word": "hello", "start_sec": 0.1, "end_sec": 0.3},
                                                  {"word": "big", "start_sec": 0.3, "end_sec": 0.5},
                                                  {"word": "world", "start_sec": 0.5, "end_sec": 1.5}]}),  # 6 past end
        json.dumps({**good, "id": "u7", "audio": "missing.wav"}),                   # 7
        json.dumps({**good, "id": "u8", "audio": "b.wav"}),                         # 8 rate mismatch
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    problems = validate_manifest(path)
    by_line = {p.line: p.message for p in problems}
    assert all(p.file == str(path) for p in problems)
    assert set(by_line) == {2, 3, 4, 5, 6, 7, 8}
    assert by_line[2].startswith("not valid JSON (")  # as every other reader says it, not the parser's words alone
    assert "duplicate id (first on line 1)" in by_line[4]
    assert "missing field(s) transcript" in by_line[3]
    assert "do not match the transcript" in by_line[5]
    assert "past the end of the audio" in by_line[6]
    assert "does not exist" in by_line[7]
    assert "sample_rate is 16000, the file has 8000" in by_line[8]


def test_empty_and_missing_manifests_are_problems(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert "no utterances" in validate_manifest(tmp_path / "empty.jsonl")[0].message
    assert "does not exist" in validate_manifest(tmp_path / "nope.jsonl")[0].message


def test_a_json_document_given_as_a_manifest_is_one_problem_not_one_per_line(tmp_path):
    # A report or config named by mistake (`synth_report.json` beside `manifest.jsonl`) listed every line.
    path = tmp_path / "synth_report.json"
    path.write_text(json.dumps({"num_utterances": 3, "voices": ["a", "b"], "config": {"seed": 0}}, indent=2))
    for problems in (validate_manifest(path), read_manifest_problems(path)):
        assert [str(problem) for problem in problems] == [f"{path}: a single JSON document, not a manifest (JSON "
                                                          f"Lines: one utterance object per line)"]
    # A manifest whose lines are all bad, but which is no JSON document, still names each line.
    (tmp_path / "bad.jsonl").write_text("{not json\n[1,\n")
    assert [problem.line for problem in validate_manifest(tmp_path / "bad.jsonl")] == [1, 2]
    # A file of another kind (a FLAC, a CSV) has a problem on every line: the error names the first few and the
    # count, and `manifest validate` still lists them all.
    (tmp_path / "table.csv").write_text("N,D,loss\n" + "1e+06,2e+07,9.05\n" * 400)
    with pytest.raises(ManifestError) as raised:
        read_manifest(tmp_path / "table.csv")
    message = str(raised.value)
    assert len(raised.value.problems) == 401 and message.count("table.csv:") == 5 and len(message) < 1500
    assert message.endswith(f"... and 396 more problem(s) (`simslm manifest validate {tmp_path / 'table.csv'}` lists "
                            "every one)")
    assert len(validate_manifest(tmp_path / "table.csv")) == 401
    import pickle

    again = pickle.loads(pickle.dumps(raised.value))  # as a worker process hands it back
    assert str(again) == message and again.problems == raised.value.problems


def read_manifest_problems(path):
    with pytest.raises(ManifestError) as raised:
        read_manifest(path)
    return raised.value.problems


def test_non_finite_numbers_and_duplicate_ids_are_refused(tmp_path):
    good = _utterance().to_json()
    lines = [good, {**good, "id": "u2", "duration_sec": float("nan")},
             {**good, "id": "u3", "words": [{"word": "hello", "start_sec": float("inf"), "end_sec": 1.0}]},
             {**good, "id": "u1"}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))  # json writes NaN and Infinity
    problems = [str(problem) for problem in validate_manifest(path, check_audio=False)]
    assert any(":2:" in p and "duration_sec is not a finite number" in p for p in problems)
    assert any(":3:" in p and "word 0 time is not a finite number" in p for p in problems)
    assert any(":4:" in p and "duplicate id" in p for p in problems)
    with pytest.raises(ManifestError, match="duplicate id"):
        read_manifest(path)


def test_a_file_name_that_is_not_utf8_as_pythons_json_writes_it_is_said_by_line(tmp_path):
    """A manifest a user's own script wrote from os.listdir holds a Latin-1 name as "caf\\udce9.flac": `manifest
    validate` ended with "'utf-8' codec can't encode character '\\udce9' ... surrogates not allowed", naming no line,
    and `units fit` skipped it as "surrogates not allowed"."""
    import os

    good = _utterance().to_json()
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in (
        good, {**good, "id": "u2", "audio": os.fsdecode(b"caf\xe9.flac")})))
    assert "\\udce9" in path.read_text()
    problems = [str(problem) for problem in validate_manifest(path, check_audio=False)]
    assert problems == [f"{path}:2: field 'audio' is not UTF-8 text (a lone surrogate: json's escape of a file name "
                        f"that is not UTF-8; rename the file)"]


def test_utterances_one_by_one_are_read_manifests_and_raise_its_error_after_the_last(tmp_path):
    import pickle

    good = _utterance().to_json()
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [good, {**good, "id": "u2"}, {**good, "id": "u1"},
                                                                   {**good, "id": "u3"}]))
    seen = []
    with pytest.raises(ManifestError) as raised:
        for utterance in iter_utterances(path):  # units fit and extract keep only ids and paths from each
            seen.append(utterance.id)
    assert seen == ["u1", "u2", "u3"] and ":3: u1: duplicate id (first on line 1)" in str(raised.value)
    with pytest.raises(ManifestError) as whole:
        read_manifest(path)
    assert str(whole.value) == str(raised.value)
    # Slotted (a manifest of millions of words), and still passed to spawned workers by pickle.
    utterance = _utterance()
    assert not hasattr(utterance, "__dict__") and pickle.loads(pickle.dumps(utterance)) == utterance


def test_a_manifest_read_through_a_link_finds_its_audio_where_it_was_written(tmp_path):
    """`ln -s /data/corpus/manifest.jsonl work/` had every stage look for the audio beside the link: "file does not
    exist" for each line, from validate, units extract, align and segment alike."""
    import shutil

    from simslm import assets
    from simslm.speech.align import AlignConfig, align_manifest
    from simslm.units.extract import manifest_records

    name = "1272-128104-0000"
    corpus = tmp_path / "data" / "corpus"
    (corpus / "audio").mkdir(parents=True)
    shutil.copy(assets.resolve("librispeech-samples").file(f"{name}.flac"), corpus / "audio")
    write_manifest(corpus / "manifest.jsonl", [Utterance(id=name, audio=f"audio/{name}.flac", sample_rate=16000,
                                                         duration_sec=5.855,
                                                         transcript=assets.LIBRISPEECH_TRANSCRIPTS[name])])
    link = tmp_path / "work" / "deeper" / "manifest.jsonl"
    link.parent.mkdir(parents=True)
    link.symlink_to(corpus / "manifest.jsonl")
    assert validate_manifest(link) == []
    assert [record["path"] for record in manifest_records(link)] == [str(corpus / "audio" / f"{name}.flac")]
    out = tmp_path / "work" / "aligned.jsonl"
    ctm = assets.resolve("librispeech-samples").file(f"{name}.ctm")
    align_manifest(AlignConfig(manifest=str(link), out=str(out), method="ctm", source=str(ctm)))
    assert read_manifest(out)[0].audio == f"../data/corpus/audio/{name}.flac" and validate_manifest(out) == []


def test_an_utterance_whose_audio_is_a_url_is_said_to_be_one(tmp_path):
    """A corpus listing its remote files: the URL was joined to the manifest's folder and reported as
    "/data/http:/example.com/a.flac: file does not exist", and extraction counted it so."""
    from simslm.speech import audio
    from simslm.units.extract import _record, skip_reason

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_utterance(audio="https://example.com/corpus/a.flac").to_json()) + "\n")
    (problem,) = validate_manifest(path)
    assert str(problem).endswith("https:/example.com/corpus/a.flac: a URL, not a local file (simslm reads local "
                                 "audio: download the corpus first)")
    record = _record({"id": "u1", "audio": "https://example.com/corpus/a.flac", "duration_sec": 1.0}, tmp_path)
    with pytest.raises(Exception) as raised:
        audio.load_audio(record["path"])
    assert skip_reason(raised.value) == audio.AudioProblem.URL.value
