"""Test set-up: assets come from the offline mirror (../shared/data), never the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simslm.eval.benchbuild import BenchBuildConfig, build_benchmark
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.units.extract import ExtractConfig, extract_units
from simslm.units.fit import FitConfig, fit_codebook

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SIMSLM_MIRROR", str(REPO.parent / "shared" / "data"))
os.environ["SIMSLM_OFFLINE"] = "1"
# The MFU denominators given, as a sweep gives them to its runs (`train.peak.PEAK_FLOPS_VARIABLE`, and for runs in bf16
# `PEAK_FLOPS_BF16_VARIABLE`): otherwise every run measures this CPU's matrix products for 0.75 s with both cores
# before its first step (a bf16 run 2-5 s), which the other worker's test waits out. The tests of the measurement
# itself (`measured_peak`) take the variables away.
os.environ["SIMSLM_PEAK_FLOPS"] = "1e11"
os.environ["SIMSLM_PEAK_FLOPS_BF16"] = "1e10"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test writes its cache (downloads, checksum record) to a fresh folder."""
    monkeypatch.setenv("SIMSLM_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def measured_peak(monkeypatch):
    """A test whose runs measure their MFU denominators themselves, as a run outside a sweep does."""
    monkeypatch.delenv("SIMSLM_PEAK_FLOPS")
    monkeypatch.delenv("SIMSLM_PEAK_FLOPS_BF16")


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = Path(os.environ["SIMSLM_MIRROR"])
    assert path.is_dir(), f"offline mirror {path} is missing: set SIMSLM_MIRROR to shared/data"
    return path


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """Four TinyStories stories synthesised with the training voices (2 workers)."""
    from simslm.speech.synth import SynthConfig, synthesize_corpus

    out_dir = tmp_path_factory.mktemp("synth")
    report = synthesize_corpus(SynthConfig(out=str(out_dir), limit=4, num_workers=2))
    assert report.num_synthesized == 4, report
    return out_dir / "manifest.jsonl"


@pytest.fixture(scope="session")
def extracted(synthetic_corpus, tmp_path_factory):
    """Units of the synthetic corpus plus an empty and a corrupt file, k=32."""
    from dataclasses import replace

    from simslm.speech.manifest import read_manifest, write_manifest

    out = tmp_path_factory.mktemp("units")
    codebook = fit_codebook(FitConfig(manifest=str(synthetic_corpus), out=str(out / "km32"), num_units=32,
                                                  num_workers=1))
    utterances = read_manifest(synthetic_corpus)
    (out / "empty.wav").write_bytes(b"")
    (out / "corrupt.flac").write_bytes(b"fLaC not really")
    broken = [replace(utterances[0], id=name, audio=str(out / f"{name}.{ext}"))
              for name, ext in (("empty", "wav"), ("corrupt", "flac"))]
    manifest = out / "with_bad.jsonl"
    write_manifest(manifest, [replace(u, audio=str(u.audio_path(synthetic_corpus.parent))) for u in utterances]
                   + broken)
    config = ExtractConfig(manifest=str(manifest), codebook=str(codebook), out=str(out / "units"),
                                 shard_size=2, num_workers=2)
    return config, extract_units(config), utterances


@pytest.fixture(scope="session")
def speech_sequences(extracted, tmp_path_factory) -> str:
    """Interleaved and speech-only sequences of the synthetic corpus (context 64, 2 epochs)."""

    config, _, _ = extracted
    out = tmp_path_factory.mktemp("seq") / "seq"
    build_sequences(BuildConfig(out=str(out), manifest=config.manifest, units=config.out,
                                                    streams=("interleaved", "speech"), context_length=64, num_epochs=2))
    return str(out)


@pytest.fixture(scope="session")
def data(speech_sequences) -> str:
    """The sequences the training, batching and sweep tests train on (`speech_sequences`)."""
    return speech_sequences


@pytest.fixture(scope="session")
def trained_run(extracted, speech_sequences, tmp_path_factory):
    """A tiny TWIST run on the synthetic corpus and a 4-item offline tSC built from held-out stories."""
    from simslm.train.loop import train
    from simslm.train.plan import TrainConfig

    config, _, _ = extracted
    root = tmp_path_factory.mktemp("evalrun")
    data = speech_sequences
    train(TrainConfig(run_dir=str(root / "run"), data=data, validation_data=data,
                      budget_tokens=8 * 4 * 64, batch_size=4, num_validation_batches=2))
    bench = root / "tsc"
    build_benchmark(BenchBuildConfig(kind="tsc", out=str(bench), source="tinystories-sample[2000:2010]",
                                                         exclude=config.manifest, num_items=4, num_workers=2))
    return root / "run", bench


@pytest.fixture
def train_stopped_at(monkeypatch):
    """`train(config)` stopped by a KeyboardInterrupt as its step `step` (counted from 0) starts: a run left half
    done, its checkpoints written up to then."""
    import simslm.train.loop as train_module

    learning_rate = train_module.learning_rate

    def stopped(config, step: int) -> None:
        def interrupted(at, plan, given):
            if at == step:
                raise KeyboardInterrupt
            return learning_rate(at, plan, given)

        monkeypatch.setattr(train_module, "learning_rate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_module.train(config)
        monkeypatch.setattr(train_module, "learning_rate", learning_rate)

    return stopped


_HOLD_LOCK = """
import sys
from simslm import storage
with storage.exclusive_lock(sys.argv[1], "busy"):
    print("held", flush=True)
    sys.stdin.read()
"""
_HOLD_FILE = """
import sys
from simslm import storage
with open(sys.argv[1], "ab") as handle:
    storage.lock_file(handle, "busy")
    print("held", flush=True)
    sys.stdin.read()
"""


def hold_lock(path, *, file_as_it_is: bool = False):
    """Another process that takes `storage.exclusive_lock(path)` and keeps it until its stdin is closed; with
    `file_as_it_is`, a lock on the file (a journal) that leaves its bytes alone (`storage.lock_file`)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", _HOLD_FILE if file_as_it_is else _HOLD_LOCK, str(path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def release_lock(process) -> None:
    if process.poll() is None:
        process.stdin.close()
        process.wait(timeout=60)


@pytest.fixture
def lock_held_elsewhere():
    """`hold(path)`: another process takes `storage.exclusive_lock(path)` and keeps it until `release()`; returns its
    pid and `release` (called at the end of the test if the test did not)."""
    holders = []

    def hold(path):
        process = hold_lock(path)
        holders.append(process)
        return process.pid, lambda: release_lock(process)

    yield hold
    for process in holders:
        release_lock(process)


def tiny_base_model(folder: Path, architecture: str, width: int, layers: int, rows: int = 512, **config) -> str:
    """A random model of a real architecture (`config` adds to its config: tied embeddings, Llama 3's RoPE), with
    the data's tokenizer (tok512) saved beside it; `rows` past 512 are spare, as Qwen2.5 pads its vocabulary.
    transformers 5 reads that tokenizer beside a qwen2 config as a Qwen2Tokenizer of 513 tokens (its byte-level
    pre-tokenizer, its <|endoftext|>): data for a qwen2 model is built with the model's folder as its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from simslm.sequences.vocabulary import load_base_tokenizer

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                 "llama": (LlamaConfig, LlamaForCausalLM)}[architecture]
    model = model_class(config_class(vocab_size=rows, hidden_size=width, intermediate_size=2 * width,
                                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=128, **config))
    model.save_pretrained(folder)
    load_base_tokenizer("stories260K").save_pretrained(folder)
    return str(folder)


def logmel_held_until_started(count: int, seconds: float) -> str:
    """Python source, for a script run in `count` processes at once that defines `started` (a folder each touches
    as it starts): every logmel encoding waits until all have started, then `seconds`, so that their work
    overlaps whatever the order they start in."""
    return f"""
import time as _time
from pathlib import Path as _Path
from simslm.units import encoders as _encoders
_original = _encoders.LogMelEncoder.encode_batch

def _held(self, batch):
    deadline = _time.time() + 60
    while len(list(_Path(started).iterdir())) < {count} and _time.time() < deadline:
        _time.sleep(0.05)
    _time.sleep({seconds})
    return _original(self, batch)

_encoders.LogMelEncoder.encode_batch = _held
"""


def slurm_without_accounting(folder: Path, monkeypatch, queue: str) -> tuple[Path, Path]:
    """SLURM's commands as on a login node of a cluster that keeps no accounting, as scripts on PATH: `sacct` fails
    ("accounting storage is disabled"), `squeue` prints the file it returns first (`queue` to start with: lines of
    `ID|STATE`) and notes its arguments in the second. submitit's watcher and simslm's queue start afresh."""
    import submitit
    from submitit.slurm import slurm as submitit_slurm

    from simslm import slurm

    bin_dir, listing, asked = folder / "bin", folder / "squeue.out", folder / "squeue.asked"
    bin_dir.mkdir()
    listing.write_text(queue)
    (bin_dir / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho \"$*\" >> {asked}\ncat {listing}\n")
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.SlurmJob, "watcher", submitit_slurm.SlurmInfoWatcher(delay_s=600))
    monkeypatch.setattr(slurm, "SLURM_QUEUE", slurm.SlurmQueue())
    return listing, asked


def live_in_group(group: int, seconds: float = 20.0) -> list[str]:
    """The command lines of the processes of process group `group` still alive after up to `seconds` (zombies aside:
    this container's first process may not reap them), read from Linux's /proc."""
    import time

    from simslm import jobs

    if not jobs.proc_shows_this_namespace():  # where it lists another namespace's, none would be found: a pass
        pytest.skip("reads the processes of a group from /proc, which here is not this PID namespace's")
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
                if int(fields[2]) == group and fields[0] != "Z":
                    alive.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            except (OSError, IndexError, ValueError):  # ended while read
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def as_reader() -> list[str]:
    """A command prefix that runs a command as a user who may read but not write what a test wrote (files left
    without write bits): nothing for a user other than root, whom file modes stop; for root, setpriv without the
    capabilities that let root write anything. Skips the test where root has no setpriv."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes would not stop the command")
    dropped = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}", "--"]
