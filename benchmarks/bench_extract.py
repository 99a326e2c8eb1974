"""Unit-extraction throughput on this machine: encoders one utterance at a time against batched.

    .venv/bin/python benchmarks/bench_extract.py --repeats 3 [--device cuda] [--json OUT] [--audio FOLDER]

Utterances of 2-14 s are cut at random from the mirror's three LibriSpeech recordings. Each
contender encodes all of them; the contenders alternate, `--repeats` rounds, and the table
gives the median real-time factor (seconds of audio per second of wall time) and its ratio
to the first contender of its group, measured side by side in one process:

- loading those utterances from 16 kHz FLAC files, as an extraction worker does before encoding: in one
  thread against threads on every core (the one worker on a GPU has them all);
- logmel, on utterances of 2-14 s and of 0.5-2 s: the implementation as of commit 0ed204d
  (numpy FFT, one utterance at a time; kept below only as the "before" of this measurement),
  today's one at a time, and today's batches of 16;
- HuBERT-base with random weights (transformers' default `HubertConfig`: group-norm feature
  extractor, 12 layers of 768), layer 9: all 12 layers run (before), layers past 9 dropped
  (now), and equal-length batches (what a group-norm extractor allows);
- the same size with a layer-norm feature extractor (as HuBERT-large's): one at a time against
  padded batches with an attention mask.

With `--device cuda` the HuBERT groups run on the GPU, with float16 and bfloat16 besides
float32 and the share of frames whose unit (of a random 500-unit codebook) stays the float32
one; the projected time for 50,000 hours on 8 such GPUs is printed from the best rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

import numpy as np


def _utterances(count: int, seed: int, folder: str | None, shortest: float = 2, longest: float = 14
                ) -> list[np.ndarray]:
    import pathlib

    from simslm import assets
    from simslm.speech import audio

    files = sorted(pathlib.Path(folder).glob("*.flac")) if folder else \
        [path for key, path in sorted(assets.resolve("librispeech-samples").paths.items()) if key.endswith(".flac")]
    whole = np.concatenate([audio.load_audio(path) for path in files])
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(shortest, longest, count) * 16000
    starts = [rng.integers(0, max(1, len(whole) - int(n))) for n in lengths]
    return [np.resize(whole[s:], int(n)).astype(np.float32) for s, n in zip(starts, lengths)]


def _logmel_before(samples: np.ndarray, encoder) -> np.ndarray:
    """LogMelEncoder.encode as of commit 0ed204d, for the before/after ratio only."""
    num_frames = 1 + (len(samples) - 400) // 160
    frames = np.lib.stride_tricks.as_strided(samples, (num_frames, 400), (samples.strides[0] * 160, samples.strides[0]))
    log_mel = np.log(np.abs(np.fft.rfft(frames * encoder.window, n=512)) ** 2 @ encoder.filters.T + 1e-6)
    log_mel = log_mel.astype(np.float32)
    stacked = log_mel[:len(log_mel) - len(log_mel) % 4].reshape(-1, encoder.dim)
    return (stacked - stacked.mean(axis=0)) / (stacked.std(axis=0) + 1e-5)


def _batched(encoder, batch: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    features = [None] * len(batch)
    for group in encoder.batches([len(s) for s in batch], batch_size):
        for index, result in zip(group, encoder.encode_batch([batch[i] for i in group])):
            features[index] = result
    return features


def _hubert(folder, norm: str, device: str, dtype: str = "float32", layers_dropped: bool = True):
    """A HuBERT-base-sized random model saved once per norm, as a registered encoder at layer 9."""
    import torch
    from transformers import HubertConfig, HubertModel

    from simslm.units.encoders import HubertEncoder

    path = folder / norm
    if not path.exists():
        torch.manual_seed(0)
        HubertModel(HubertConfig(feat_extract_norm=norm, conv_bias=norm == "layer")).save_pretrained(path)
    encoder = HubertEncoder("hubert-base-l9", str(path), 9, 50.0, device=device, dtype=dtype)
    if not layers_dropped:  # the "before": every layer runs, as the encoder did before this change
        encoder._model.encoder.layers = HubertModel.from_pretrained(path).encoder.layers.to(device, getattr(torch, dtype))
    return encoder


def _race(contenders: dict, batch: list[np.ndarray], repeats: int, sync) -> dict[str, float]:
    """Median real-time factor of each contender, alternating them `repeats` rounds."""
    audio_sec = sum(len(s) for s in batch) / 16000
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, run in contenders.items():  # warm-up (allocators, kernels, FFT plans)
        run(batch[:2])
    for _ in range(repeats):
        for name, run in contenders.items():
            sync()
            started = time.perf_counter()
            run(batch)
            sync()
            times[name].append(time.perf_counter() - started)
    return {name: audio_sec / statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16, help="utterances (2-14 s each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--audio", help="a folder of .flac to cut utterances from (default: the mirror's LibriSpeech)")
    parser.add_argument("--models", default="/tmp/simslm-bench-hubert", help="where the random HuBERTs are saved")
    args = parser.parse_args()
    import pathlib

    import torch

    from simslm.units.encoders import LogMelEncoder
    from simslm.units.kmeans import Codebook

    batch = _utterances(args.count, seed=0, folder=args.audio)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    folder = pathlib.Path(args.models)
    results = {"audio_sec": round(sum(len(s) for s in batch) / 16000, 1), "device": args.device,
               "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "groups": {}}

    # A shard's audio from disk, as a worker reads it before encoding: the same utterances as 16 kHz FLAC files.
    from simslm import machine
    from simslm.speech import audio
    from simslm.units.extract import load_all

    flac = pathlib.Path(tempfile.mkdtemp(prefix="simslm-bench-flac-"))
    records = [{"path": str(flac / f"{i}.flac")} for i in range(len(batch))]
    for record, samples in zip(records, batch):
        audio.write_audio(record["path"], samples)
    cores = machine.default_workers()
    results["groups"]["loading FLAC (16 kHz)"] = _race({
        "one thread": lambda b: load_all(records, 1, "soxr"),
        f"{cores} threads (a worker with every core)": lambda b: load_all(records, cores, "soxr")},
        batch, args.repeats, lambda: None)
    shutil.rmtree(flac)

    logmel = LogMelEncoder()
    short = _utterances(400, seed=1, folder=args.audio, shortest=0.5, longest=2)
    for name, utterances in (("logmel, 2-14 s", batch * max(1, 320 // len(batch))), ("logmel, 0.5-2 s", short)):
        results["groups"][name] = _race({
            "before (numpy, one at a time)": lambda b: [_logmel_before(s, logmel) for s in b],
            "now, one at a time": lambda b: [logmel.encode(s) for s in b],
            "now, batches of 16": lambda b: _batched(logmel, b, 16)}, utterances, args.repeats, lambda: None)

    group_before, group_now = _hubert(folder, "group", args.device, layers_dropped=False), \
        _hubert(folder, "group", args.device)
    # Equal lengths are what a group-norm extractor can batch: the same utterances cut to the median length.
    equal = [np.resize(s, int(np.median([len(x) for x in batch]))) for s in batch]
    results["groups"]["hubert-base group norm"] = _race({
        "before (all 12 layers), one at a time": lambda b: [group_before.encode(s) for s in b],
        "now (layers past 9 dropped), one at a time": lambda b: [group_now.encode(s) for s in b]},
        batch, args.repeats, sync)
    results["groups"]["hubert-base group norm, equal lengths"] = _race({
        "one at a time": lambda b: [group_now.encode(s) for s in b],
        f"batches of {args.batch_size}": lambda b: _batched(group_now, b, args.batch_size)},
        equal, args.repeats, sync)
    layer_now = _hubert(folder, "layer", args.device)
    results["groups"]["hubert-base layer norm"] = _race({
        "one at a time": lambda b: [layer_now.encode(s) for s in b],
        f"padded batches of {args.batch_size}": lambda b: _batched(layer_now, b, args.batch_size)},
        batch, args.repeats, sync)
    if cuda:
        codebook = Codebook(np.random.default_rng(0).normal(size=(500, 768)).astype(np.float32))
        reference = [codebook.assign(f) for f in _batched(layer_now, batch, args.batch_size)]
        for dtype in ("float16", "bfloat16"):
            half = _hubert(folder, "layer", args.device, dtype=dtype)
            features = _batched(half, batch, args.batch_size)
            same = sum(int((codebook.assign(f) == r).sum()) for f, r in zip(features, reference))
            results[f"agreement_{dtype}"] = same / sum(len(r) for r in reference)
            results["groups"]["hubert-base layer norm"][f"padded batches, {dtype}"] = _race(
                {dtype: lambda b: _batched(half, b, args.batch_size)}, batch, args.repeats, sync)[dtype]
        best = max(results["groups"]["hubert-base layer norm"].values())
        results["projected_hours_for_50k_h_on_8_gpus"] = round(50_000 / best / 8, 1)

    for group, rates in results["groups"].items():
        first = next(iter(rates.values()))
        print(f"\n{group}")
        for name, rate in rates.items():
            print(f"  {name:<46} {rate:8.1f}x real time   {rate / first:5.2f}x")
    for key in ("agreement_float16", "agreement_bfloat16", "projected_hours_for_50k_h_on_8_gpus"):
        if key in results:
            print(f"{key}: {results[key]}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
