"""Speech encoders by registry: audio -> feature frames at a declared rate.

As in the paper, mHuBERT-25Hz layer 11 (Hassid et al.); offline, a `logmel` encoder at the
same 25 Hz. Encoders register by name in `ENCODERS` with their frame rate and defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from simslm import machine
from simslm.speech.audio import RESAMPLERS


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

    def _frames(self, samples: np.ndarray) -> np.ndarray:
        """Overlapping windows of the samples (a view), (frames, window_samples)."""
        num_frames = max(0, 1 + (len(samples) - self.window_samples) // self.hop_samples)
        strides = (samples.strides[0] * self.hop_samples, samples.strides[0])
        return np.lib.stride_tricks.as_strided(samples, (num_frames, self.window_samples), strides, writeable=False)

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel energies (frames, num_mels) at 100 Hz, before stacking and normalisation."""
        return self._log_mel_batch([np.ascontiguousarray(samples, dtype=np.float32)])[0]

    # Frames per FFT call: short utterances are gathered up to about this many (10 s of audio), so the per-call
    # cost is paid once for many; a whole batch in one call is slower (its arrays leave the cache): measured
    # 1.5x one at a time on 0.5-2 s utterances, 0.6x as one block (docs/BENCHMARKS.md, 2026-11-30).
    FFT_BLOCK_FRAMES = 1024

    def _log_mel_batch(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        import scipy.fft  # float32 FFT, about twice numpy's here

        frames = [self._frames(samples) for samples in batch]
        blocks, pending, count = [], [], 0
        for index, utterance_frames in enumerate(frames):
            pending.append(utterance_frames)
            count += len(utterance_frames)
            if count >= self.FFT_BLOCK_FRAMES or index == len(frames) - 1:
                windowed = np.concatenate(pending) * self.window
                spectrum = scipy.fft.rfft(windowed, n=self.fft_size)
                blocks.append(np.log((spectrum.real ** 2 + spectrum.imag ** 2) @ self.filters.T + 1e-6))
                pending, count = [], 0
        log_mel = np.concatenate(blocks).astype(np.float32) if blocks else np.empty((0, self.num_mels), np.float32)
        return np.split(log_mel, np.cumsum([len(f) for f in frames])[:-1])

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Features (frames, dim) for 16 kHz mono samples; one frame per 40 ms."""
        return self.encode_batch([samples])[0]

    def encode_batch(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """`encode` of each utterance, computed together; raises ValueError for audio under one frame group."""
        features = []
        for log_mel in self._log_mel_batch([np.ascontiguousarray(s, dtype=np.float32) for s in batch]):
            num_frames = len(log_mel) - len(log_mel) % self.stack
            if num_frames == 0:
                raise ValueError(f"audio shorter than {self.stack * self.hop_samples / 16000:.2f} s")
            stacked = log_mel[:num_frames].reshape(num_frames // self.stack, self.dim)
            # Per-utterance normalisation removes channel and speaker level differences.
            features.append((stacked - stacked.mean(axis=0)) / (stacked.std(axis=0) + 1e-5))
        return features

    def batches(self, lengths: list[int], batch_size: int) -> list[list[int]]:
        """Indices of utterances to encode together: any grouping gives the same features."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class OutOfMemory(ValueError):
    """The encoder ran out of memory on the audio given (a recording of an hour, say): raised as the encoder's
    refusal of that audio, so a batch is tried again one utterance at a time and an utterance alone is skipped and
    counted, where the allocator's error would end the whole extraction, and every rerun of it at the same shard.
    (slamkit's `extract_features` encodes each file whole too, and stops there.)"""

    reason = "out of memory (too long to encode whole)"


class HubertEncoder:
    """Hidden states of one layer of a Hugging Face `HubertModel` (path or hub id), one utterance or a batch.

    `edge_pad` zero samples go before and after each utterance, as slamkit's `HubertFeatureExtractor.extract` adds
    them (`F.pad(wav, (40, 40))`) to every waveform it encodes, in training data and benchmarks alike: the SIMS
    models read units of audio padded so. It moves every frame's window 2.5 ms earlier and adds a frame to a
    quarter of utterances at 50 Hz (an eighth at 25 Hz), so units with and without it differ; a codebook records
    which (`EncoderSpec.edge_pad`).

    Batches are exact: a model whose feature extractor normalises per frame (`feat_extract_norm="layer"`) is fed
    padded batches with an attention mask, which leaves every real frame as it is alone; one that normalises each
    channel over the whole utterance (`"group"`, HuBERT-base and mHuBERT-25Hz) would see the padding, so it is
    batched only with utterances of exactly the same length (buckets, no padding).
    """

    def __init__(self, name: str, model_path: str, layer: int, frame_rate_hz: float, device: str = "cpu",
                 dtype: str = "float32", edge_pad: int = 0):
        import torch
        from transformers import HubertModel

        try:
            # trust_remote_code stays off: HubertModel is a transformers class.
            self._model = HubertModel.from_pretrained(model_path, **machine.float32_weights()).eval()
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
        if not config.do_stable_layer_norm:
            # Layers past `layer` do not change hidden_states[layer]: dropped, they cost nothing (a quarter of
            # HuBERT-base at layer 9). The stable-layer-norm variant norms its last output, so it keeps them all.
            self._model.encoder.layers = self._model.encoder.layers[:layer]
        self.name, self.layer, self.frame_rate_hz, self.edge_pad = name, layer, frame_rate_hz, edge_pad
        self.dim = config.hidden_size
        self.pads = config.feat_extract_norm == "layer"
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        self._model.to(self.device, self.dtype)
        self._torch = torch

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Layer-`layer` features (frames, hidden size) for 16 kHz mono samples."""
        return self.encode_batch([samples])[0]

    def encode_batch(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        """`encode` of each utterance, in one forward pass (padded only when the model allows it)."""
        torch = self._torch
        lengths = torch.tensor([len(samples) + 2 * self.edge_pad for samples in batch])
        if not self.pads and len(set(lengths.tolist())) > 1:
            raise ValueError(f"{self.name}: a group-norm feature extractor takes only utterances of one length "
                             f"together (see `batches`)")
        inputs = torch.zeros(len(batch), int(lengths.max()))  # the edge pads are these zeros either side
        for row, samples in enumerate(batch):
            inputs[row, self.edge_pad:self.edge_pad + len(samples)] = torch.from_numpy(
                np.asarray(samples, dtype=np.float32))
        mask = (torch.arange(inputs.shape[1])[None] < lengths[:, None]).long() if self.pads else None
        failure = None
        try:
            with torch.inference_mode():
                hidden = self._model(inputs.to(self.device, self.dtype),
                                     attention_mask=None if mask is None else mask.to(self.device),
                                     output_hidden_states=True).hidden_states[self.layer]
                frames = self._model._get_feat_extract_output_lengths(lengths).tolist()
                hidden = hidden.float().cpu().numpy()
        except (RuntimeError, MemoryError) as error:
            if not machine.out_of_memory(error):
                raise
            failure = str(error).strip().splitlines()[0][:200]
        if failure is not None:
            machine.release_device_memory(self.device)
            seconds = sum(len(samples) for samples in batch) / 16000
            what = f"{seconds:.1f} s of audio" if len(batch) == 1 else f"{len(batch)} utterances ({seconds:.1f} s)"
            raise OutOfMemory(f"{self.name} ran out of memory on {what} ({failure}); cut long recordings into "
                              f"utterances first (`simslm segment`)")
        return [hidden[row, :count] for row, count in enumerate(frames)]

    def batches(self, lengths: list[int], batch_size: int) -> list[list[int]]:
        """Indices of utterances to encode together: by length, so padding is least (or, for a group-norm
        extractor, none: equal lengths only)."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        if self.pads:
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        groups: dict[int, list[int]] = {}
        for index in order:
            groups.setdefault(lengths[index], []).append(index)
        return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


# Zero samples slamkit's HubertFeatureExtractor adds at each end of a waveform before HuBERT (`extract`:
# `F.pad(wav, (40, 40))`), in `extract_features` and in every evaluation: the units the SIMS models read.
SLAMKIT_EDGE_PAD = 40
# slamkit's `WavDataset` brings every file to 16 kHz with torchaudio.functional.resample at its defaults.
SLAMKIT_RESAMPLER = "sinc-hann"


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """Which encoder, and for HuBERT ones which checkpoint and layer (None = the registry default), how many
    zero samples go at each end of the audio (`HubertEncoder`), and how audio not at 16 kHz is resampled before it
    (`audio.RESAMPLERS`).

    `edge_pad` is 0 and `resampler` soxr when not given, which is how codebooks recorded before them were fit and
    must go on encoding; a new codebook records the encoder's standard ones (`standard`)."""

    name: str = "logmel"
    model_path: str | None = None
    layer: int | None = None
    edge_pad: int = 0
    resampler: str = "soxr"

    @classmethod
    def standard(cls, name: str, model_path: str | None = None, layer: int | None = None,
                 edge_pad: int | None = None, resampler: str | None = None) -> "EncoderSpec":
        """A new spec: HuBERT encoders pad and resample as slamkit's extraction does unless told otherwise; logmel,
        simslm's own, never pads and resamples with soxr."""
        if edge_pad is None:
            edge_pad = 0 if name == "logmel" else SLAMKIT_EDGE_PAD
        if resampler is None:
            resampler = "soxr" if name == "logmel" else SLAMKIT_RESAMPLER
        spec = cls(name=name, model_path=model_path, layer=layer, edge_pad=edge_pad, resampler=resampler)
        spec.check()
        return spec

    @classmethod
    def recorded(cls, record: Any) -> "EncoderSpec | None":
        """The spec a codebook sidecar or a units.json records (a field recorded only since, such as `edge_pad`,
        at its default); None for what is not one."""
        try:
            return cls(**record)
        except TypeError:
            return None

    def check(self) -> None:
        if self.edge_pad < 0 or (self.edge_pad and self.name == "logmel"):
            raise ValueError(f"--edge-pad {self.edge_pad}: edge padding is for HuBERT encoders, in samples (0 or more)")
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"--resampler {self.resampler}: not one of {', '.join(RESAMPLERS)}")


