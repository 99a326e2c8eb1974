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


def _sinc_hann_by_definition(samples, source_rate, target_rate, zero_crossings=6, rolloff=0.99):
    """torchaudio's `sinc_interp_hann` resampling written out sample by sample, in float64: output n at time
    n / target and input k at k / source (rates over their gcd), each input weighted by a sinc at the lower
    rate's cut-off under a Hann window reaching `zero_crossings` zero crossings each side."""
    from math import ceil, gcd

    g = gcd(source_rate, target_rate)
    up, down = source_rate // g, target_rate // g
    cutoff = min(up, down) * rolloff
    out = np.zeros(ceil(len(samples) * down / up))
    for n in range(len(out)):
        u = (np.arange(len(samples)) / up - n / down) * cutoff
        inside = np.abs(u) <= zero_crossings
        weights = np.sinc(u[inside]) * np.cos(np.pi * u[inside] / zero_crossings / 2) ** 2 * cutoff / up
        out[n] = samples[inside] @ weights
    return out


@pytest.mark.parametrize(("source", "target"), [(44100, 16000), (22050, 16000), (24000, 16000), (8000, 16000),
                                                 (48000, 16000), (11025, 16000), (16000, 8000)])
def test_sinc_hann_resampling_is_torchaudios_definition(source, target):
    """slamkit resamples every file not at 16 kHz with torchaudio's default; `sinc-hann` is that filter."""
    rng = np.random.default_rng(source)
    for length in (1, 3, 441, 2000):
        samples = rng.uniform(-1, 1, length).astype(np.float32)
        resampled = audio.resample(samples, source, target, "sinc-hann")
        assert resampled.dtype == np.float32
        # Within what torchaudio's float32 taps allow (their times k / source are rounded to float32 before the
        # cut-off scales them: up to 3e-5 at 22.05 kHz); a filter 0.5% narrower is 30x further off.
        np.testing.assert_allclose(resampled, _sinc_hann_by_definition(samples.astype(np.float64), source, target),
                                   atol=1e-4)
    narrower = _sinc_hann_by_definition(samples.astype(np.float64), source, target, rolloff=0.985)
    assert np.abs(resampled - narrower).max() > 3e-3
    assert np.array_equal(audio.resample(samples, target, target, "sinc-hann"), samples)


def test_sinc_hann_keeps_torchaudios_float32_output_length():
    """torchaudio takes ceil(len * new / old) in float32, which for a long recording can fall one sample short of
    the exact count; slamkit's units come from that many samples (checked beside torchaudio's own code:
    docs/BENCHMARKS.md, "Resampling beside torchaudio")."""
    length = 3_000_010  # 68 s at 44.1 kHz: 1,088,439.0 in float32, 1,088,439.002 exactly
    assert -(-length * 160 // 441) == 1_088_440
    assert len(audio.resample(np.zeros(length, np.float32), 44100, 16000, "sinc-hann")) == 1_088_439


def test_a_file_at_another_rate_is_read_through_the_resampler_asked_for(tmp_path):
    rng = np.random.default_rng(0)
    samples = (0.3 * rng.standard_normal(24000)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", samples, 24000, subtype="FLOAT")
    for resampler in audio.RESAMPLERS:
        np.testing.assert_array_equal(audio.load_audio(tmp_path / "a.wav", resampler=resampler),
                                      audio.resample(samples, 24000, 16000, resampler))
    soxr_read, sinc_read = (audio.load_audio(tmp_path / "a.wav", resampler=r) for r in ("soxr", "sinc-hann"))
    assert np.sqrt(np.mean((soxr_read - sinc_read) ** 2)) > 1e-3  # they differ, near the band's top
    with pytest.raises(ValueError, match="unknown resampler 'linear'"):
        audio.load_audio(tmp_path / "a.wav", resampler="linear")


def test_the_errors_a_worker_hands_back_cross_processes_whole():
    """Exceptions are unpickled from their message: AudioError(message) failed for want of its `kind` (a TypeError
    in the parent in place of the audio's problem), SkipSample took the message for its reason."""
    import pickle

    from simslm.sequences.interleave import SkipReason, SkipSample

    error = pickle.loads(pickle.dumps(audio.AudioError("/x.flac", audio.AudioProblem.UNREADABLE, "bad header")))
    assert (str(error), error.kind, error.problem) == (
        "/x.flac: not a readable audio file (WAV, FLAC, MP3, Ogg) (bad header)", audio.AudioProblem.UNREADABLE,
        "not a readable audio file (WAV, FLAC, MP3, Ogg) (bad header)")
    assert pickle.loads(pickle.dumps(SkipSample(SkipReason.EMPTY))).reason is SkipReason.EMPTY
