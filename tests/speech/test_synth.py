import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from simslm.speech import text
from simslm.speech.manifest import read_manifest, validate_manifest
from simslm.speech.synth import VOICE_SETS, SynthConfig, choose_speaker, synthesize_corpus
from tests.conftest import REPO, live_in_group


def test_synthesised_corpus_is_a_valid_16k_manifest_with_word_timings(synthetic_corpus):
    assert validate_manifest(synthetic_corpus) == []
    utterances = read_manifest(synthetic_corpus)
    assert len(utterances) == 4
    for utterance in utterances:
        info = soundfile.info(utterance.audio_path(synthetic_corpus.parent))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert [w.word for w in utterance.words] == text.words(utterance.transcript)
        assert utterance.speaker.startswith("train/")
        assert utterance.words[-1].end_sec <= utterance.duration_sec


def test_speaker_choice_is_a_function_of_seed_and_line():
    voices = VOICE_SETS["train"]
    assert choose_speaker(voices, 0, 7) == choose_speaker(voices, 0, 7)
    draws = {choose_speaker(voices, 0, index)[0].name for index in range(200)}
    assert draws == {preset.name for preset in voices}  # every voice gets used
    assert [choose_speaker(voices, 0, i) for i in range(20)] != [choose_speaker(voices, 1, i) for i in range(20)]


def test_heldout_voices_are_never_training_voices():
    train = {preset.voice for preset in VOICE_SETS["train"]}
    heldout = {preset.voice for preset in VOICE_SETS["heldout"]}
    assert not train & heldout
    assert not {v.split("+")[1] for v in train} & {v.split("+")[1] for v in heldout}


def test_bad_lines_are_skipped_and_counted_and_rerun_does_no_new_work(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes("\n".join([
        json.dumps({"text": "The dog ran home."}),
        "{broken json",
        json.dumps({"story": "no text field"}),
        json.dumps({"text": "?! ..."}),
        json.dumps({"text": "Lily smiled. Then she slept."}),
    ]).encode() + b'\n{"text": "caf\xe9"}\n')  # a line in Latin-1: skipped and counted, not the end of the job
    config = SynthConfig(out=str(tmp_path / "out"), corpus=str(corpus), num_workers=1, id_prefix="t")
    report = synthesize_corpus(config)
    assert (report.num_synthesized, report.num_skipped) == (2, 4)
    assert report.skipped_by_reason == {"line is not valid JSON": 1, "no string field 'text'": 1,
                                        "no words to speak": 1, "not UTF-8 text (byte 14 of the line)": 1}
    assert [u.id for u in read_manifest(report.manifest)] == ["t-000000", "t-000004"]
    summary = json.loads((tmp_path / "out" / "synth_report.json").read_text())
    assert summary["num_skipped"] == 4

    again = synthesize_corpus(config)
    assert (again.num_synthesized, again.num_reused) == (0, 2)


def test_an_interrupted_run_resumes_with_only_the_missing_work(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One small cat.\nTwo big dogs.\nThree red birds.\n")
    config = SynthConfig(out=str(tmp_path / "out"), corpus=str(corpus), num_workers=1, id_prefix="r")
    synthesize_corpus(config)
    journal = tmp_path / "out" / "manifest.partial.jsonl"
    lines = journal.read_text().splitlines()
    # Simulate a kill: the last record was torn mid-write, and the final manifest never written.
    journal.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])
    (tmp_path / "out" / "manifest.jsonl").unlink()
    resumed = synthesize_corpus(config)
    assert (resumed.num_synthesized, resumed.num_reused) == (1, 2)
    # A recorded utterance whose audio file was lost is spoken again, not reused.
    (tmp_path / "out" / "audio" / "0000" / "r-000000.flac").unlink()
    repaired = synthesize_corpus(config)
    assert (repaired.num_synthesized, repaired.num_reused) == (1, 2)
    utterances = read_manifest(resumed.manifest)
    assert [u.transcript for u in utterances] == ["One small cat.", "Two big dogs.", "Three red birds."]
    assert validate_manifest(resumed.manifest) == []


