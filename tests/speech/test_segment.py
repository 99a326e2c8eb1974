import numpy as np
import pytest

from simslm import assets
from simslm.cli import main
from simslm.speech import audio
from simslm.speech.manifest import Utterance, Word, read_manifest, validate_manifest, write_manifest
from simslm.speech.segment import (
    TRANSCRIPT_DROPPED,
    SegmentConfig,
    plan_segments,
    segment_manifest,
    stitch_voice_activity,
)

RATE = audio.TARGET_SAMPLE_RATE
UTTERANCES = ("1272-128104-0000", "2412-153948-0000", "61-70968-0000")


def _samples(name: str) -> np.ndarray:
    return audio.load_audio(assets.resolve("librispeech-samples").file(f"{name}.flac"))


def _words(name: str) -> list[dict]:
    """Word timings from the mirror's CTM (utterance, channel, start, duration, word)."""
    lines = assets.resolve("librispeech-samples").file(f"{name}.ctm").read_text().split("\n")
    return [{"word": f[4], "start": float(f[2]), "end": round(float(f[2]) + float(f[3]), 3)}
            for f in (line.split() for line in lines) if len(f) == 5]


def _long_recording(tmp_path, times: int = 3, gap_sec: float = 1.0, with_words: bool = True):
    """The timed LibriSpeech utterance `times` times with `gap_sec` of silence between: (manifest, samples)."""
    piece, words, parts, timed = _samples(UTTERANCES[0]), _words(UTTERANCES[0]), [], []
    for copy in range(times):
        offset = sum(len(p) for p in parts) / RATE
        parts += [piece, np.zeros(round(gap_sec * RATE), np.float32)]
        timed += [Word(word=w["word"], start_sec=round(w["start"] + offset, 3), end_sec=round(w["end"] + offset, 3))
                  for w in words]
    samples = np.concatenate(parts)
    audio.write_audio(tmp_path / "long.flac", samples)
    transcript = " ".join(w.word for w in timed)
    write_manifest(tmp_path / "long.jsonl", [Utterance(
        id="book/ch1", audio="long.flac", sample_rate=RATE, duration_sec=round(len(samples) / RATE, 3),
        transcript=transcript, speaker="reader", words=tuple(timed) if with_words else None)])
    return tmp_path / "long.jsonl", audio.load_audio(tmp_path / "long.flac"), timed


def test_the_plan_never_splits_a_stretch_and_cuts_at_the_longest_pause():
    # Pauses of 0.1 s, except a 1 s pause after stretch 3 and a 0.5 s one after stretch 1.
    stretches, t = [], 0.0
    for pause in (0.1, 0.5, 0.1, 1.0, 0.1, 0.1, 0.1):
        stretches.append((t, t + 1.0))
        t += 1.0 + pause
    planned = plan_segments(stretches, t, max_sec=5.5, min_sec=2.0, margin_sec=0.2)
    assert [(first, stop) for _, _, first, stop in planned] == [(0, 4), (4, 7)]  # cut at the 1 s pause
    assert all(end - start <= 5.5 for start, end, _, _ in planned)
    assert planned[0][1] == pytest.approx(4.7 + 0.2) and planned[1][0] == pytest.approx(5.7 - 0.2)
    # Shorter segments: the 0.5 s pause would leave one of 1 s, under min_sec, so the cuts go at 0.1 s pauses.
    planned = plan_segments(stretches, t, max_sec=3.0, min_sec=2.0, margin_sec=0.0)
    assert [(first, stop) for _, _, first, stop in planned] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    # Equal pauses: the latest cut that fits, so segments come out as long as they can. A segment fits with a
    # margin either side (3.2 s of speech and 2 x 0.2 s is over 3.5 s), and neighbours share a pause shorter than
    # two margins half and half.
    even, t = [], 0.0
    for _ in range(6):
        even.append((t, t + 1.0))
        t += 1.1
    assert [(f, s) for _, _, f, s in plan_segments(even, 6.6, max_sec=3.5, min_sec=0, margin_sec=0)] == [
        (0, 3), (3, 6)]
    planned = plan_segments(even, 6.6, max_sec=3.5, min_sec=0, margin_sec=0.2)
    assert [(f, s) for _, _, f, s in planned] == [(0, 2), (2, 4), (4, 6)]
    assert [edge for start, end, _, _ in planned for edge in (start, end)] == pytest.approx(
        [0.0, 2.15, 2.15, 4.35, 4.35, 6.6])
    # One stretch longer than a segment is its own segment, whole.
    assert [(f, s) for _, _, f, s in plan_segments([(0, 1), (1.5, 9), (9.5, 10)], 10, max_sec=4, min_sec=0,
                                                    margin_sec=0)] == [(0, 1), (1, 2), (2, 3)]


