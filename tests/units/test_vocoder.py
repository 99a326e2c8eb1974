import numpy as np
import pytest

from simslm.speech.manifest import read_manifest
from simslm.units.encoders import LogMelEncoder
from simslm.units.folder import read_units
from simslm.units.vocoder import LogMelInversionVocoder


def test_units_become_audio_of_their_duration_with_the_reference_level(extracted):
    config, _, _ = extracted
    utterance = read_manifest(config.manifest)[0]
    units = next(u for u in read_units(config.out) if u.id == utterance.id)
    frame_units = units.frame_units()[:100]  # 4 s of 40 ms frames
    waveform = LogMelInversionVocoder(config.codebook, iterations=8)(frame_units, utterance.audio)
    encoder = LogMelEncoder()
    expected = (len(frame_units) * encoder.stack - 1) * encoder.hop_samples + encoder.window_samples
    assert waveform.dtype == np.float32 and len(waveform) == expected
    assert np.isfinite(waveform).all() and np.abs(waveform).max() == pytest.approx(0.5)


def test_only_logmel_codebooks_can_be_inverted(tmp_path):
    from simslm.units.kmeans import Codebook

    path = Codebook(np.zeros((4, 768), np.float32), {"encoder": {"name": "mhubert-25hz"}}).save(tmp_path / "km")
    with pytest.raises(ValueError, match="needs logmel units"):
        LogMelInversionVocoder(str(path))