def test_audio_the_disk_cannot_hold_stops_the_job_naming_the_file_and_a_rerun_finishes(tmp_path):
    """A full disk (here a file size limit, RLIMIT_FSIZE, which fails the write as a full disk does) was counted
    as "the TTS engine failed" for each line whose audio did not fit, and `synth` ended as done, its manifest short
    of them. It now stops at the first such write, naming the file; a re-run keeps what was written."""
    corpus = tmp_path / "corpus.txt"
    story = "The little dog ran all the way home through the long green field and over the hill. " * 12
    corpus.write_text(f"One small cat.\nTwo big dogs.\n{story}\nThree red birds.\n")
    out = tmp_path / "out"
    limit = 150_000  # each short line's FLAC is about 20 kB, the story's about 700 kB
    command = [sys.executable, "-m", "simslm", "synth", "--out", str(out), "--corpus", str(corpus),
               "--num-workers", "1", "--id-prefix", "d"]
    limited = [sys.executable, "-c", f"import os, resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, "
                                     f"{limit})); os.execv({command[0]!r}, {command!r})"]
    refused = subprocess.run(limited, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines()[-1] == f"simslm synth: error: {out}/audio/0000/d-000002.flac: file too large"
    assert not (out / "manifest.jsonl").exists()
    assert [json.loads(line)["id"] for line in (out / "manifest.partial.jsonl").read_text().splitlines()] == [
        "d-000000", "d-000001"]
    finished = synthesize_corpus(SynthConfig(out=str(out), corpus=str(corpus), num_workers=1, id_prefix="d"))
    assert (finished.num_synthesized, finished.num_reused, finished.num_skipped) == (2, 2, 0)


@pytest.mark.slow
def test_sigterm_stops_synth_with_its_workers_and_a_rerun_finishes(tmp_path):
    """`kill` (or a scheduler's time limit) once ended the command alone: its pool's workers and their espeak-ng
    keepers went on, orphaned, for good. Now the command stops them, says so in one line, and resumes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Story {n}: the small cat saw a big red bird in the tall green tree.\n"
                              for n in range(60)))
    config = SynthConfig(out=str(tmp_path / "out"), corpus=str(corpus), num_workers=2)
    process = subprocess.Popen([sys.executable, "-m", "simslm", "synth", "--out", config.out, "--corpus",
                                str(corpus), "--num-workers", "2"], cwd=REPO, text=True, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = tmp_path / "out" / "manifest.partial.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 4):
        time.sleep(0.05)
    try:
        process.send_signal(signal.SIGTERM)  # to the command alone, as `kill PID` sends it
        _, stderr = process.communicate(timeout=60)  # an orphaned worker would hold its stderr open
        assert process.returncode == 128 + signal.SIGTERM
        assert stderr.splitlines()[-1] == "simslm synth: stopped by SIGTERM; run the same command again to resume"
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        assert live_in_group(process.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
    report = synthesize_corpus(config)
    assert report.num_reused >= 4 and report.num_reused + report.num_synthesized == 60
    assert validate_manifest(report.manifest) == []


_KILLED_SPEAKING = """
import os, signal, sys
from simslm import cli
from simslm.speech import synth

speak = synth.synthesize_one

def killed_on_its_second_line(task):  # as espeak-ng crashing on a line, or the OOM killer, ends a worker
    if task["id"].endswith("-000001"):
        os.kill(os.getpid(), signal.SIGKILL)
    return speak(task)

synth.synthesize_one = killed_on_its_second_line  # at the top: the spawned workers run it too
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_line_that_ends_its_worker_is_named_then_skipped(tmp_path):
    # It used to end every run at that line: the journal resumes there.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One small cat.\nTwo big dogs.\nThree red birds.\n")
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_SPEAKING)
    out = tmp_path / "out"

    def run():
        return subprocess.run([sys.executable, str(script), "synth", "--out", str(out), "--corpus", str(corpus),
                               "--num-workers", "2", "--id-prefix", "c"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)

    for attempt in range(2):
        ended = run()
        assert ended.returncode == 2
        assert ended.stderr.strip().splitlines()[-1] == (
            "simslm synth: error: synth: a worker process ended abruptly (killed by SIGKILL: out of memory, most "
            "likely) while running c-000001; re-run (with fewer workers if memory is short): a task that ends the "
            "process running it 2 times is skipped and counted")
        assert ("an earlier run's process ended while running c-000001; running it again" in ended.stderr) == (
            attempt == 1)
    done = run()
    assert done.returncode == 0, done.stderr
    assert "simslm synth: warning: skipping c-000001: it ended the process running it in 2 earlier runs" in done.stderr
    report = json.loads((out / "synth_report.json").read_text())
    assert report["skipped_by_reason"] == {"ended the process running it": 1}
    assert [u.transcript for u in read_manifest(out / "manifest.jsonl")] == ["One small cat.", "Three red birds."]
    assert validate_manifest(out / "manifest.jsonl") == []


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, lock_held_elsewhere):
    # Both used to speak the lines left and append to one journal, then each write the manifest.
    from simslm.speech.synth import LOCK_FILE

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One small cat.\n")
    config = SynthConfig(out=str(tmp_path / "out"), corpus=str(corpus), num_workers=1)
    pid, release = lock_held_elsewhere(tmp_path / "out" / LOCK_FILE)
    with pytest.raises(ValueError, match=rf"out: another `simslm synth` is writing it \(held by process {pid} on "):
        synthesize_corpus(config)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_FILE]  # nothing spoken, nothing written
    release()
    assert synthesize_corpus(config).num_synthesized == 1


