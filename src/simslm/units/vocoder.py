"""Units back to audio: centroid log-mels inverted with Griffin-Lim (offline stand-in for a unit HiFi-GAN)."""

from __future__ import annotations

import numpy as np

from simslm.speech import audio
from simslm.units import kmeans


class LogMelInversionVocoder:
    """`logmel` units -> audio: centroid log-mels, de-normalised with a reference's statistics, Griffin-Lim.

    The logmel encoder normalises each utterance, so absolute level and spectral tilt come
    from a reference recording (the prompt's own audio). Each unit lasts one 40 ms frame
    group (4 x 10 ms), the encoder's rate.
    """

    def __init__(self, codebook_path: str, iterations: int = 32):
        from simslm.units.encoders import LogMelEncoder

        self.codebook = kmeans.Codebook.load(codebook_path)
        if self.codebook.meta.get("encoder", {}).get("name") != "logmel":
            raise ValueError(f"{codebook_path}: the log-mel inversion vocoder needs logmel units")
        self.encoder = LogMelEncoder()
        self.iterations = iterations
        self._inverse = np.linalg.pinv(self.encoder.filters)

    def __call__(self, units: np.ndarray, reference_audio: str) -> np.ndarray:
        encoder = self.encoder
        reference = encoder.log_mel(audio.load_audio(reference_audio))
        stacked = reference[:len(reference) - len(reference) % encoder.stack].reshape(-1, encoder.dim)
        features = self.codebook.centroids[np.asarray(units)] * stacked.std(axis=0) + stacked.mean(axis=0)
        log_mel = features.reshape(-1, encoder.num_mels)
        magnitude = np.sqrt(np.maximum(np.exp(log_mel) @ self._inverse.T, 0.0))
        return self._griffin_lim(magnitude)

    def _griffin_lim(self, magnitude: np.ndarray) -> np.ndarray:
        encoder = self.encoder
        window, hop, size = encoder.window, encoder.hop_samples, encoder.window_samples
        num_frames = magnitude.shape[0]
        length = (num_frames - 1) * hop + size
        phase = np.exp(2j * np.pi * np.random.default_rng(0).random(magnitude.shape))
        norm = np.zeros(length)
        for i in range(num_frames):
            norm[i * hop:i * hop + size] += window ** 2
        norm = np.maximum(norm, 1e-8)
        signal = np.zeros(length)
        for _ in range(self.iterations):
            frames = np.fft.irfft(magnitude * phase, n=encoder.fft_size)[:, :size] * window
            signal[:] = 0.0
            for i in range(num_frames):
                signal[i * hop:i * hop + size] += frames[i]
            signal /= norm
            strides = (signal.strides[0] * hop, signal.strides[0])
            analysed = np.fft.rfft(np.lib.stride_tricks.as_strided(signal, (num_frames, size), strides) * window,
                                   n=encoder.fft_size)
            phase = np.exp(1j * np.angle(analysed))
        peak = np.abs(signal).max()
        return (0.5 * signal / peak if peak > 0 else signal).astype(np.float32)