def test_word_timings_keep_every_word_whole_and_shifted(tmp_path):
    manifest, samples, timed = _long_recording(tmp_path)
    out = tmp_path / "out" / "segments.jsonl"
    report = segment_manifest(SegmentConfig(manifest=str(manifest), out=str(out), max_sec=8.0, num_workers=1))
    assert validate_manifest(out) == []
    segments = read_manifest(out)
    assert report.num_segments == len(segments) >= 3 and report.num_skipped == 0
    # Every word once, in order, inside its segment, at its own time in the recording.
    assert [w.word for s in segments for w in s.words] == [w.word for w in timed]
    recording_times = []
    for segment in segments:
        assert segment.duration_sec <= 8.0 and segment.meta["cut_by"] == "word timings"
        assert segment.transcript == " ".join(w.word for w in segment.words)
        assert all(0 <= w.start_sec <= w.end_sec <= segment.duration_sec + 1e-3 for w in segment.words)
        recording_times += [(w.start_sec + segment.meta["start_sec"], w.end_sec + segment.meta["start_sec"])
                            for w in segment.words]
        # The segment's audio is the recording's samples from its start.
        cut = audio.load_audio(out.parent / segment.audio)
        start = round(segment.meta["start_sec"] * RATE)
        np.testing.assert_allclose(cut, samples[start:start + len(cut)], atol=1e-4)
    np.testing.assert_allclose(recording_times, [(w.start_sec, w.end_sec) for w in timed], atol=2e-3)
    # Segments do not overlap, and the cut between two falls in a pause between words.
    for before, after in zip(segments, segments[1:]):
        assert before.meta["end_sec"] <= after.meta["start_sec"] + 1e-6
    assert segments[0].id == "book/ch1-0000" and segments[0].speaker == "reader"
    # A re-run finds every recording done and writes the same manifest.
    first = out.read_text()
    segment_manifest(SegmentConfig(manifest=str(manifest), out=str(out), max_sec=8.0, num_workers=1))
    assert out.read_text() == first
    # Other settings into the same output would take the recordings cut before as done: refused.
    with pytest.raises(ValueError, match=r"segments: cut with other settings \(--max-sec 8.0 then, 6.0 now; "
                                         r"--min-sec 4.0 then, 3.0 now\); cut into another --out"):
        segment_manifest(SegmentConfig(manifest=str(manifest), out=str(out), max_sec=6.0, num_workers=1))
    assert out.read_text() == first


def test_a_recording_that_ended_its_process_twice_is_skipped_and_counted(tmp_path):
    from dataclasses import replace

    from simslm import jobs

    manifest, _, _ = _long_recording(tmp_path)
    recording = read_manifest(manifest)[0]
    write_manifest(manifest, [recording, replace(recording, id="book/ch2")])
    out = tmp_path / "out" / "segments.jsonl"
    journal = tmp_path / "out" / "segments-segments" / ".segment.running"
    journal.parent.mkdir(parents=True)
    journal.write_text('{"carried": "book/ch1", "times": 2}\n')  # as two runs killed cutting it leave it
    report = segment_manifest(SegmentConfig(manifest=str(manifest), out=str(out), max_sec=8.0, num_workers=1))
    assert report.skipped_by_reason == {jobs.ENDED_THE_PROCESS: 1} and report.num_recordings == 2
    assert {s.meta["recording"] for s in read_manifest(out)} == {"book/ch2"}
    assert jobs._earlier_deaths(journal) == ({"book/ch1": 2}, 0)  # kept: a later run into this folder skips it too
    # A run that cuts nothing else keeps it too (its empty segments folder was removed, and the journal with it).
    alone = tmp_path / "alone.jsonl"
    write_manifest(alone, [recording])
    lone = tmp_path / "lone" / "segments.jsonl"
    (lone.parent / "segments-segments").mkdir(parents=True)
    (lone.parent / "segments-segments" / ".segment.running").write_text('{"carried": "book/ch1", "times": 2}\n')
    with pytest.raises(ValueError, match="no recording could be cut"):
        segment_manifest(SegmentConfig(manifest=str(alone), out=str(lone), max_sec=8.0, num_workers=1))
    assert jobs._earlier_deaths(lone.parent / "segments-segments" / ".segment.running") == ({"book/ch1": 2}, 0)