# name -> (frame rate, default checkpoint, default layer, factory(checkpoint, layer, device=, dtype=, edge_pad=))
ENCODERS: dict[str, tuple[float, str | None, int | None, Callable[..., Any]]] = {
    # numpy on the CPU, in float32, whatever the device asked for: it is not what a GPU is needed for.
    "logmel": (25.0, None, None, lambda path, layer, **_: LogMelEncoder()),
    # The paper's tokenizer: mHuBERT-25Hz (Hassid et al.), layer 11, 500 units.
    "mhubert-25hz": (25.0, "slprl/mhubert-base-25hz", 11,
                     lambda path, layer, **run: HubertEncoder("mhubert-25hz", path, layer, 25.0, **run)),
    "hubert-base-l9": (50.0, "facebook/hubert-base-ls960", 9,
                       lambda path, layer, **run: HubertEncoder("hubert-base-l9", path, layer, 50.0, **run)),
}


def build_encoder(spec: EncoderSpec, device: str = "cpu", dtype: str = "float32"):
    """Instantiate a registered encoder on a torch device, in a torch dtype (for those that use torch)."""
    if spec.name not in ENCODERS:
        raise ValueError(f"unknown encoder '{spec.name}'; known: {', '.join(ENCODERS)}")
    _, default_path, default_layer, factory = ENCODERS[spec.name]
    spec.check()
    return factory(spec.model_path or default_path, spec.layer if spec.layer is not None else default_layer,
                   device=device, dtype=dtype, edge_pad=spec.edge_pad)


def describe_encoders() -> str:
    """One line per registered encoder, for --help."""
    return "; ".join(f"{name} ({rate:g} Hz{f', {path} layer {layer}' if path else ''})"
                     for name, (rate, path, layer, _) in ENCODERS.items())
