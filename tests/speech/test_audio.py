import numpy as np
import pytest
import soundfile

from simslm.speech import audio


def _tone(sample_rate, seconds=1.0, frequency=440.0):
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return 0.5 * np.sin(2 * np.pi * frequency * t)


@pytest.mark.parametrize("sample_rate,channels,suffix", [(44100, 2, ".wav"), (8000, 1, ".flac"), (22050, 3, ".wav"),
                                                         (16000, 1, ".flac")])


def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path, sample_rate, channels, suffix):
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, np.stack([_tone(sample_rate)] * channels, axis=1), sample_rate)
    samples = audio.load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 440) < 3  # the tone survives resampling


def test_channels_are_averaged(tmp_path):
    path = tmp_path / "stereo.wav"
    left = _tone(16000)
    soundfile.write(path, np.stack([left, np.zeros_like(left)], axis=1), 16000)
    assert np.allclose(audio.load_audio(path), left / 2, atol=1e-3)


def _bad_files(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    truncated = tmp_path / "truncated.wav"
    soundfile.write(truncated, _tone(16000, 2.0), 16000, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:20000])
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000), 16000)
    no_samples = tmp_path / "no_samples.wav"
    soundfile.write(no_samples, np.zeros(0), 16000)
    return {"empty": empty, "not a readable": corrupt, "truncated": truncated, "silent": silent,
            "no audio samples": no_samples, "does not exist": tmp_path / "missing.wav"}


def test_bad_files_raise_an_error_naming_the_file_and_problem(tmp_path):
    for problem, path in _bad_files(tmp_path).items():
        with pytest.raises(audio.AudioError) as caught:
            audio.load_audio(path)
        assert str(path) in str(caught.value) and problem in str(caught.value), (problem, str(caught.value))
        # Batch jobs count skips by kind, not by message: the kind is the message's stable part.
        assert caught.value.kind.value in str(caught.value) and isinstance(caught.value.kind, audio.AudioProblem)


def test_silence_is_allowed_on_request(tmp_path):
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros(8000), 16000)
    assert not audio.load_audio(path, allow_silent=True).any()


def test_write_audio_is_atomic_and_16_bit(tmp_path):
    path = tmp_path / "out" / "x.flac"
    audio.write_audio(path, _tone(16000))
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert [p.name for p in path.parent.iterdir()] == ["x.flac"]
