"""Runs of several processes (DDP, FSDP, compiled), and requests to stop: SIGTERM, SLURM's warning."""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from simslm.sequences.vocabulary import Vocabulary
from simslm.train.loop import train
from simslm.train.plan import RunResult, learning_rate
from tests.train.helpers import (
    _SPY,
    _SPY_IN_TURN,
    REPO,
    _as_written_before_model_configs,
    _config,
    _losses,
    _rank_env,
    _run_command,
    _runs_of_one_and_two_processes,
    _torchrun,
    _torchrun_in_turn,
)


def test_a_process_asked_to_stop_through_another_one_only_stops_too(tmp_path):
    """With no signal of its own to hand over to (another process was asked), a process still stops, saying so,
    rather than go on as if the run were finished (a sweep would then evaluate a half-trained run)."""
    import simslm.train.distributed as train_module
    from simslm.jobs import Stopped

    with pytest.raises(Stopped, match="stopped with the other processes after step 7"):
        train_module.StopRequest().finish(tmp_path, 7)


@pytest.mark.slow
def test_sigterm_stops_a_run_after_the_step_in_hand_with_a_checkpoint(data, tmp_path):
    """The time limit of one's own SLURM job, `kill`, a sweep stopping its runs: the run saves the step in hand
    and says so in one line, and a re-run goes on as if it had never stopped. The signal arriving twice at once
    (a scheduler signals every process of a job, and a sweep forwards it to its runs) is one request."""
    env = _rank_env()
    changes = dict(budget_tokens=100 * 4 * 64, checkpoint_every=1000)  # no periodic checkpoint before the end
    for name in ("reference", "stopped"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_config(data, tmp_path / name, **changes).__dict__))
    subprocess.run(_run_command(tmp_path / "reference.json"), check=True, env=env, cwd=REPO, capture_output=True)
    process = subprocess.Popen(_run_command(tmp_path / "stopped.json"), env=env, cwd=REPO, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)  # the same request again (a scheduler's and a sweep's): still one stop
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    (checkpoint,) = (tmp_path / "stopped" / "checkpoints").iterdir()
    step = int(checkpoint.name.split("-")[1])
    assert 3 <= step < 100 and len(_losses(tmp_path / "stopped")) == step
    assert stderr.splitlines()[-1] == (f"simslm train: {tmp_path / 'stopped'}: stopped by SIGTERM after step {step}, "
                                       f"which is saved as a checkpoint; run the same command again to resume")
    assert "Traceback" not in stderr and not (tmp_path / "stopped" / "result.json").exists()
    subprocess.run(_run_command(tmp_path / "stopped.json"), check=True, env=env, cwd=REPO, capture_output=True)
    assert _losses(tmp_path / "stopped") == _losses(tmp_path / "reference")  # bit for bit


@pytest.mark.slow
def test_a_run_of_two_processes_stopped_by_sigterm_destroys_its_process_group(data, tmp_path):
    """A stop on request ends both processes after the same step, none inside a collective: each destroys its
    process group at exit, as after a run's end. It was left to the interpreter's end after any exception, the stop's
    included, where gloo's threads can abort the process (the atexit spy says which process left it)."""
    env = _rank_env()
    config = _config(data, tmp_path / "run", budget_tokens=200 * 4 * 64, checkpoint_every=1000)
    (tmp_path / "run.json").write_text(json.dumps(config.__dict__))
    (tmp_path / "spy.py").write_text(_SPY)
    process = subprocess.Popen(_torchrun(2, str(tmp_path / "spy.py"), str(tmp_path / "spy.log"), "train", "--config",
                                         str(tmp_path / "run.json")), env=env, cwd=REPO, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)  # as a scheduler signals every process of a job
    _, stderr = process.communicate(timeout=120)
    assert "stopped by SIGTERM after step" in stderr, stderr[-3000:]
    assert not (tmp_path / "run" / "result.json").exists()
    assert "process group not destroyed" not in (tmp_path / "spy.log").read_text()


# torch.compile noted in each process (what each run compiles, in RUN.log beside its config), and failing at its
# first call in the run named "fallback", as on a machine without a C++ compiler.
_COMPILE_SPY = """
import torch

compile = torch.compile


def noted(target, **options):
    with open(Path(RUN).with_suffix(".log"), "a") as handle:
        handle.write(f"{os.environ['RANK']} {getattr(target, '__qualname__', type(target).__name__)}\\n")
    if Path(RUN).stem != "fallback":
        return compile(target, **options)

    def fails(*arguments, **keywords):
        raise RuntimeError("no C++ compiler found")
    return fails


torch.compile = noted
"""