def test_a_second_run_into_an_output_being_written_is_refused(tmp_path, lock_held_elsewhere):
    manifest, _, _ = _long_recording(tmp_path, times=1)
    out = tmp_path / "out" / "segments.jsonl"
    config = SegmentConfig(manifest=str(manifest), out=str(out), max_sec=8.0, num_workers=1)
    pid, release = lock_held_elsewhere(tmp_path / "out" / "segments-segments" / ".segment.lock")
    with pytest.raises(ValueError, match=rf"segments.jsonl: another `simslm segment` is writing it \(held by "
                                         rf"process {pid} on "):
        segment_manifest(config)
    assert not out.exists() and [p.name for p in out.with_name("segments-segments").iterdir()] == [".segment.lock"]
    release()
    assert segment_manifest(config).num_segments >= 1


@pytest.mark.slow
def test_without_word_timings_the_vad_cuts_in_the_silences(tmp_path):
    pytest.importorskip("silero_vad")
    parts, spans = [], []
    for name in UTTERANCES:  # three speakers, 1.5 s of silence between them
        start = sum(len(p) for p in parts) / RATE
        parts += [_samples(name), np.zeros(round(1.5 * RATE), np.float32)]
        spans.append((start, start + len(parts[-2]) / RATE))
    samples = np.concatenate(parts)
    audio.write_audio(tmp_path / "three.flac", samples)
    write_manifest(tmp_path / "long.jsonl", [
        Utterance(id="three", audio="three.flac", sample_rate=RATE, duration_sec=round(len(samples) / RATE, 3),
                  transcript="SOME TEXT NOT TIMED"),
        Utterance(id="gone", audio="missing.flac", sample_rate=RATE, duration_sec=3.0, transcript="NO FILE")])
    out = tmp_path / "segments.jsonl"
    report = segment_manifest(SegmentConfig(manifest=str(tmp_path / "long.jsonl"), out=str(out), max_sec=12.0,
                                            num_workers=1))
    assert report.skipped_by_reason == {"file does not exist": 1}
    assert report.notes == {TRANSCRIPT_DROPPED: 1}
    assert validate_manifest(out) == []  # untranscribed segments are valid manifest lines
    segments = read_manifest(out)
    assert all(s.transcript == "" and s.words is None and s.duration_sec <= 12.0 for s in segments)
    # The whole of each utterance lies inside one segment: cuts fall in the silences between them (or inside
    # an utterance's own pauses when one alone is longer than a segment: none is here).
    for start, end in spans:
        holding = [s for s in segments if s.meta["start_sec"] <= start + 0.35 and end - 0.35 <= s.meta["end_sec"]]
        assert len(holding) == 1, (start, end, [(s.meta["start_sec"], s.meta["end_sec"]) for s in segments])


def test_libri_lights_voice_activity_is_stitched_as_its_cut_by_vad_script_stitches_it():
    """Libri-Light's cut_by_vad.py: stretches taken in order, a piece closed when the next would take its speech
    past the target, a stretch alone longer than the target a piece of its own."""
    stretches = [(0.5, 2.0), (2.5, 3.0), (4.0, 9.0), (9.5, 10.0), (11.0, 30.0), (31.0, 31.5)]
    # 1.5 + 0.5 = 2.0; + 5.0 would be 7.0 > 6: closed; 5.0 + 0.5 = 5.5; 19.0 alone; then 0.5.
    assert stitch_voice_activity(stretches, 6.0) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert stitch_voice_activity(stretches, 60.0) == [(0, 6)]
    assert stitch_voice_activity([(0.0, 1.0), (1.0, 2.0)], 2.0) == [(0, 2)]  # exactly the target: still one
    assert stitch_voice_activity([], 6.0) == []


