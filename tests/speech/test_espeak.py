import numpy as np
import pytest

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


def test_repeated_synthesis_agrees_to_the_millisecond():
    # espeak-ng keeps a little state between calls (a few samples of drift, docs/LOG.md),
    # so audio is not bit-identical from call to call; words and timings must agree. The
    # first call after other voices (earlier tests in the same worker) drifts more, up to
    # 0.4% in a CI run: a warm-up call with these settings comes first.
    espeak.speak("The cat sat on the mat.", voice="en-us+f2", pitch=60, rate_wpm=170)
    first = espeak.speak("The cat sat on the mat.", voice="en-us+f2", pitch=60, rate_wpm=170)
    second = espeak.speak("The cat sat on the mat.", voice="en-us+f2", pitch=60, rate_wpm=170)
    assert abs(len(first[0]) - len(second[0])) < 0.001 * len(first[0])
    for (w1, s1, e1), (w2, s2, e2) in zip(first[2], second[2], strict=True):
        assert w1 == w2 and abs(s1 - s2) < 1e-3 and abs(e1 - e2) < 1e-3


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
