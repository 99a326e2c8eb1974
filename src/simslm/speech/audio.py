"""Audio input: WAV, FLAC, MP3 or Ogg (any sample rate, channels) to 16 kHz mono float32, with clear errors."""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path

import numpy as np
import soundfile
import soxr

from simslm import storage

TARGET_SAMPLE_RATE = 16_000
# The audio files simslm reads (libsndfile >= 1.1 decodes MP3 and Ogg Vorbis/Opus, and knows a file by its bytes): the
# formats speech corpora come in, LibriSpeech's FLAC, Common Voice's MP3, Opus (Multilingual LibriSpeech's).
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
# Peak below this (about -60 dBFS) counts as silence: such a file carries no speech to
# encode or align, and is almost always a broken export rather than real data.
SILENCE_PEAK = 1e-3


class AudioProblem(str, enum.Enum):
    """What is wrong with an audio file: the kind a batch job counts its skips by."""

    MISSING = "file does not exist"
    URL = "a URL, not a local file (simslm reads local audio: download the corpus first)"
    EMPTY_FILE = "empty file"
    UNREADABLE = "not a readable audio file (WAV, FLAC, MP3, Ogg)"
    NO_SAMPLES = "contains no audio samples"
    TRUNCATED = "truncated"
    NOT_FINITE = "contains NaN or infinite samples"
    SILENT = "silent"


class AudioError(ValueError):
    """A problem with one audio file; the message names the file, `kind` says which problem."""

    def __init__(self, path: str | os.PathLike, kind: AudioProblem, detail: str = ""):
        self.path, self.kind, self.detail = str(path), kind, detail
        self.problem = kind.value + (f" ({detail})" if detail else "")
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # across processes (a pool's worker to its parent) by what it was made of, not its message
        return type(self), (self.path, self.kind, self.detail)


def audio_info(path: str | os.PathLike) -> tuple[int, float]:
    """Return (sample rate, duration in seconds) from the header, without decoding."""
    path = Path(path)
    _check_exists(path)
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(path, AudioProblem.UNREADABLE, str(error)) from None
    if info.frames <= 0:
        raise AudioError(path, AudioProblem.NO_SAMPLES)
    return info.samplerate, info.frames / info.samplerate