def test_librilight_vad_joins_each_pieces_stretches_with_the_silence_dropped(tmp_path, capsys):
    """`--by librilight-vad` reads the JSON Libri-Light ships beside each file and writes each piece as its stretches'
    samples joined, from int(onset * 16000) to int(offset * 16000) (benchmarks/side_by_side_librilight_vad.py runs
    Libri-Light's own script beside it)."""
    import json

    manifest, samples, _ = _long_recording(tmp_path, times=2, with_words=False)
    stretches = [[0.31254, 2.10007], [2.5, 3.0001], [6.2, 11.7], [12.05, 12.4999]]
    (tmp_path / "long.json").write_text(json.dumps({"speaker": "61", "book_meta": {"id": "b"},
                                                    "voice_activity": stretches}))
    out = tmp_path / "pieces.jsonl"
    report = segment_manifest(SegmentConfig(manifest=str(manifest), out=str(out), by="librilight-vad", max_sec=5.0,
                                            num_workers=1))
    pieces = read_manifest(out)
    assert validate_manifest(out) == [] and report.notes == {
        TRANSCRIPT_DROPPED: 1, "segments over --max-sec (one word or stretch alone is longer)": 1}
    expected = [stretches[:2], stretches[2:3], stretches[3:]]  # 2.29 s, then 5.5 s alone, then 0.45 s
    assert [piece.meta["voice_activity"] for piece in pieces] == expected
    for piece, joined in zip(pieces, expected):
        written = audio.load_audio(out.parent / piece.audio, allow_silent=True)
        wanted = np.concatenate([samples[int(a * RATE):int(b * RATE)] for a, b in joined])
        assert len(written) == len(wanted) and np.abs(written - wanted).max() < 1 / 32768
        assert piece.transcript == "" and piece.words is None and piece.meta["cut_by"] == "librilight-vad"
    # Margins, --min-sec and the VAD's settings do not apply to this cut: neither checked nor refusing a resume.
    again = segment_manifest(SegmentConfig(manifest=str(manifest), out=str(out), by="librilight-vad", max_sec=5.0,
                                           margin_sec=3.0, min_sec=0.5, vad_threshold=0.9, num_workers=1))
    assert again.num_segments == 3 and read_manifest(out) == pieces
    with pytest.raises(ValueError, match="cut with other settings"):
        segment_manifest(SegmentConfig(manifest=str(manifest), out=str(out), by="librilight-vad", max_sec=6.0,
                                       num_workers=1))
    # A recording without its JSON is skipped and counted; one whose JSON holds no voice activity, or voice activity
    # past the audio's end (another file's JSON), too.
    (tmp_path / "long.json").write_text(json.dumps({"voice_activity": [[1.0, 2.0], [len(samples) / RATE, 99.0]]}))
    with pytest.raises(ValueError, match="voice_activity starts past the end of the audio"):
        segment_manifest(SegmentConfig(manifest=str(manifest), out=str(tmp_path / "a.jsonl"), by="librilight-vad",
                                       num_workers=1))
    (tmp_path / "long.json").write_text(json.dumps({"speaker": "61"}))
    with pytest.raises(ValueError, match="its JSON has no voice_activity"):
        segment_manifest(SegmentConfig(manifest=str(manifest), out=str(tmp_path / "b.jsonl"), by="librilight-vad",
                                       num_workers=1))
    (tmp_path / "long.json").unlink()
    assert main(["segment", "--manifest", str(manifest), "--out", str(tmp_path / "c.jsonl"), "--by",
                 "librilight-vad"]) == 2
    assert "no Libri-Light JSON (voice_activity) beside the audio" in capsys.readouterr().err


def test_the_command_line_and_its_errors(tmp_path, capsys):
    manifest, _, _ = _long_recording(tmp_path, times=2, with_words=False)
    out = tmp_path / "out.jsonl"
    assert main(["segment", "--manifest", str(manifest), "--out", str(out), "--by", "words"]) == 2
    assert "no recording could be cut" in capsys.readouterr().err and not out.exists()
    assert main(["segment", "--manifest", str(manifest), "--out", str(out), "--max-sec", "0.3"]) == 2
    assert "leaves no room" in capsys.readouterr().err


def test_a_manifest_that_is_a_symlink_loop_is_one_line_naming_it(tmp_path, capsys):
    # The check that --out is not the manifest itself resolved both with `Path.resolve`, which raises RuntimeError
    # on a loop: the line said "Symlink loop from ..." as an unexpected error, with the --debug hint.
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    assert main(["segment", "--manifest", str(tmp_path / "loop.jsonl"), "--out", str(tmp_path / "seg.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"simslm segment: error: {tmp_path / 'loop.jsonl'}: too many levels " \
                                              f"of symbolic links"
