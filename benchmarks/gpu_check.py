"""The GPU check behind `benchmarks/gpu_check.sh`: a two-family, two-size sweep in bf16, through `simslm sweep`.

`prepare` (here) copies the TinyStories sample and saves tok512, so the GPU machine needs
neither assets nor a network. `run` (there) builds random-init Qwen2 and Llama models of
about 30M and 120M parameters with that tokenizer, builds each family's text sequences with
the family's own tokenizer (transformers reads tok512 beside a Qwen2 config as a Qwen2
tokenizer with one more token), plans a sweep over both families at one FLOP budget, runs it
on GPU 0 (bf16
autocast, the training code path of every run), and reports per run the median tokens/s and
MFU over the steps after the first 5, the peak memory, and the sweep status. The MFU
denominator is the bf16 8192^3 matrix-product rate `simslm train` measures in the same run.
Then `units extract` end to end on the device (`extraction`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

# (hidden size, layers, intermediate size): about 30M and 120M parameters with tok512 (printed in the run).
SIZES = {"30M": (512, 9, 1536), "120M": (896, 11, 3072)}
TINY = {"tiny-a": (32, 1, 64), "tiny-b": (64, 2, 128)}


def prepare(out: Path) -> None:
    from simslm import assets
    from simslm.sequences.vocabulary import load_base_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(assets.resolve_file("tinystories-sample"), out / "stories.jsonl")
    load_base_tokenizer("stories260K").save_pretrained(out / "tokenizer")
    (out / "audio").mkdir(exist_ok=True)  # for benchmarks/bench_extract.py --audio on the GPU machine
    for key, path in assets.resolve("librispeech-samples").paths.items():
        if key.endswith(".flac"):
            shutil.copyfile(path, out / "audio" / Path(key).name)
    print(f"prepared {out}: the TinyStories sample, tok512 and three LibriSpeech files; carry it to the GPU machine")


def _model(folder: Path, architecture: str, hidden: int, layers: int, intermediate: int, tokenizer: Path) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        architecture]
    heads = max(1, hidden // 64)
    model = model_class(config_class(vocab_size=512, hidden_size=hidden, num_hidden_layers=layers,
                                     intermediate_size=intermediate, num_attention_heads=heads,
                                     num_key_value_heads=max(1, heads // 2), max_position_embeddings=1024,
                                     tie_word_embeddings=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return str(folder)


def run(prepared: Path, out: Path, tiny: bool) -> dict:
    import torch

    from simslm.scaling import collect, execute, ledger, sweep

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not tiny:
        raise SystemExit("no CUDA device: run with --tiny to check the script on a CPU")
    started = time.perf_counter()
    shutil.rmtree(out / "sweep", ignore_errors=True)  # a check starts afresh: its data are built again below
    sizes = TINY if tiny else SIZES
    families = {architecture: [_model(out / "models" / f"{architecture}-{name}", architecture, *shape,
                                      prepared / "tokenizer") for name, shape in sizes.items()]
                for architecture in ("qwen2", "llama")}
    from simslm.sequences.build import BuildConfig, build_sequences

    data = {}
    for architecture, models in families.items():
        data[architecture] = str(out / f"data-{architecture}")
        build_sequences(BuildConfig(out=data[architecture], tokenizer=models[0], streams=("text",),
                                    text_corpus=str(prepared / "stories.jsonl"), context_length=1024, overwrite=True))
    # 1e15 FLOPs: ~350 steps of the 30M models and ~90 of the 120M ones, enough for steady medians. At 4e15
    # the sweep alone took over 285 s on an H200 (2026-12-04: 81-86 s per 30M run, 45 s per 120M run, each
    # plus ~11 s to start), too much of a 15-minute lease.
    budget = 2e10 if tiny else 1e15
    spec = sweep.SweepSpec.from_json({
        "families": families, "budgets_flops": [budget],
        "variants": [{"name": "scratch", "data": data, "init": "random"}],
        "train": {"batch_size": 2 if tiny else 16, "checkpoint_every": 10_000, "num_validation_batches": 1,
                  "lr": 1e-3, "lr_min": 1e-4}})
    sweep.plan_sweep(spec, out / "sweep")
    execute.run_sweep(out / "sweep", num_parallel=1, gpus="" if device == "cpu" else "0")
    rows = []
    for row in sorted(collect.collect(out / "sweep"), key=lambda r: (r["variant"], r["parameters"])):
        metrics = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        steady = metrics[5:] or metrics
        rows.append({"run": row["member"], "parameters": row["parameters"], "steps": len(metrics),
                     "tokens_per_sec": statistics.median(m["tokens_per_sec"] for m in steady),
                     "mfu": statistics.median(m["mfu"] for m in steady),
                     "max_memory_gb": max((m.get("max_memory_gb", 0.0) for m in metrics), default=0.0),
                     "final_loss": metrics[-1]["loss"]})
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "budget_flops": budget,
              "runs": rows, "status": ledger.status_counts(out / "sweep"),
              "wall_sec": round(time.perf_counter() - started, 1)}
    print(f"{'run':<14} {'params':>10} {'steps':>6} {'tokens/s':>11} {'MFU':>6} {'mem GB':>7} {'loss':>7}")
    for r in rows:
        print(f"{r['run']:<14} {r['parameters'] / 1e6:>9.1f}M {r['steps']:>6} {r['tokens_per_sec']:>11,.0f} "
              f"{100 * r['mfu']:>5.1f}% {r['max_memory_gb']:>7.2f} {r['final_loss']:>7.3f}")
    print(collect.status_table(out / "sweep").splitlines()[-1], f"({result['wall_sec']} s in all)")
    result["extraction"] = extraction(prepared, out, tiny, device)
    return result


def extraction(prepared: Path, out: Path, tiny: bool, device: str) -> dict:
    """`units extract` end to end on the device, as a user runs it on a GPU: FLAC files from disk through the one
    worker (its cores decode, the GPU encodes in bf16 batches checked against float32), k-means assignment,
    shards. The model is HuBERT-base-sized at 25 Hz (mHuBERT's strides, a layer-norm extractor so that padded
    batches are allowed) with random weights and a random 500-unit codebook naming it; the utterances are 2-14 s
    cut from the three LibriSpeech recordings. A first call loads the encoder (timed apart); then two rounds of
    two contenders, alternated: decoding in one thread against the default (threads on the worker's cores), each
    into a fresh folder. Real-time factors count the whole `extract_units` call."""
    import numpy as np
    import torch
    from transformers import HubertConfig, HubertModel

    from simslm import machine
    from simslm.speech import audio
    from simslm.speech.manifest import Utterance, write_manifest
    from simslm.units import extract, kmeans
    from simslm.units.encoders import EncoderSpec

    folder = out / "extraction"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "audio").mkdir(parents=True)
    whole = np.concatenate([audio.load_audio(path) for path in sorted((prepared / "audio").glob("*.flac"))])
    rng = np.random.default_rng(0)
    utterances = []
    for index in range(8 if tiny else 256):
        length = int(rng.uniform(2, 14) * audio.TARGET_SAMPLE_RATE)
        start = int(rng.integers(0, len(whole) - length))
        audio.write_audio(folder / "audio" / f"u{index:04d}.flac", whole[start:start + length])
        utterances.append(Utterance(id=f"u{index:04d}", audio=f"audio/u{index:04d}.flac", transcript="",
                                    sample_rate=audio.TARGET_SAMPLE_RATE,
                                    duration_sec=length / audio.TARGET_SAMPLE_RATE))
    write_manifest(folder / "manifest.jsonl", utterances)
    torch.manual_seed(0)
    size = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2) if tiny else {}
    HubertModel(HubertConfig(conv_stride=(5, 2, 2, 2, 2, 2, 4), feat_extract_norm="layer", conv_bias=True, **size)
                ).save_pretrained(folder / "hubert")
    spec = EncoderSpec.standard("mhubert-25hz", str(folder / "hubert"), 2 if tiny else 11)
    width = 32 if tiny else 768
    codebook = kmeans.Codebook(rng.normal(size=(500, width)).astype(np.float32),
                               {"encoder": dataclasses.asdict(spec), "frame_rate_hz": 25.0}).save(folder / "km500")
    audio_sec = sum(u.duration_sec for u in utterances)
    real = extract.load_all
    contenders = {"decoding in one thread": lambda records, threads, resampler: real(records, 1, resampler),
                  "default": real}
    rates: dict[str, list[float]] = {name: [] for name in contenders}

    def extract_into(target: Path) -> float:
        """Seconds for the whole call. The worker is this process, which keeps its encoder between calls: only the
        first call loads it."""
        started = time.perf_counter()
        report = extract.extract_units(extract.ExtractConfig(
            manifest=str(folder / "manifest.jsonl"), codebook=str(codebook), out=str(target), device=device,
            dtype="bfloat16" if device == "cuda" else "float32", min_agreement=0.5))
        assert report.num_encoded == len(utterances), report
        return time.perf_counter() - started

    first_call = extract_into(folder / "units-first")  # loads the encoder: apart from the race
    for repeat in range(2):
        for name, loader in contenders.items():
            extract.load_all = loader
            rates[name].append(audio_sec / extract_into(folder / f"units-{repeat}-{name.split()[0]}"))
    extract.load_all = real
    agreement = json.loads((folder / "units-first" / "report.json").read_text())["half_precision_agreement"]
    result = {"utterances": len(utterances), "audio_sec": round(audio_sec, 1), "threads": machine.default_workers(),
              "first_call_sec": round(first_call, 2),
              "realtime_factor": {name: statistics.median(values) for name, values in rates.items()},
              "bf16_agreement": agreement}
    line = f"units extract, {len(utterances)} FLAC files ({audio_sec / 60:.1f} min), {device}: " + ", ".join(
        f"{name} {rate:,.0f}x real time" for name, rate in result["realtime_factor"].items())
    print(line + (f"; bf16 units equal to float32's on {agreement:.2%} of frames" if agreement is not None else ""))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("prepare", "run"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, default=Path(".gpu/check"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on any device: checks the script only")
    args = parser.parse_args()
    if args.action == "prepare":
        prepare(args.out)
        return
    result = run(args.prepared, args.out, args.tiny)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(f"-> {args.out / 'gpu_check.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