def load_audio(path: str | os.PathLike, sample_rate: int = TARGET_SAMPLE_RATE,
               allow_silent: bool = False, resampler: str = "soxr") -> np.ndarray:
    """Read an audio file (WAV, FLAC, MP3, Ogg) as mono float32 at `sample_rate`; raise `AudioError` if unusable.

    Channels are averaged; another rate is resampled by `resampler` (`RESAMPLERS`). Empty, truncated,
    corrupt and (unless `allow_silent`) silent files raise with the file named.
    """
    path = Path(path)
    _check_exists(path)
    try:
        with soundfile.SoundFile(str(path)) as handle:
            source_rate = handle.samplerate
            samples = handle.read(dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(path, AudioProblem.UNREADABLE, str(error)) from None
    if samples.shape[0] == 0:
        raise AudioError(path, AudioProblem.NO_SAMPLES)
    declared = _declared_frames(path, samples.shape[1])
    if declared is not None and samples.shape[0] < declared:
        raise AudioError(path, AudioProblem.TRUNCATED,
                         f"its header announces {declared} samples, the file holds {samples.shape[0]}")
    if not np.isfinite(samples).all():
        raise AudioError(path, AudioProblem.NOT_FINITE)
    mono = samples.mean(axis=1)
    if not allow_silent and float(np.abs(mono).max()) < SILENCE_PEAK:
        raise AudioError(path, AudioProblem.SILENT, f"peak amplitude below {SILENCE_PEAK:g}")
    return resample(mono, source_rate, sample_rate, resampler)


# How audio at another rate is brought to 16 kHz. `soxr`: libsoxr's high-quality filter, what simslm has always
# used. `sinc-hann`: torchaudio.functional.resample at its defaults, which slamkit's `WavDataset` (extract_features)
# applies to every file not at 16 kHz: the units of the SIMS recipe. The two differ by 3-4% RMS on speech, all of it
# between 6 and 7.8 kHz, where their filters' transition bands differ (docs/BENCHMARKS.md, "Resampling beside
# torchaudio").
RESAMPLERS = ("soxr", "sinc-hann")
# torchaudio's defaults (`resample(..., lowpass_filter_width=6, rolloff=0.99, resampling_method="sinc_interp_hann")`):
# the filter reaches 6 zero crossings each side, and cuts off at 99% of the lower rate's Nyquist frequency.
SINC_ZERO_CROSSINGS = 6
SINC_ROLLOFF = 0.99


def resample(samples: np.ndarray, source_rate: int, target_rate: int, resampler: str = "soxr") -> np.ndarray:
    """Mono float32 `samples` at `source_rate` as float32 at `target_rate`, by one of `RESAMPLERS`."""
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler '{resampler}'; known: {', '.join(RESAMPLERS)}")
    if source_rate == target_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    if resampler == "soxr":
        return np.ascontiguousarray(soxr.resample(samples, source_rate, target_rate, quality="HQ"), dtype=np.float32)
    return _sinc_hann(np.asarray(samples, dtype=np.float32), source_rate, target_rate)


def _sinc_hann(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited interpolation with a Hann-windowed sinc, as torchaudio defines `sinc_interp_hann`.

    With the rates reduced by their gcd to `up` : `down` (source : target), output sample n sits at n / `down`
    and input sample k at k / `up` on one time axis; with u = (k / up - n / down) * cutoff, cutoff = min(up, down)
    * rolloff, n takes the sum over k of x[k] * sinc(u) * cos^2(pi u / (2 W)) * cutoff / up for |u| <= W (W zero
    crossings; zero samples outside the signal). The taps depend only on n mod down, so they are computed once per
    phase and applied to every block of `up` inputs as one matrix product.

    Two roundings are torchaudio's and kept, since they decide numbers: for float32 audio the taps are computed in
    float32, and the output's length is ceil(len * down / up) taken in float32, which drops the last sample of a
    long recording whose exact length falls just past a whole number (one in about 16 at 44.1 kHz past a minute)."""
    gcd = np.gcd(source_rate, target_rate)
    up, down = source_rate // gcd, target_rate // gcd
    cutoff = min(up, down) * SINC_ROLLOFF
    reach = int(np.ceil(SINC_ZERO_CROSSINGS * up / cutoff))  # inputs each side of a block the filter can touch
    f32 = np.float32
    offsets = np.arange(-reach, reach + up, dtype=f32) / f32(up)  # inputs around the start of a block of `up`
    u = (-np.arange(down, dtype=f32) / f32(down))[:, None] + offsets[None, :]
    u = np.clip(u * f32(cutoff), -SINC_ZERO_CROSSINGS, SINC_ZERO_CROSSINGS).astype(f32)
    window = np.cos(u * f32(np.pi) / f32(SINC_ZERO_CROSSINGS) / f32(2)) ** 2
    u = u * f32(np.pi)
    with np.errstate(invalid="ignore", divide="ignore"):
        taps = np.where(u == 0, f32(1), np.sin(u) / u).astype(f32)
    taps = taps * (window * f32(cutoff / up))  # (down phases, 2 reach + up)
    num_blocks = -(-len(samples) // up)
    padded = np.zeros(reach + num_blocks * up + reach + up, dtype=f32)
    padded[reach:reach + len(samples)] = samples
    blocks = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + up)[::up][:num_blocks]
    out = (blocks @ taps.T).reshape(-1)  # block m, phase i -> output m * down + i
    return np.ascontiguousarray(out[:int(np.ceil(f32(down * len(samples) / up)))])


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
    """Write 16-bit PCM (format from the suffix: .flac or .wav) atomically."""
    path = Path(path)
    kind = {".flac": "FLAC", ".wav": "WAV"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: audio must be written as .flac or .wav")
    with storage.atomic_path(path) as temporary:
        soundfile.write(str(temporary), samples, sample_rate, subtype="PCM_16", format=kind)


def _declared_frames(path: Path, channels: int) -> int | None:
    """Sample frames the file's own header announces (WAV data chunk, FLAC STREAMINFO).

    libsndfile quietly shortens its frame count to what a cut-off file holds, so a
    truncated file is only visible by comparing with the header written before the cut.
    """
    with open(path, "rb") as handle:
        head = handle.read(64)
        if head[:4] == b"fLaC" and len(head) >= 26:
            # STREAMINFO: 4-byte block header, then ... 36-bit total samples at bits 108-143.
            total = int.from_bytes(head[8 + 13:8 + 18], "big") & ((1 << 36) - 1)
            return total or None
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        handle.seek(12)
        bits_per_sample = 16
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"fmt ":
                bits_per_sample = int.from_bytes(handle.read(16)[14:16], "little")
                handle.seek(size - 16, os.SEEK_CUR)
            elif chunk[:4] == b"data":
                frame_bytes = channels * max(1, bits_per_sample // 8)
                # 0 and 0xFFFFFFFF mark streamed WAVs whose length was never filled in.
                return None if size in (0, 0xFFFFFFFF) else size // frame_bytes
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)


# A manifest's `audio` written as a URL (a corpus listing its remote files): Path() keeps it as "https:/host/...".
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def is_url(audio: str | os.PathLike) -> bool:
    """Whether a manifest's `audio` (or the Path made of it) is a URL, which is neither joined to the manifest's
    folder nor read: the reader says so (AudioProblem.URL)."""
    return _URL.match(str(audio)) is not None


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, AudioProblem.URL if is_url(path) else AudioProblem.MISSING)
    if path.stat().st_size == 0:
        raise AudioError(path, AudioProblem.EMPTY_FILE, "0 bytes")
