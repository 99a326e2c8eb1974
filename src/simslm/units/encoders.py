"""Speech encoders by registry: audio -> feature frames at a declared rate.

As in the paper, mHuBERT-25Hz layer 11 (Hassid et al.); offline, a `logmel` encoder at the
same 25 Hz. Encoders register by name in `ENCODERS` with their frame rate and defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


def mel_filterbank(num_mels: int, fft_size: int, sample_rate: int = 16000,
                   low_hz: float = 20.0, high_hz: float | None = None) -> np.ndarray:
    """Triangular filters on the HTK mel scale, shape (num_mels, fft_size // 2 + 1)."""
    high_hz = high_hz or sample_rate / 2
    to_mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    to_hz = lambda mel: 700.0 * (10 ** (mel / 2595.0) - 1.0)  # noqa: E731
    edges = to_hz(np.linspace(to_mel(low_hz), to_mel(high_hz), num_mels + 2))
    bins = np.linspace(0, sample_rate / 2, fft_size // 2 + 1)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (center - lower)
    falling = (upper - bins) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMelEncoder:
    """Offline encoder: log-mel at 100 Hz, 4 frames stacked to 25 Hz, normalised per utterance.

    25 ms windows every 10 ms (the usual ASR front end); stacking 4 frames keeps the
    within-40 ms dynamics that averaging would lose and matches mHuBERT-25Hz's rate.
    """

    name = "logmel"
    frame_rate_hz = 25.0

    def __init__(self, num_mels: int = 40, stack: int = 4):
        self.num_mels, self.stack = num_mels, stack
        self.window_samples, self.hop_samples, self.fft_size = 400, 160, 512
        self.filters = mel_filterbank(num_mels, self.fft_size)
        self.window = np.hanning(self.window_samples).astype(np.float32)
        self.dim = num_mels * stack

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel energies (frames, num_mels) at 100 Hz, before stacking and normalisation."""
        if len(samples) < self.window_samples:
            return np.empty((0, self.num_mels), dtype=np.float32)
        num_frames = 1 + (len(samples) - self.window_samples) // self.hop_samples
        strides = (samples.strides[0] * self.hop_samples, samples.strides[0])
        frames = np.lib.stride_tricks.as_strided(samples, (num_frames, self.window_samples), strides)
        power = np.abs(np.fft.rfft(frames * self.window, n=self.fft_size)) ** 2
        return np.log(power @ self.filters.T + 1e-6).astype(np.float32)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Features (frames, dim) for 16 kHz mono samples; one frame per 40 ms."""
        log_mel = self.log_mel(samples)
        num_frames = len(log_mel) - len(log_mel) % self.stack
        if num_frames == 0:
            raise ValueError(f"audio shorter than {self.stack * self.hop_samples / 16000:.2f} s")
        stacked = log_mel[:num_frames].reshape(num_frames // self.stack, self.dim)
        # Per-utterance normalisation removes channel and speaker level differences.
        return (stacked - stacked.mean(axis=0)) / (stacked.std(axis=0) + 1e-5)


class HubertEncoder:
    """Hidden states of one layer of a Hugging Face `HubertModel` (path or hub id)."""

    def __init__(self, name: str, model_path: str, layer: int, frame_rate_hz: float):
        import torch
        from transformers import HubertModel

        try:
            # trust_remote_code stays off: HubertModel is a transformers class.
            self._model = HubertModel.from_pretrained(model_path, torch_dtype=torch.float32).eval()
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load HuBERT model '{model_path}' for encoder '{name}' ({error}); "
                             f"pass --model-path with a local folder of a saved HubertModel") from None
        config = self._model.config
        if not 0 < layer <= config.num_hidden_layers:
            raise ValueError(f"{model_path}: layer {layer} does not exist (the model has "
                             f"{config.num_hidden_layers} layers)")
        actual_rate = 16000 / math.prod(config.conv_stride)
        if abs(actual_rate - frame_rate_hz) > 1e-6:
            raise ValueError(f"{model_path}: its convolutions give {actual_rate:g} frames/s, but encoder "
                             f"'{name}' is declared at {frame_rate_hz:g}")
        self.name, self.layer, self.frame_rate_hz = name, layer, frame_rate_hz
        self.dim = config.hidden_size
        self._torch = torch

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Layer-`layer` features (frames, hidden size) for 16 kHz mono samples."""
        with self._torch.inference_mode():
            inputs = self._torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
            # Only the layers up to `layer` are needed; hidden_states[0] is the CNN output.
            hidden = self._model(inputs, output_hidden_states=True).hidden_states[self.layer]
        return hidden[0].numpy()


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """Which encoder, and for HuBERT ones which checkpoint and layer (None = the registry default)."""

    name: str = "logmel"
    model_path: str | None = None
    layer: int | None = None


# name -> (frame rate, default checkpoint, default layer, factory(spec))
ENCODERS: dict[str, tuple[float, str | None, int | None, Callable[[str, int | None], Any]]] = {
    "logmel": (25.0, None, None, lambda path, layer: LogMelEncoder()),
    # The paper's tokenizer: mHuBERT-25Hz (Hassid et al.), layer 11, 500 units.
    "mhubert-25hz": (25.0, "slprl/mhubert-base-25hz", 11,
                     lambda path, layer: HubertEncoder("mhubert-25hz", path, layer, 25.0)),
    "hubert-base-l9": (50.0, "facebook/hubert-base-ls960", 9,
                       lambda path, layer: HubertEncoder("hubert-base-l9", path, layer, 50.0)),
}


def build_encoder(spec: EncoderSpec):
    """Instantiate a registered encoder."""
    if spec.name not in ENCODERS:
        raise ValueError(f"unknown encoder '{spec.name}'; known: {', '.join(ENCODERS)}")
    _, default_path, default_layer, factory = ENCODERS[spec.name]
    return factory(spec.model_path or default_path, spec.layer if spec.layer is not None else default_layer)


def describe_encoders() -> str:
    """One line per registered encoder, for --help."""
    return "; ".join(f"{name} ({rate:g} Hz{f', {path} layer {layer}' if path else ''})"
                     for name, (rate, path, layer, _) in ENCODERS.items())