@pytest.fixture(scope="module")
def two_process_launch(data, extracted, tmp_path_factory):
    """The runs these tests compare, as one process and as two (`_runs_of_one_and_two_processes`: the two
    processes train them all in one torchrun; eleven launches of their own took 3.1-3.7x as long, BENCHMARKS).
    bf16 weights come first, in fresh processes as a run alone: simslm registers its fp32 attention kernel for
    bf16 on the CPU (sdpa_fp32) with transformers once in a process, and a run after another would find it
    registered. The real architectures have data built for each."""
    from simslm.sequences.build import BuildConfig, build_sequences
    from tests.conftest import tiny_base_model

    tmp_path = tmp_path_factory.mktemp("two")
    units, _, _ = extracted
    runs = {"bf16-weights": ({"precision": "bf16-weights"}, {"fsdp": True}),
            "data-parallel": ({}, {}),
            "fsdp": ({}, {"fsdp": True, "validation_data": data, "validation_every": 2}),
            "chunked": ({}, {"fsdp": True, "loss_chunk_tokens": 40, "activation_checkpointing": True,
                             "validation_data": data, "validation_every": 3}),
            "fsdp-bf16": ({}, {"fsdp": True, "fsdp_mixed_precision": "bf16"})}
    for architecture in ("qwen2", "llama"):
        # Weights drawn 25x wider than transformers' default, so attention is peaked and positions matter: at the
        # default (std 0.02) attention is near uniform, and RoPE frequencies of 0.5 on the second process gave the
        # same losses.
        extra = {"llama": {"rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                           "rope_theta": 500000.0}}.get(architecture, {})
        base = tiny_base_model(tmp_path / "bases" / architecture, architecture, 32, 2, tie_word_embeddings=True,
                               initializer_range=0.5, **extra)
        built = str(tmp_path / f"seq-{architecture}")
        build_sequences(BuildConfig(out=built, tokenizer=base, manifest=units.manifest, units=units.out,
                                    streams=("interleaved", "speech"), context_length=64))
        runs[architecture] = ({"data": built, "base_model": base, "validation_data": built}, {"fsdp": True})
    # Compiled last, so that no run above follows one that compiled. The fallback is "fsdp" but for --compile.
    runs |= {"compiled": ({}, {"fsdp": True, "compile": True}),
             "fallback": ({}, {**runs["fsdp"][1], "compile": True}),
             "compiled-data-parallel": ({}, {"compile": True})}
    return _runs_of_one_and_two_processes(data, tmp_path, runs, spy=_COMPILE_SPY)


@pytest.fixture(scope="module")
def two_process_runs(two_process_launch):
    """Each run's folders as one process and as two (`two_process_launch`)."""
    return two_process_launch[0]


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(two_process_runs):
    single, parallel = two_process_runs["data-parallel"]
    assert np.allclose(_losses(parallel), _losses(single), rtol=1e-4)


@pytest.mark.slow
def test_fsdp_across_two_processes_matches_one_process(two_process_runs):
    single, sharded = two_process_runs["fsdp"]
    assert np.allclose(_losses(sharded), _losses(single), rtol=1e-4)
    # Validations during the run: every process scores them (each sharded forward needs all), one line each.
    records = [json.loads(line) for line in (sharded / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert records[-1]["loss_speech"] == RunResult.load(sharded).validation.loss_speech
    from transformers import AutoModelForCausalLM

    gathered = AutoModelForCausalLM.from_pretrained(sharded / "model")
    reference = AutoModelForCausalLM.from_pretrained(single / "model")
    for (name, a), (_, b) in zip(gathered.state_dict().items(), reference.state_dict().items()):
        assert np.allclose(a.numpy(), b.numpy(), atol=1e-4), name


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_fsdp_of_real_architectures_matches_one_process(two_process_runs, architecture):
    """Qwen2.5's shape (tied embeddings, biased q/k/v) and Llama 3.2's (tied, Llama 3's RoPE scaling), tiny and
    random: under FSDP the second process builds them on the meta device and receives weights and RoPE buffers."""
    single, sharded = two_process_runs[architecture]
    assert np.allclose(_losses(sharded), _losses(single), rtol=1e-4)
    # The run's last validation scored the model gathered from the shards (its buffers copied, its embeddings tied
    # again); the saved model, loaded afresh, scores the same. (Against the one-process run the validation differs
    # by up to 0.3% at these wide weights, gathered as before or as now: the summation orders' drift, amplified.)
    from transformers import AutoModelForCausalLM

    from simslm.train.loss import evaluate_modalities

    saved = AutoModelForCausalLM.from_pretrained(sharded / "model")
    assert saved.lm_head.weight is saved.model.embed_tokens.weight
    config = json.loads((sharded / "config.json").read_text())
    again = evaluate_modalities(saved, config["data"], Vocabulary.load(sharded / "model"), config["batch_size"],
                                config["num_validation_batches"], "cpu")  # the run's own data, absolute as given
    assert again.loss == pytest.approx(RunResult.load(sharded).validation.loss, rel=1e-6)


@pytest.mark.slow
def test_a_time_limit_warning_saves_the_step_in_hand_and_hands_over_to_submitit(data, tmp_path, monkeypatch):
    """The warning SLURM sends before a job's time limit: the run saves a checkpoint after the step in hand (not
    the last periodic one), calls submitit's handler (which requeues the job and exits), and the requeued run
    ends as one never stopped did."""
    pytest.importorskip("submitit")
    import simslm.train.loop as train_module
    from simslm.train.distributed import StopRequest

    config = dict(budget_tokens=12 * 4 * 64, checkpoint_every=4, num_checkpoints_kept=5)
    reference = train(_config(data, tmp_path / "reference", **config))

    class Requeued(SystemExit):
        pass

    handed_over = []

    def submitit_handler(signum, frame):  # what submitit's does on the main process: requeue, then exit
        handed_over.append(signum)
        raise Requeued(-1)

    def learning_rate_warned_at_step_5(step, plan, config):
        if step == 5:  # the warning lands while step 6 (index 5) starts; Python runs the handler at once
            os.kill(os.getpid(), signal.SIGUSR2)
        return learning_rate(step, plan, config)

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        monkeypatch.setattr(train_module, "learning_rate", learning_rate_warned_at_step_5)
        with pytest.raises(Requeued):
            train(_config(data, tmp_path / "warned", **config))
        assert handed_over == [signal.SIGUSR2]
        # Restored once the loop is left: a warning during evaluation goes straight to submitit.
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        signal.signal(signal.SIGUSR2, previous)
    warned = tmp_path / "warned"
    assert sorted(p.name for p in (warned / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert len(_losses(warned)) == 6 and not (warned / "result.json").exists()
    monkeypatch.setattr(train_module, "learning_rate", learning_rate)
    requeued = train(_config(data, warned, **config))  # the requeued job resumes from step 6
    assert _losses(warned) == _losses(tmp_path / "reference")  # bit for bit
    assert requeued.final_train == reference.final_train and requeued.validation == reference.validation
    # Outside a submitit job the signal is left alone.
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    with StopRequest() as stop:
        assert stop.signum != signal.SIGUSR2 and signal.getsignal(signal.SIGUSR2) is previous


@pytest.mark.slow
def test_fsdp_with_chunked_loss_and_activation_checkpointing_matches_one_process(two_process_runs):
    single, sharded = two_process_runs["chunked"]
    assert np.allclose(_losses(sharded), _losses(single), rtol=1e-4)
    # A validation during the run goes through FSDP's root, which holds the chunked head.
    assert [json.loads(line)["step"] for line in (sharded / "validation.jsonl").read_text().splitlines()] == [3, 6]


@pytest.mark.slow
def test_fsdp_bf16_parameters_train_close_to_fp32(two_process_runs):
    single, sharded = two_process_runs["fsdp-bf16"]
    assert np.allclose(_losses(sharded), _losses(single), rtol=2e-2)
    assert _losses(sharded) != _losses(single)  # bf16 really was used


@pytest.mark.slow
def test_fsdp_with_bf16_weights_matches_one_process(two_process_runs):
    # bf16 on the CPU attends in fp32 through simslm's own kernel (sdpa_fp32). That the second process's skeleton
    # finds it registered is checked in-process (test_build); here it runs first in its launch all the same.
    single, sharded = two_process_runs["bf16-weights"]
    assert np.allclose(_losses(sharded), _losses(single), rtol=2e-2)
    import torch
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(sharded / "model" / "model.safetensors")).values()} == {torch.bfloat16}


@pytest.mark.slow
def test_under_fsdp_only_the_main_process_reads_the_weights_and_checkpoints(data, tmp_path):
    """Each process loaded the base model and read every checkpoint whole: for a 7B model 28 GB and 84 GB of host
    memory, once per GPU. The others now build the model on the meta device and receive their shards, and a resumed
    run loads no base model at all; the run is the same, and resumes bit for bit."""
    def config(name: str):
        return _config(data, tmp_path / name, budget_tokens=6 * 4 * 64, batch_size=2, checkpoint_every=3, fsdp=True,
                       num_checkpoints_kept=5)

    _torchrun_in_turn(tmp_path, {"fresh": config("fresh")}, _SPY_IN_TURN)
    assert (tmp_path / "fresh.log").read_text() == "0 base model\n"
    # Two copies of the run taken back to step 3, resumed one after the other in one torchrun (the first in fresh
    # processes). The second's checkpoint is as written before checkpoints stored their model's config.
    for name in ("resumed", "older"):
        shutil.copytree(tmp_path / "fresh", tmp_path / name)
        for path in ("result.json", "model", "checkpoints/step-00000006"):
            shutil.rmtree(tmp_path / name / path) if (tmp_path / name / path).is_dir() else \
                (tmp_path / name / path).unlink()
    _as_written_before_model_configs(tmp_path / "older" / "checkpoints" / "step-00000003")
    _torchrun_in_turn(tmp_path, {"resumed": config("resumed"), "older": config("older")}, _SPY_IN_TURN)
    # Resumed, no process loads the base model: every one builds the checkpoint's model from the config stored
    # beside it, and the main one reads the weights into it.
    assert sorted((tmp_path / "resumed.log").read_text().splitlines()) == ["0 checkpoint weights", "0 optimizer state"]
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "fresh")
    # From the older checkpoint the base model is loaded, as then.
    assert sorted((tmp_path / "older.log").read_text().splitlines()) == [
        "0 base model", "0 checkpoint weights", "0 optimizer state"]
    assert _losses(tmp_path / "older") == _losses(tmp_path / "fresh")


def test_fsdp_in_one_process_is_refused_before_the_run_folder_is_written(data, tmp_path):
    # Its plan for one process would then have refused the torchrun that follows (planned for 1 process, not 2).
    with pytest.raises(ValueError, match="--fsdp needs several processes: start the run with torchrun"):
        train(_config(data, tmp_path / "run", fsdp=True))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compiled_runs_of_two_processes_train_as_one_eager_process(two_process_launch):
    """--compile --fsdp: each process compiles each decoder layer's forward (FSDP's hooks, which gather a layer's
    weights, stay outside); the run trains as one eager process does, to 1e-4, and saves a model under its own
    names. A compile that fails at its first call falls back to eager, to the same losses as --fsdp alone.
    --compile with data parallelism (DDP) compiles the whole step's forward and loss, as one process does."""
    runs, stderr = two_process_launch
    single, compiled = runs["compiled"]
    assert "--compile failed (RuntimeError: no C++ compiler found); training eagerly" in stderr
    num_layers = json.loads((single / "model" / "config.json").read_text())["num_hidden_layers"]
    assert sorted(compiled.with_suffix(".log").read_text().splitlines()) == sorted(
        [f"{rank} LlamaDecoderLayer.forward" for rank in (0, 1)] * num_layers)
    assert np.allclose(_losses(compiled), _losses(single), rtol=1e-4)
    from transformers import AutoModelForCausalLM

    gathered = AutoModelForCausalLM.from_pretrained(compiled / "model").state_dict()
    reference = AutoModelForCausalLM.from_pretrained(single / "model").state_dict()
    assert list(gathered) == list(reference)
    for name, weight in gathered.items():
        assert np.allclose(weight.numpy(), reference[name].numpy(), atol=1e-4), name
    assert _losses(runs["fallback"][1]) == _losses(runs["fsdp"][1])
    single, data_parallel = runs["compiled-data-parallel"]
    assert sorted(data_parallel.with_suffix(".log").read_text().splitlines()) == ["0 _loss_and_totals",
                                                                                 "1 _loss_and_totals"]
    assert np.allclose(_losses(data_parallel), _losses(single), rtol=1e-4)


def test_a_cuda_device_is_refused_where_there_is_none_and_cuda_n_is_that_gpu(data, tmp_path, monkeypatch, capsys):
    """`--device cuda` on a machine without CUDA failed in torch's assertion after the run's folder was written,
    and `--device cuda:1` trained on the CPU without a word (only "cuda" itself was taken as a GPU)."""
    import torch

    from simslm.cli import main
    from simslm.train.distributed import Distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        assert main(["train", "--run-dir", str(tmp_path / "run"), "--data", data, "--budget-tokens", "1000",
                     "--device", device]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"simslm train: error: --device {device}: torch sees no CUDA device here")
        assert "\n" not in error and not (tmp_path / "run").exists()
    # Where there are GPUs (two, faked): cuda:N is that GPU, one past them is refused, and under torchrun each
    # process takes its LOCAL_RANK's (cuda:N would put them all on one).
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert Distributed("cuda:1").device == "cuda:1" and chosen == ["cuda:1"]
    assert Distributed("cuda").device == "cuda" and Distributed("cpu").device == "cpu"
    with pytest.raises(ValueError, match=r"--device cuda:2: torch sees 2 CUDA device\(s\) here"):
        Distributed("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device cuda:1 names one GPU for all 2 processes; under torchrun give"):
        Distributed("cuda:1")