def test_voice_set_and_limits_are_honoured(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"Sentence number {i} is here." for i in range(6)) + "\n")
    report = synthesize_corpus(SynthConfig(out=str(tmp_path / "o"), corpus=str(corpus), voice_set="heldout",
                                           offset=2, limit=3, num_workers=1, audio_format="wav"))
    utterances = read_manifest(report.manifest)
    assert [u.meta["source_line"] for u in utterances] == [2, 3, 4]
    assert all(u.speaker.startswith("heldout/") and u.audio.endswith(".wav") for u in utterances)
    peak = max(np.abs(soundfile.read(u.audio_path(tmp_path / "o"))[0]).max() for u in utterances)
    assert 0.05 < peak <= 1.0
    # Into the same folder, another voice set or seed would reuse the lines spoken before as they are: refused.
    # A larger --limit speaks only the new lines.
    before = (tmp_path / "o" / "manifest.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"o: spoken with other settings \(--voice-set heldout then, train now; "
                                         r"--audio-format wav then, flac now\); synthesise into another --out"):
        synthesize_corpus(SynthConfig(out=str(tmp_path / "o"), corpus=str(corpus), offset=2, limit=3,
                                      num_workers=1))
    assert (tmp_path / "o" / "manifest.jsonl").read_bytes() == before
    more = synthesize_corpus(SynthConfig(out=str(tmp_path / "o"), corpus=str(corpus), voice_set="heldout",
                                         offset=2, limit=4, num_workers=1, audio_format="wav"))
    assert (more.num_synthesized, more.num_reused) == (1, 3)


def test_a_range_that_leaves_out_earlier_lines_says_so(tmp_path, capsys):
    """The manifest lists the lines asked for: spoken in two ranges into one folder, the second range's manifest
    leaves out the first's utterances, which the folder still holds. Said, not silent; a range over both lists
    them all again without speaking them anew."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"Sentence number {i} is here." for i in range(6)) + "\n")
    out = tmp_path / "o"
    synthesize_corpus(SynthConfig(out=str(out), corpus=str(corpus), limit=2, num_workers=1))
    assert "warning" not in capsys.readouterr().err
    second = synthesize_corpus(SynthConfig(out=str(out), corpus=str(corpus), offset=4, limit=2, num_workers=1))
    assert [u.meta["source_line"] for u in read_manifest(second.manifest)] == [4, 5]
    assert (f"manifest.jsonl lists the 2 line(s) asked for (--offset 4, --limit 2); 2 other utterance(s) spoken "
            f"into {out} before are not in it") in capsys.readouterr().err
    whole = synthesize_corpus(SynthConfig(out=str(out), corpus=str(corpus), num_workers=1))
    assert (whole.num_synthesized, whole.num_reused) == (2, 4)
    assert len(read_manifest(whole.manifest)) == 6 and "warning" not in capsys.readouterr().err


def test_audio_is_the_same_whichever_worker_speaks_each_line(synthetic_corpus, tmp_path):
    # The fixture spoke these 4 lines on 2 workers, in whatever order the pool gave them out;
    # here one process speaks them in turn. Before each line ran in a fork of an untouched
    # engine, 798 of 800 demo files differed between two runs (docs/LOG.md, 2026-12-03).
    report = synthesize_corpus(SynthConfig(out=str(tmp_path / "one"), limit=4, num_workers=1))
    pooled = {u.id: u for u in read_manifest(synthetic_corpus)}
    for utterance in read_manifest(report.manifest):
        np.testing.assert_array_equal(soundfile.read(utterance.audio_path(tmp_path / "one"), dtype="int16")[0],
                                      soundfile.read(pooled[utterance.id].audio_path(synthetic_corpus.parent),
                                                     dtype="int16")[0])
        assert utterance.words == pooled[utterance.id].words


def test_a_corpus_of_many_lines_spreads_its_audio_over_folders(tmp_path):
    """Every line's audio went into one audio/ folder: millions of files for a corpus such as TinyStories."""
    from simslm.speech.synth import FILES_PER_FOLDER

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Line number {n}.\n" for n in range(FILES_PER_FOLDER + 2)))
    report = synthesize_corpus(SynthConfig(out=str(tmp_path / "out"), corpus=str(corpus), num_workers=1,
                                           id_prefix="r", offset=FILES_PER_FOLDER - 1, limit=2))
    assert [u.audio for u in read_manifest(report.manifest)] == [
        f"audio/0000/r-{FILES_PER_FOLDER - 1:06d}.flac", f"audio/0001/r-{FILES_PER_FOLDER:06d}.flac"]
    assert validate_manifest(report.manifest) == []
