import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from simslm import jobs
from simslm.speech import espeak, text
from simslm.speech.synth import VOICE_SETS


def test_every_word_gets_ordered_timings_inside_the_audio():
    sentence = ("One day, there was a little girl in the park. She said: \"Mr. Smith's dog\u2014named Rex\u2014ran "
                "1990 miles!\" Was it for a while? It's well-known.")
    spoken = text.speakable(sentence)
    samples, sample_rate, timings = espeak.speak(spoken)
    assert [w for w, _, _ in timings] == text.words(spoken)
    duration = len(samples) / sample_rate
    starts = [s for _, s, _ in timings]
    assert starts == sorted(starts)
    assert all(0 <= s < e <= duration for _, s, e in timings)


@pytest.mark.parametrize("voice", ["en-us", "en-us+f2", "en-gb-x-gbcwmd+m6", "en-029+f5"])
def test_words_hold_the_speech_and_gaps_the_silence(voice):
    # en-gb-x-gbcwmd (West Midlands) drops /h/: "Hello there" is one group, before its first mark.
    samples, sample_rate, timings = espeak.speak("Hello there. This is a test. Goodbye now.", voice=voice)
    energy = samples.astype(np.float64) ** 2
    inside = np.zeros(len(samples), bool)
    for _, start, end in timings:
        inside[int(start * sample_rate):int(end * sample_rate)] = True
    # Nearly all the signal energy lies inside the timed words (pauses are near-silent).
    assert energy[inside].sum() / energy.sum() > 0.97
    assert energy[~inside].mean() < 0.05 * energy[inside].mean()


def test_a_texts_audio_does_not_depend_on_what_was_spoken_before():
    # espeak-ng carries its waveform generator's state from call to call (docs/LOG.md,
    # 2026-12-03): spoken straight after another text, the same text came out ~900 samples
    # longer. `speak` runs each call in a fork of the keeper's untouched engine, so the audio is
    # exactly that of a new interpreter's engine at its first use.
    sentences = ("Molly was a 3 year old girl who loved to fly.", "It was warm.")
    arguments = {"voice": "en-us+f2", "pitch": 78, "rate_wpm": 167}
    first = espeak.speak(" ".join(sentences), **arguments)
    espeak.speak("A dog ran after a red ball in the park.", voice="en-gb-x-rp+m2")
    again = espeak.speak(" ".join(sentences), **arguments)
    # The reference: a new interpreter's engine used directly, no keeper. This sentence and voice also show that
    # merely selecting another voice first changes the audio (the keeper once did, to save 8 ms a call).
    script = ("import sys, json, numpy; from simslm.speech import espeak; "
              "sentences, arguments = json.loads(sys.argv[1]); "
              "speeches = espeak._synthesize_each([espeak.marked_ssml(s) for s in sentences], "
              "{**arguments, 'pitch_range': 50, 'ssml': True}); "
              "sys.stdout.buffer.write(numpy.concatenate([s.samples for s in speeches]).tobytes())")
    alone = np.frombuffer(subprocess.run([sys.executable, "-c", script, json.dumps([sentences, arguments])],
                                         capture_output=True, check=True).stdout, np.int16)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[0], alone)
    assert first[2] == again[2]


def test_the_engine_itself_keeps_state_between_calls():
    # What the keeper guards against, so the test above would fail without it.
    script = ("from simslm.speech import espeak; engine = espeak.Espeak.instance(); "
              "say = lambda: engine.synthesize('The cat sat on the mat.').samples.tobytes(); "
              "first = say(); engine.synthesize('A dog ran after a red ball.'); print(first == say())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False"]


def test_a_crash_in_a_forked_call_is_an_error_and_the_next_call_works():
    keeper = espeak.keeper()
    with pytest.raises(espeak.EspeakError, match=r"ended without a result \(status 3\)"):
        keeper.call(os._exit, 3)  # as a call that dies in the C library
    with pytest.raises(espeak.EspeakError, match=r"ended without a result \(signal 9\)"):
        keeper.call(signal.raise_signal, signal.SIGKILL)  # killed, as a crashed call is
    # Each call is a fork of the keeper: another process, never this one or the keeper itself.
    first, second = keeper.call(os.getpid), keeper.call(os.getpid)
    assert len({first, second, os.getpid(), keeper.process.pid}) == 4


def test_the_process_engine_is_free_for_phonemes_without_changing_speech():
    # Many espeak_TextToPhonemes calls once changed what later synthesis reported (a sentence's first
    # mark went missing, docs/LOG.md); speech now comes from the keeper's untouched engine.
    arguments = {"voice": "en+f1", "pitch": 60, "rate_wpm": 170}
    before = espeak.speak("Once upon a time there was a cat. She was happy.", **arguments)
    engine = espeak.Espeak.instance()
    for word in "the quick brown fox jumps over a lazy dog while birds were singing in trees".split() * 20:
        engine.phonemes(word + "s", "en+f1")
    after = espeak.speak("Once upon a time there was a cat. She was happy.", **arguments)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[2] == after[2]


def test_a_call_the_keeper_cannot_import_is_an_error_and_the_keeper_stays(monkeypatch):
    keeper = espeak.keeper()
    # A function of a module that exists only in this process: it pickles here, but not in the keeper.
    here_only = types.ModuleType("simslm_test_here_only")
    exec("def answer():\n    return 42\n", here_only.__dict__)
    here_only.answer.__module__ = here_only.__name__
    monkeypatch.setitem(sys.modules, here_only.__name__, here_only)
    with pytest.raises(ImportError, match="simslm_test_here_only"):
        keeper.call(here_only.answer)
    assert keeper.call(len, "still here") == 10


def test_split_counts_follows_connected_speech():
    # "for a": espeak-ng speaks a linking r that the words alone do not have.
    assert espeak.split_counts(["f", "O@", "r", "a#"], [("f", "O@"), ("a#",)]) == [3, 1]
    assert espeak.split_counts(["D", "e@", "w", "V", "z"], [("D", "e@"), ("w", "V", "z")]) == [2, 3]
    assert espeak.split_counts(["a"], [("a",), ("b",)]) is None


@pytest.mark.parametrize("voice_set", sorted(VOICE_SETS))
def test_every_voice_of_every_set_exists(voice_set):
    engine = espeak.Espeak.instance()
    for preset in VOICE_SETS[voice_set]:
        engine.set_voice(preset.voice)


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(espeak.EspeakError, match="no voice 'xx-nowhere'"):
        espeak.speak("hello", voice="xx-nowhere")


def test_text_without_words_is_refused():
    with pytest.raises(ValueError, match="no words"):
        espeak.speak("... !!")


def test_the_keeper_leaves_with_its_owner():
    if not jobs.proc_shows_this_namespace():  # where it lists another namespace's, the keeper's pid is not found
        pytest.skip("reads the keeper's state from /proc, which here is not this PID namespace's")
    script = ("from simslm.speech import espeak; keeper = espeak.keeper(); keeper.call(len, 'x'); "
              "print(keeper.process.pid)")
    # Not its stderr: the keeper shares it, and waiting for that pipe to close would wait for the keeper.
    pid = int(subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, check=True).stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:  # gone, or a zombie waiting for whoever inherited it
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)
    raise AssertionError(f"the keeper {pid} outlived its owner")
