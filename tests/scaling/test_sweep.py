import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from simslm import jobs
from simslm.scaling import sweep
from simslm.train.plan import RunResult, TrainConfig
from tests.conftest import live_in_group, slurm_without_accounting, tiny_base_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(speech_sequences):
    return speech_sequences


def _spec(data, **changes):
    values = dict(variants=(sweep.Variant(name="random", data=data, init="random"),),
                  depths=(1, 2), budgets_flops=(4e8, 8e8), validation_data=data,
                  train={"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 2})
    values.update(changes)
    return sweep.SweepSpec(**values)


@pytest.mark.slow
@pytest.mark.parametrize("to", ["the sweep", "its process group"])
def test_sigterm_stops_a_sweep_with_its_runs_which_resume(data, tmp_path, to):
    """`kill` of `simslm sweep run` once ended the sweep alone: its runs, forks of the warm server, trained on
    unwatched. Now they stop with it, each at a checkpoint, and a re-run resumes them. Sent to every process (a
    scheduler's time limit, `timeout`), a run gets it from the sweep too: still one stop, at a checkpoint."""
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(2e10, 3e10)), tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "simslm", "sweep", "run", str(tmp_path), "--num-parallel", "2"],
                               cwd=REPO, text=True, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    training = lambda: [path for path in (tmp_path / "runs").glob("*/metrics.jsonl")  # noqa: E731
                        if len(path.read_text().splitlines()) >= 3]
    deadline = time.time() + 120
    while len(training()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    try:
        if to == "the sweep":
            process.send_signal(signal.SIGTERM)  # as `kill PID` sends it
        else:
            os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM
        assert stderr.splitlines()[-1] == (
            f"simslm sweep run: {tmp_path}: stopped by SIGTERM; the 2 run(s) in progress stopped with it, each keeping "
            f"the steps it had trained as a checkpoint; run the same command again to resume")
        assert "Traceback" not in stderr
        assert live_in_group(process.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    stopped_at = {}
    for log in (tmp_path / "runs").glob("*.log"):
        last = log.read_text().splitlines()[-1]
        assert "stopped by SIGTERM after step" in last, last
        stopped_at[log.stem] = int(last.split("after step ")[1].split(",")[0])
    assert len(stopped_at) == 2 and not list((tmp_path / "runs").glob("*/result.json"))
    assert sweep.run_sweep(tmp_path, num_parallel=2, threads_per_run=1) == {"done": 2}
    for identifier, step in stopped_at.items():
        steps = [json.loads(line)["step"] for line in (tmp_path / "runs" / identifier / "metrics.jsonl").open()
                 if '"loss"' in line]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) > step  # resumed, each step logged once


def test_a_sweep_stopped_while_its_cluster_jobs_run_says_they_go_on(data, tmp_path, monkeypatch):
    """SIGTERM to a sweep waiting on SLURM stops the waiting, not the jobs (they are the cluster's): it says so, and
    how to follow them."""
    from types import SimpleNamespace

    from simslm import jobs

    sweep.plan_sweep(_spec(data), tmp_path)

    class Executor:
        def map_array(self, function, *columns):
            return [SimpleNamespace(job_id=f"7_{n}", paths=SimpleNamespace(result_pickle=tmp_path / f"{n}.pkl",
                                                                            stderr=tmp_path / f"{n}.err"))
                    for n in range(len(columns[0]))]

    def stopped(*given, **options):
        raise jobs.Stopped("stopped by SIGTERM; run the same command again to resume")

    def executor(folder, *given, **options):
        folder.mkdir(parents=True)  # as submitit's own makes its folder
        return Executor()

    monkeypatch.setattr(jobs, "submitit_executor", executor)
    monkeypatch.setattr(jobs, "job_failures", stopped)
    with pytest.raises(jobs.Stopped) as raised:
        sweep.run_sweep(tmp_path, executor="slurm", cluster="slurm")
    assert str(raised.value) == (f"{tmp_path}: stopped by SIGTERM while waiting; the 4 job(s) it submitted go on: "
                                 f"follow them with `simslm sweep wait {tmp_path}`")
    assert set(json.loads((tmp_path / "submitit" / "jobs.json").read_text())) == {
        run["id"] for run in sweep.load_sweep(tmp_path)["runs"]}


@pytest.mark.slow
def test_a_sweep_under_a_long_tmpdir_runs_its_runs_as_new_processes(data, tmp_path, monkeypatch, capsys):
    """The warm server (multiprocessing's forkserver) listens on a socket under TMPDIR, whose path may not pass 107
    bytes: under a cluster's long per-job TMPDIR the sweep failed with "AF_UNIX path too long". It now says so and
    starts each run as a new interpreter."""
    long = tmp_path / ("per-job-scratch-" + "x" * 60)
    long.mkdir()
    monkeypatch.setenv("TMPDIR", str(long))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    sweep.plan_sweep(_spec(data, depths=(1,)), tmp_path / "sweep")
    assert sweep.run_sweep(tmp_path / "sweep", num_parallel=2, threads_per_run=1) == {"done": 2}
    assert (f"simslm: warning: TMPDIR {long} is longer than 75 characters, too long for the path of the warm "
            f"server's socket") in capsys.readouterr().err
    assert not list(long.glob("pymp-*"))


def test_plan_gives_content_hashed_ids_and_refuses_twist_without_a_family(data, tmp_path):
    planned = sweep.plan_sweep(_spec(data), tmp_path / "a")
    assert len(planned["runs"]) == 4 and len({r["id"] for r in planned["runs"]}) == 4
    again = sweep.plan_sweep(_spec(data), tmp_path / "b")
    assert [r["id"] for r in planned["runs"]] == [r["id"] for r in again["runs"]]
    changed = sweep.plan_sweep(_spec(data, train={"batch_size": 4, "num_validation_batches": 1, "lr": 1e-3}), tmp_path / "c")
    assert not {r["id"] for r in changed["runs"]} & {r["id"] for r in planned["runs"]}
    with pytest.raises(ValueError, match="TWIST but the spec names no text-LM family"):
        sweep.plan_sweep(_spec(data, variants=(sweep.Variant(name="t", data=data),)), tmp_path / "d")
    spec = sweep.SweepSpec.from_json(json.loads(json.dumps({"variants": [{"name": "r", "data": data, "init": "random"}],
                                                            "depths": [1], "budgets_flops": [1e9]})))
    assert spec.depths == (1,) and spec.variants[0].init == "random"


def test_planning_over_a_sweep_says_which_runs_leave_it(data, tmp_path, capsys):
    """A spec planned again over its sweep with more (a budget, seeds) keeps every run; with fewer or others, the
    runs so far leave sweep.json, and so status, fit and report: said, with their folders kept for a plan again."""
    sweep.plan_sweep(_spec(data), tmp_path)
    more = sweep.plan_sweep(_spec(data, budgets_flops=(4e8, 8e8, 1.6e9)), tmp_path)
    assert len(more["runs"]) == 6 and "not in this plan" not in capsys.readouterr().err
    fewer = sweep.plan_sweep(_spec(data, budgets_flops=(4e8,)), tmp_path)
    assert len(fewer["runs"]) == 2  # 8e8's two and 1.6e9's two leave it
    assert f"{tmp_path}: 4 run(s) planned there before are not in this plan" in capsys.readouterr().err


def test_variants_of_units_from_different_codebooks_are_said_and_validation_data_of_another_refused(data, tmp_path,
                                                                                                     capsys):
    """A variant built from units of another codebook (of the same size) planned beside the others without a word,
    and its speech CE went into the report beside theirs; validation data of another codebook gave every run a
    held-out loss over other sounds."""
    from simslm.sequences.build import speech_units_folder

    units = tmp_path / "other-units"
    shutil.copytree(speech_units_folder(data), units)
    header = json.loads((units / "units.json").read_text())
    (units / "units.json").write_text(json.dumps({**header, "codebook_sha256": "f" * 64}))
    other = tmp_path / "other-seq"
    shutil.copytree(data, other)
    index = json.loads((other / "index.json").read_text())
    (other / "index.json").write_text(json.dumps({**index, "units_folder": {"relative": "../other-units",
                                                                              "absolute": str(units)}}))
    variants = (sweep.Variant(name="random", data=data, init="random"),
                sweep.Variant(name="other", data=str(other), init="random"))
    sweep.plan_sweep(_spec(data, variants=variants, validation_data=""), tmp_path / "sweep")
    assert ("warning: variants read units of different codebooks (random; other): their speech CEs are losses over "
            "other tokens, not comparable") in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"{other}: its units are of another codebook .* \\(validation_data of "
                                         f"variant random\\)"):
        sweep.plan_sweep(_spec(data, validation_data=str(other)), tmp_path / "sweep2")
    assert not (tmp_path / "sweep2").exists()


def test_a_spec_reads_paths_from_the_home_folder(data, tmp_path, monkeypatch):
    """`"data": "~/seq"` in a spec is the home folder's, as in every other file simslm reads options from."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "seq").symlink_to(data)
    spec = sweep.SweepSpec.from_json({"variants": [{"name": "r", "data": "~/seq", "init": "random"}],
                                      "depths": [1], "budgets_flops": [4e8], "validation_data": "~/seq"})
    assert spec.variants[0].data == spec.validation_data == str(tmp_path / "home" / "seq")
    planned = sweep.plan_sweep(spec, tmp_path / "sweep")
    assert Path(planned["runs"][0]["config"]["data"]).resolve() == Path(data).resolve()


def test_a_sweep_finds_its_data_after_a_move_and_when_copied_alone(data, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(data, tmp_path / "study" / "data")
    monkeypatch.chdir(tmp_path / "study")  # paths as a user types them: relative to where `sweep plan` runs
    planned = sweep.plan_sweep(_spec("data", validation_data="data"), "sweep")
    stored = json.loads((tmp_path / "study" / "sweep" / "sweep.json").read_text())
    assert {run["config"]["data"] for run in stored["runs"]} == {"../data"}
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tmp_path / "study" / "sweep", tmp_path / "sweep-alone")  # the sweep without its data
    assert {r["config"]["data"] for r in sweep.load_sweep("sweep-alone")["runs"]} == {str(tmp_path / "study" / "data")}
    (tmp_path / "study").rename(tmp_path / "moved")  # the whole study, data and sweep together
    runs = sweep.load_sweep(tmp_path / "moved" / "sweep")["runs"]
    assert {(Path(r["config"]["data"]).resolve(), Path(r["config"]["validation_data"]).resolve()) for r in runs} == {
        ((tmp_path / "moved" / "data").resolve(),) * 2}
    # The ids do not depend on the directory `sweep plan` ran from.
    again = sweep.plan_sweep(_spec(str(tmp_path / "moved" / "data"), validation_data=str(tmp_path / "moved" / "data")),
                             tmp_path / "moved" / "sweep2")
    assert [r["id"] for r in again["runs"]] == [r["id"] for r in planned["runs"]]
    with pytest.raises(ValueError, match="no index.json"):
        sweep.plan_sweep(_spec(str(tmp_path / "nowhere")), tmp_path / "bad")


def test_a_study_moved_with_a_run_in_progress_resumes_that_run(data, tmp_path, train_stopped_at):
    """A sweep and its data moved (or copied) together while a run is half done: the run resumes from its
    checkpoint where it is now. Before, it failed as 'another config (other data, validation_data)'."""
    import shutil

    from simslm.train.plan import TrainConfig

    shutil.copytree(data, tmp_path / "study" / "data")
    data_here = str(tmp_path / "study" / "data")
    sweep.plan_sweep(_spec(data_here, depths=(1,), budgets_flops=(8e8,), validation_data=data_here),
                     tmp_path / "study" / "sweep")
    (run,) = sweep.load_sweep(tmp_path / "study" / "sweep")["runs"]
    train_stopped_at(TrainConfig(**run["config"]), 5)
    (tmp_path / "study").rename(tmp_path / "moved")
    assert sweep.status_counts(tmp_path / "moved" / "sweep") == {"started": 1}
    assert sweep.run_sweep(tmp_path / "moved" / "sweep", num_parallel=1) == {"done": 1}
    run_dir = tmp_path / "moved" / "sweep" / "runs" / run["id"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, json.loads((run_dir / "plan.json").read_text())["total_steps"] + 1))


def test_a_run_evaluated_part_way_is_evaluated_on_the_rest_only(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {"sblimp": {}, "tsc/S": {}, "tsc/T": {}}}))
    bench = ("bench/sblimp", "tsc=bench/tsc", "swuggy=bench/wuggy", "validation")
    assert sweep._unevaluated(tmp_path, bench) == ("swuggy=bench/wuggy", "validation")
    assert not sweep._evaluated(tmp_path, bench) and sweep._evaluated(tmp_path, bench[:2])


def test_a_run_scored_on_a_benchmark_folder_built_again_since_is_scored_again(tmp_path):
    import os

    from simslm import jobs
    from simslm.eval.layouts import bench_digest

    def build(folder, words):  # as `bench build` writes a folder: whole, then moved into place
        with jobs.atomic_path(folder) as staging:
            staging.mkdir()
            (staging / "gold.csv").write_text("id,filename,word,correct\n" + "".join(
                f"{i},audio/{i},{word},1\n" for i, word in enumerate(words)))
            (staging / "bench.json").write_text(json.dumps({"layout": "slm21-lexical"}))

    folder, run = tmp_path / "swuggy", tmp_path / "run"
    build(folder, ["cat", "dog"])
    run.mkdir()
    entry = {"accuracy": 0.5, "num_cut": 0, "scoring": {}, "bench_digest": bench_digest(folder)}
    (run / "eval.json").write_text(json.dumps({"benchmarks": {"swuggy": entry, "swuggy/in-vocab": entry}}))
    bench = (f"swuggy={folder}",)
    assert sweep._evaluated(run, bench)
    build(folder, ["cat", "pig"])  # other words (a new seed, another way of making non-words)
    assert sweep._unevaluated(run, bench) == bench
    build(folder, ["cat", "dog"])  # built again alike: the same benchmark, scored
    assert sweep._evaluated(run, bench)
    # A result from before digests were recorded: stale where the folder was built after it was written.
    legacy = {"accuracy": 0.5, "num_cut": 0, "scoring": {}}
    (run / "eval.json").write_text(json.dumps({"benchmarks": {"swuggy": legacy}}))
    assert sweep._evaluated(run, bench)
    later = (run / "eval.json").stat().st_mtime + 10
    os.utime(folder / "bench.json", (later, later))
    assert sweep._unevaluated(run, bench) == bench


def test_a_run_whose_long_sides_were_cut_before_is_scored_again_as_slamkit_scores_them(tmp_path):
    # eval.json entries from before `--long-sides` (cut, the only way then) with sides past the model's positions
    # are scored again, whole, so a sweep's runs are scored alike; without such sides cut and whole are the same.
    cut = {"num_cut": 154, "scoring": {"preset": "reference"}}
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {
        "tsc/S": cut, "tsc/T": {"num_cut": 0, "scoring": {}}, "sblimp": {"num_cut": 0, "scoring": {}},
        "old/S": {**cut, "scoring": {"long_sides": "whole"}}}}))
    assert sweep._unevaluated(tmp_path, ("tsc=bench/tsc", "bench/sblimp", "old=bench/old")) == ("tsc=bench/tsc",)


def test_a_run_evaluated_on_a_published_set_named_by_hub_id_counts_as_evaluated(tmp_path):
    # `simslm eval --bench slprl/multispeaker-storycloze:sSC` files its results under the set's name and folder;
    # the sweep once looked for "multispeaker-storycloze:sSC", so such a run stayed "evaluating" and was
    # evaluated again by every `sweep run`.
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {
        "multispeaker-storycloze/sSC": {}, "generation": {}, "a=b": {}}}))
    bench = ("slprl/multispeaker-storycloze:sSC", "generation=prompts/tsc", "a=b=bench/c", "slprl/sblimp")
    assert sweep._unevaluated(tmp_path, bench) == ("slprl/sblimp",)


def test_benchmarks_every_run_would_fail_on_are_refused_before_any_run_trains(data, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "gold.csv").write_text("id,filename,type,correct\n")  # an sLM21 folder, as far as planning looks
    for changes, message in (({"bench": (str(tmp_path / "nowhere"),)}, "nowhere: benchmark folder does not exist"),
                             ({"bench": (str(tmp_path),)}, "not a benchmark folder"),
                             ({"bench": ("validation",), "validation_data": ""}, "no validation_data"),
                             ({"bench": (str(bench),), "eval_modes": ("S", "X")}, "eval_modes: X")):
        with pytest.raises(ValueError, match=message):
            sweep.plan_sweep(_spec(data, **changes), tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
    # A published set named by hub id is downloaded by its first evaluation: planned as it is.
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,), bench=("slprl/sblimp",)), tmp_path / "hub")
    # A benchmark folder gone since the plan: `sweep run` says so before it trains anything.
    planned = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,), bench=(str(bench),)), tmp_path / "s")
    shutil.rmtree(bench)
    with pytest.raises(ValueError, match="benchmark folder does not exist"):
        sweep.run_sweep(tmp_path / "s", num_parallel=1)
    assert not any((Path(run["config"]["run_dir"]) / "config.json").exists() for run in planned["runs"])


def test_a_run_that_failed_is_said_failed_with_its_error_and_retried(data, tmp_path):
    """`sweep status` said "started" of a run whose last attempt ended in an error, as of one stopped to resume."""
    planned = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,),
                                     train={"batch_size": 4, "lr": 1e39, "warmup_fraction": 0.0, "lr_min": 0.0}),
                               tmp_path / "s")
    with pytest.raises(jobs.JobsFailed, match="1 run\\(s\\) failed"):
        sweep.run_sweep(tmp_path / "s", num_parallel=1)
    (run,) = planned["runs"]
    assert sweep.run_status(run, ()) == "failed" and sweep.status_counts(tmp_path / "s") == {"failed": 1}
    assert f"failed {run['id']}: simslm sweep run-one: error: " in sweep.status_table(tmp_path / "s")
    assert "lower --lr" in sweep.run_error(run)
    # Stopped to resume (its log's last line is not an error): started, as before.
    with open(Path(run["config"]["run_dir"]).parent / f"{run['id']}.log", "a") as log:
        log.write("simslm sweep run-one: interrupted; re-run the same command to resume\n")
    assert sweep.run_status(run, ()) == "started"


@pytest.mark.slow
def test_a_cluster_job_that_failed_is_said_failed_with_its_error(data, tmp_path):
    """A run whose SLURM job ended in an error read `started` in `sweep status`: its output was in submitit's
    folder, not in the run's log where a local sweep's goes. The job now writes its start, its end and simslm's
    one-line error there (submitit's local cluster runs the same job code as SLURM)."""
    pytest.importorskip("submitit")
    planned = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,),
                                     train={"batch_size": 4, "lr": 1e39, "warmup_fraction": 0.0, "lr_min": 0.0}),
                               tmp_path / "s")
    (run,) = planned["runs"]
    # The sweep says each job's own error, not submitit's wrapper of it ("FailedJobError").
    with pytest.raises(jobs.JobsFailed, match=f"1 run\\(s\\) failed: {run['id']} \\(ValueError: .*: the loss became "
                                              f"nan at step 2; lower --lr .*; log .*_log.err\\)"):
        sweep.run_sweep(tmp_path / "s", executor="slurm", cluster="local", timeout_min=10)
    assert sweep.run_status(run, ()) == "failed" and "lower --lr" in sweep.run_error(run)
    assert f"failed {run['id']}: simslm sweep run-one: error: " in sweep.status_table(tmp_path / "s")
    log = (tmp_path / "s" / "runs" / f"{run['id']}.log").read_text().splitlines()
    assert len(log) == 2 and re.fullmatch(r"simslm sweep run-one: job \d+ started .*", log[0]), log
    # Submitted without waiting, then followed: `sweep wait` says the error too.
    sweep.run_sweep(tmp_path / "s", executor="slurm", cluster="local", timeout_min=10, wait=False)
    with pytest.raises(jobs.JobsFailed, match=f"1 run\\(s\\) failed: {run['id']} \\(.*: the loss became nan at step 2; "
                                              f"lower --lr .*; log .*_log.err\\)"):
        sweep.wait_for_sweep(tmp_path / "s", poll_sec=0.2)
    # A job started again (retried, or requeued at its time limit): started, until it ends.
    with open(tmp_path / "s" / "runs" / f"{run['id']}.log", "a") as handle:
        handle.write("simslm sweep run-one: job 7 started (its output: the sweep's submitit folder)\n")
    assert sweep.run_status(run, ()) == "started"


def test_a_sweep_over_data_built_again_since_its_plan_is_refused(data, tmp_path):
    # Its finished runs saw the data before; runs trained now would see the new, and one fit would mix the two.
    from simslm.sequences.build import BuildConfig, build_sequences

    shutil.copytree(data, tmp_path / "seq")
    spec = _spec(str(tmp_path / "seq"), depths=(1,), budgets_flops=(4e8,))
    sweep.plan_sweep(spec, tmp_path / "study" / "sweep")
    sweep.plan_sweep(spec, tmp_path / "study" / "sweep")  # planned again on the same data: as before
    stored = json.loads((tmp_path / "seq" / "index.json").read_text())["config"]
    build_sequences(BuildConfig.from_dict({**stored, "out": str(tmp_path / "seq"), "overwrite": True, "seed": 1}))
    for attempt in (lambda: sweep.run_sweep(tmp_path / "study" / "sweep", num_parallel=1),
                    lambda: sweep.plan_sweep(spec, tmp_path / "study" / "sweep")):
        with pytest.raises(ValueError, match="seq was built again since the sweep was planned"):
            attempt()
    assert not (tmp_path / "study" / "sweep" / "runs").exists() or \
        not any((tmp_path / "study" / "sweep" / "runs").iterdir())
    # Moved with the sweep, the data is still the data it was planned on.
    shutil.copytree(data, tmp_path / "other" / "seq")
    sweep.plan_sweep(_spec(str(tmp_path / "other" / "seq"), depths=(1,), budgets_flops=(4e8,)),
                     tmp_path / "other" / "sweep")
    (tmp_path / "other").rename(tmp_path / "moved")
    moved = sweep.load_sweep(tmp_path / "moved" / "sweep")
    assert list(moved["data_sha256"]) == [str(tmp_path / "moved" / "seq")]
    sweep._check_inputs_unchanged(moved)


def test_a_sweep_whose_twist_source_changed_since_its_plan_is_refused(data, tmp_path):
    # A text LM pretrained again into the same folder: the finished TWIST runs started from the old weights.
    # Llama: transformers 5 reads the tok512 beside a qwen2 config as a Qwen2Tokenizer of 513 tokens, which `plan`
    # refuses for the data built with tok512 (`tiny_base_model`).
    source = tiny_base_model(tmp_path / "models" / "llama-32", "llama", 32, 1)
    families = {"llama": [source]}
    one_cell = {"families": families, "depths": (), "budgets_flops": (4e8,)}
    twist = _spec(data, **one_cell, variants=(sweep.Variant(name="t", data=data),))
    scratch = _spec(data, **one_cell)
    planned = sweep.plan_sweep(twist, tmp_path / "twist")
    sweep.plan_sweep(twist, tmp_path / "twist")  # planned again, nothing changed: as before
    assert list(planned["base_sha256"]) == [str(Path(source).resolve())]
    sweep.plan_sweep(scratch, tmp_path / "scratch")  # a random init reads the source's architecture only
    tiny_base_model(Path(source), "llama", 32, 1)  # the same architecture, other weights
    for attempt in (lambda: sweep.run_sweep(tmp_path / "twist", num_parallel=1),
                    lambda: sweep.plan_sweep(twist, tmp_path / "twist")):
        with pytest.raises(ValueError, match="llama-32 changed since the sweep was planned"):
            attempt()
    assert not (tmp_path / "twist" / "runs").exists() or not any((tmp_path / "twist" / "runs").iterdir())
    sweep.plan_sweep(scratch, tmp_path / "scratch")
    sweep._check_inputs_unchanged(sweep.load_sweep(tmp_path / "scratch"))


def test_a_sweep_of_models_its_runs_cannot_start_from_is_refused_when_planned(data, tmp_path, monkeypatch):
    """A family of hub ids not in the cache, with no network, was planned; every run then failed at its start, each
    after half a minute of retries. So were data built with another tokenizer than a family's models, refused by
    each run. Both are refused once, when planned, and leave no folder."""
    import huggingface_hub

    other = tiny_base_model(tmp_path / "models" / "qwen2-32", "qwen2", 32, 1)  # a Qwen2Tokenizer of 513 tokens
    with pytest.raises(ValueError, match=r"seq: built with another tokenizer than .*qwen2-32's, which has 513 tokens, "
                                         r"but the data's text tokens are 512; build the sequences with --tokenizer"):
        sweep.plan_sweep(_spec(data, families={"qwen2": [other]}, depths=()), tmp_path / "mixed")
    hub = _spec(data, families={"qwen2.5": ["Qwen/Qwen2.5-0.5B"]}, depths=())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("SIMSLM_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"^Qwen/Qwen2.5-0.5B: not in the Hugging Face cache, and downloads are off "
                                         r"\(SIMSLM_OFFLINE / HF_HUB_OFFLINE\); where there is a network, run `hf "
                                         r"download Qwen/Qwen2.5-0.5B`"):
        sweep.plan_sweep(hub, tmp_path / "hub")
    monkeypatch.delenv("SIMSLM_OFFLINE")

    def unreachable(*_, **__):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    with pytest.raises(ValueError, match=r"Qwen/Qwen2.5-0.5B: not in the Hugging Face cache and the hub cannot be "
                                         r"reached \(OSError\)"):
        sweep.plan_sweep(hub, tmp_path / "hub")
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "hub").exists()
    # Found in the cache, a hub model is planned without asking the hub.
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *_: str(tmp_path / "config.json"))
    assert len(sweep.plan_sweep(hub, tmp_path / "hub")["runs"]) == 2


def test_a_large_file_is_digested_from_samples_and_still_tells_weights_apart(tmp_path, monkeypatch):
    from simslm import jobs

    monkeypatch.setattr(jobs, "DIGEST_WHOLE_BYTES", 1000)
    monkeypatch.setattr(jobs, "DIGEST_SAMPLE_BYTES", 100)
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(bytes(range(256)) * 40)
    before = jobs.content_digest(tmp_path / "model")
    changed = bytearray(weights.read_bytes())
    changed[len(changed) // 2] ^= 1  # inside the middle sample
    weights.write_bytes(bytes(changed))
    assert jobs.content_digest(tmp_path / "model") != before
    (tmp_path / "model" / "config.json").write_text("{}")  # a small file, read whole
    assert jobs.content_digest(tmp_path / "model") != jobs.content_digest(weights)


def _started_run(data, sweep_dir: Path) -> tuple[dict, Path]:
    """The first run of a planned sweep, started (its config written) and not finished."""
    first = sweep.plan_sweep(_spec(data), sweep_dir)["runs"][0]
    run_dir = Path(first["config"]["run_dir"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    return first, run_dir


def test_a_half_written_result_is_not_done_and_a_locked_run_is_skipped(data, tmp_path):
    first, run_dir = _started_run(data, tmp_path)
    (run_dir / ".result.json.tmp").write_text('{"half": ')
    assert sweep.run_status(first, ()) == "started"
    with open(run_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert sweep.run_status(first, ()) == "running"
        assert sweep.execute_run(str(tmp_path), first["id"]) == "running"  # a second worker backs off
    assert sweep.run_status(first, ()) == "started"  # the lock dies with its holder


def test_status_says_how_far_a_run_not_finished_got(data, tmp_path):
    """A run training on a cluster read `running` for hours with no sign of its progress; now its last logged step
    of the plan's steps, read from metrics.jsonl's end (a torn last line, as a kill leaves, skipped)."""
    first, run_dir = _started_run(data, tmp_path)
    assert sweep.status_table(tmp_path).splitlines()[1].split()[1] == "started"  # no step yet: no share
    (run_dir / "plan.json").write_text(json.dumps({"total_steps": 400}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": step, "loss": 1.0}) + "\n"
                                                   for step in range(1, 181)) + '{"step": 18')
    assert sweep.status_table(tmp_path).splitlines()[1].split()[1:3] == ["started", "45%"]
    with open(run_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert sweep.status_table(tmp_path).splitlines()[1].split()[1:3] == ["running", "45%"]


def test_a_user_who_may_only_read_a_sweep_sees_which_runs_are_held(data, tmp_path):
    """`sweep status` by a colleague with read access only: the lock probe opened the run's lock file for
    appending, which failed with PermissionError. A process that may not write the sweep (`as_reader`) asks while
    this one holds the run's lock, and after."""
    import sys

    from tests.conftest import as_reader

    first, run_dir = _started_run(data, tmp_path)
    (run_dir / ".lock").write_text("")
    probe = [*as_reader(), sys.executable, "-c", "import json, sys; from simslm.scaling import sweep; "
             "print(sweep.run_status(json.loads(sys.argv[1]), ()))", json.dumps(first)]
    for path in (run_dir / ".lock", run_dir / "config.json", run_dir):
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        with open(run_dir / ".lock", "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        free = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    finally:
        run_dir.chmod(0o755)
    assert (held.stdout.strip(), free.stdout.strip()) == ("running", "started"), held.stderr + free.stderr


def test_a_run_let_go_unfinished_while_the_sweep_ran_is_run_too(data, tmp_path, monkeypatch):
    """A killed sweep's child still holds its run's lock for a moment after the kill: a sweep started then skips
    that run as another's, and must take it up once the lock is gone (CI saw {'done': 3, 'started': 1})."""
    planned = sweep.plan_sweep(_spec(data), tmp_path)
    first = Path(planned["runs"][0]["config"]["run_dir"])
    first.mkdir(parents=True)
    (first / "config.json").write_text("{}")
    lock = open(first / ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # the dying process's
    given = []

    def executor(sweep_dir, runs, **_):
        given.append([run["id"] for run in runs])
        lock.close()  # the dying process is gone
        for run in runs:
            Path(run["config"]["run_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(run["config"]["run_dir"]) / "result.json").write_text("{}")

    monkeypatch.setitem(sweep.EXECUTORS, "local", executor)
    assert sweep.run_sweep(tmp_path) == {"done": 4}
    ids = [run["id"] for run in planned["runs"]]
    assert given == [ids[1:], ids[:1]]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_runs(data, tmp_path):
    sweep.plan_sweep(_spec(data), tmp_path)
    command = [sys.executable, "-m", "simslm", "sweep", "run", str(tmp_path), "--num-parallel", "1"]
    # A process killed outright leaves its forkserver's folder (pymp-*) in the temporary directory: this test's own,
    # short (under pytest's tmp_path a socket's path there could pass AF_UNIX's 107 bytes).
    temporary = tempfile.mkdtemp(prefix="simslm-")
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": temporary})
    results = lambda: sorted((tmp_path / "runs").glob("*/result.json"))  # noqa: E731
    deadline = time.time() + 300
    while not results() and time.time() < deadline:
        time.sleep(0.2)
    assert results(), "no run finished in time"
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its running child, mid-run
    process.wait()
    shutil.rmtree(temporary)
    finished = {path: path.stat().st_mtime_ns for path in results()}
    assert len(finished) < 4
    counts = sweep.run_sweep(tmp_path, num_parallel=2, threads_per_run=1)
    assert counts == {"done": 4}
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime  # finished runs were not run again
    table = sweep.status_table(tmp_path)
    assert "total: 4 done" in table
    rows = sweep.collect(tmp_path)
    assert {row["loss_source"] for row in rows} == {"validation"} and len(rows) == 4
    # A copied sweep reads its own runs: the same ledger and the same numbers.
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved)
    assert sweep.status_counts(moved) == {"done": 4}
    assert [row["loss_speech"] for row in sweep.collect(moved)] == [row["loss_speech"] for row in rows]
    assert all(row["run_dir"].startswith(str(moved)) for row in sweep.collect(moved))
    empty = tmp_path.parent / f"{tmp_path.name}-empty"
    sweep.plan_sweep(_spec(data), empty)
    with pytest.raises(ValueError, match="no finished run"):  # an empty fit.json would replace a good one
        sweep.fit_sweep(empty)


def _local_job(tmp_path, run, pid) -> None:
    """The sweep's ledger of cluster jobs with `run`'s job on submitit's local cluster: its controller's pid."""
    (tmp_path / "submitit").mkdir(exist_ok=True)
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": str(pid), "result": f"{pid}_0_result.pkl", "stderr": f"{pid}_0_log.err", "cluster": "local"}}))


def _sleeper(*arguments: str) -> subprocess.Popen:
    """A Python process asleep for a minute, `arguments` in its command line, returned once it runs: until its exec
    is through, /proc shows it no command line, as it shows a job's controller still starting."""
    process = subprocess.Popen([sys.executable, "-c", "print(flush=True); import time; time.sleep(60)", *arguments],
                               stdout=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()
    return process


def _proc_says(pid: int) -> str:
    """What /proc shows of process `pid`, for an assertion's message."""
    try:
        return f"cmdline {Path(f'/proc/{pid}/cmdline').read_bytes()!r}, stat {Path(f'/proc/{pid}/stat').read_text()!r}"
    except OSError as error:
        return str(error)


def test_a_run_whose_cluster_job_waits_in_the_queue_is_queued_and_not_submitted_again(data, tmp_path):
    """A run submitted with `sweep run --no-wait` read `pending` until its job started, and a second `sweep run`
    submitted it again. Here the job is a process of submitit's local cluster that has not taken the run (its
    controller's pid, alive); once it is gone without a result, the run is pending again."""
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    # As submitit's local controller runs (`python -m submitit.local._local FOLDER`): its module in its command line.
    waiting = _sleeper("submitit.local._local")
    try:
        _local_job(tmp_path, run, waiting.pid)
        assert sweep.run_status(run, ()) == "queued", _proc_says(waiting.pid)
        assert sweep.status_counts(tmp_path) == {"queued": 1}
        assert sweep.run_sweep(tmp_path, num_parallel=1) == {"queued": 1}  # nothing started, nothing trained
        assert not (Path(run["config"]["run_dir"]) / "config.json").exists()
    finally:
        waiting.kill()
        waiting.wait()
    assert sweep.run_status(run, ()) == "pending"
    # A ledger from before jobs recorded their cluster cannot say whether the job ended: not queued.
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": "1", "result": "1_0_result.pkl", "stderr": "1_0_log.err"}}))
    assert sweep.run_status(run, ()) == "pending"


def test_a_local_job_whose_pid_is_another_process_now_or_a_zombie_has_ended(data, tmp_path):
    """The pid of a local job's controller alive, but another process's (the machine restarted since), or a zombie
    not yet reaped (alive to kill(0), no command line): the job has ended, and its run is pending, not `queued`
    for good. Told apart by the command line /proc shows, which needs /proc of this PID namespace."""
    if not jobs.proc_shows_this_namespace():
        pytest.skip("reads command lines from /proc, which here lists another PID namespace's processes")
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    other = _sleeper()
    try:
        _local_job(tmp_path, run, other.pid)
        assert sweep.run_status(run, ()) == "pending", _proc_says(other.pid)
    finally:
        other.kill()
        other.wait()
    ended = subprocess.Popen([sys.executable, "-c", "pass", "submitit.local._local"])
    try:
        deadline = time.time() + 30
        while Path(f"/proc/{ended.pid}/stat").read_text().rpartition(") ")[2][0] != "Z" and time.time() < deadline:
            time.sleep(0.05)
        _local_job(tmp_path, run, ended.pid)
        assert sweep.run_status(run, ()) == "pending", _proc_says(ended.pid)
    finally:
        ended.wait()


def test_where_proc_lists_another_namespace_a_live_job_stays_queued(data, tmp_path):
    """In a PID namespace given its parent's /proc, /proc/<pid> is another process: a kernel thread often, whose
    empty command line read as a job still starting, or none, read as a job ended. There the pid being alive is all
    there is to go by."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --pid` (util-linux, as root) to make a PID namespace")
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    (tmp_path / "submitit").mkdir()
    ledger = tmp_path / "submitit" / "jobs.json"
    # The job's controller is the script itself: pid 1 in its namespace, alive, and /proc/1 the machine's init,
    # whose command line is not submitit's (read so, the job had ended).
    script = f"""
import json, os
from simslm import jobs
from simslm.scaling import sweep

run = {run!r}
open({str(ledger)!r}, "w").write(json.dumps({{run["id"]: {{
    "job_id": str(os.getpid()), "result": "x_result.pkl", "stderr": "x_log.err", "cluster": "local"}}}}))
print(jobs.proc_shows_this_namespace(), sweep.run_status(run, ()))
"""
    told = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert told.returncode == 0, told.stderr[-2000:]
    assert told.stdout.split() == ["False", "queued"]


def _fake_sacct(monkeypatch, states: dict[str, str]) -> list[list[str]]:
    """SLURM's accounting as submitit asks it (`sacct ... -j ID -j ID`), answering `states` (job id: state), to a
    fresh watcher; the job ids of each call."""
    import submitit
    from submitit.core import core
    from submitit.slurm import slurm

    calls = []

    def sacct(command, **_):
        assert command[0] == "sacct", command
        asked = [command[at + 1] for at, word in enumerate(command) if word == "-j"]
        calls.append(sorted(asked))
        known = [(job_id, state) for job_id, state in states.items() if job_id.split("_")[0] in asked]
        return ("JobID|State|NodeList\n" + "".join(f"{job_id}|{state}|node1\n" for job_id, state in known)).encode()

    monkeypatch.setattr(core.subprocess, "check_output", sacct)
    monkeypatch.setattr(submitit.SlurmJob, "watcher", slurm.SlurmInfoWatcher(delay_s=600))
    monkeypatch.setattr(jobs, "SLURM_QUEUE", jobs.SlurmQueue())
    return calls


def test_a_status_pass_asks_slurm_of_all_its_jobs_in_one_call(data, tmp_path, monkeypatch):
    """Each job new to submitit's watcher forced a call of sacct: a status pass over a sweep of 100 runs ran it 100
    times. Made known all at once, they are asked of in one call a pass."""
    sweep.plan_sweep(_spec(data, depths=(1, 2, 3), budgets_flops=(4e8, 8e8)), tmp_path)
    runs = sweep.load_sweep(tmp_path)["runs"]
    assert len(runs) > 2
    states = {str(1000 + number): "PENDING" for number in range(len(runs))}
    states["1000"] = "CANCELLED by 0"  # ended without a result: its run is not queued
    calls = _fake_sacct(monkeypatch, states)
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": job_id, "result": f"{job_id}_0_result.pkl", "stderr": f"{job_id}_0_log.err", "cluster": "slurm"}
        for run, job_id in zip(runs, states)}))
    assert sweep.status_counts(tmp_path) == {"pending": 1, "queued": len(runs) - 1}
    assert calls == [sorted(states)]
    # The next pass asks once more, of the jobs that had not ended.
    assert sweep.status_counts(tmp_path) == {"pending": 1, "queued": len(runs) - 1}
    assert calls[1:] == [sorted(states)[1:]]


def test_where_slurm_keeps_no_accounting_its_queue_says_which_jobs_have_ended(data, tmp_path, monkeypatch):
    """sacct fails where a cluster keeps no accounting, and knows nothing yet of a job just submitted: every state
    read UNKNOWN, so a job that died without a result read `queued` for good (`sweep run` never started its run
    again, `sweep wait` waited forever). squeue, asked once for all of them, says which are still there. Both are
    scripts on PATH here, as SLURM's commands are on a login node."""
    sweep.plan_sweep(_spec(data, depths=(1, 2, 3), budgets_flops=(4e8, 8e8)), tmp_path)
    runs = sweep.load_sweep(tmp_path)["runs"][:4]
    # 1000 runs, 1001 is gone from the queue (killed, purged), 1002_0 is an array task pending, 1003 was cancelled.
    _, asked = slurm_without_accounting(tmp_path, monkeypatch, "1000|RUNNING\n1002_0|PENDING\n1003|CANCELLED\n")
    job_ids = ["1000", "1001", "1002_0", "1003"]
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": job_id, "result": f"{job_id}_result.pkl", "stderr": f"{job_id}_log.err", "cluster": "slurm"}
        for run, job_id in zip(runs, job_ids)}))
    statuses = {run["id"]: sweep.run_status(run, ()) for run in runs}
    assert [statuses[run["id"]] for run in runs] == ["queued", "pending", "queued", "pending"]
    assert asked.read_text().splitlines() == ["--noheader --array --format %i|%T --jobs 1000,1001,1002,1003"]
    # Where squeue does not answer either (a copy of the sweep off the cluster), nothing tells: still queued.
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm "
                                             "controller' >&2\nexit 1\n")
    monkeypatch.setattr(jobs, "SLURM_QUEUE", jobs.SlurmQueue())
    assert [sweep.run_status(run, ()) for run in runs] == ["queued"] * 4


@pytest.mark.parametrize("cluster", ["slurm", "local"])
def test_sweep_wait_ends_when_a_job_died_without_a_result(data, tmp_path, monkeypatch, cluster):
    """A job killed for memory, cancelled or lost with its node writes no result file: `sweep wait` learns from
    SLURM (or, locally, from the controller's pid being gone) that it ended, and reports its run as failed
    instead of waiting forever."""
    import threading

    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    if cluster == "slurm":
        job_id = "4242_0"
        _fake_sacct(monkeypatch, {job_id: "OUT_OF_MEMORY"})
    else:
        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        ended.wait()  # reaped: its pid is free
        job_id = str(ended.pid)
    (tmp_path / "submitit").mkdir()
    (tmp_path / "submitit" / "jobs.json").write_text(json.dumps({run["id"]: {
        "job_id": job_id, "result": f"{job_id}_0_result.pkl", "stderr": f"{job_id}_0_log.err", "cluster": cluster}}))
    outcome = []

    def wait():
        try:
            sweep.wait_for_sweep(tmp_path, poll_sec=0.05)
        except RuntimeError as error:
            outcome.append(str(error))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "sweep wait still waits for a job that has ended"
    assert outcome and outcome[0].startswith(f"{tmp_path}: 1 run(s) failed: {run['id']} (no error said; log ")


@pytest.mark.slow
def test_submitit_executor_runs_the_same_code_and_can_submit_and_return(data, tmp_path):
    pytest.importorskip("submitit")
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    # Waited for, a run of two tasks: each writes its own result, and `result()` of such a job is an AssertionError
    # ("use `results()`"), which failed every run of `--nproc-per-run 2` until the twenty-ninth session.
    counts = sweep.run_sweep(tmp_path, executor="slurm", cluster="local", timeout_min=10, nproc_per_run=2)
    assert counts == {"done": 1}
    assert list((tmp_path / "submitit").iterdir())  # submitit's job folder: it really went through submitit
    # Submit and return, then follow the jobs from the ledger: a run of two tasks, torch.distributed set up
    # from the job's environment by submitit's helper.
    sweep.plan_sweep(_spec(data, depths=(2,), budgets_flops=(4e8,)), tmp_path / "two")
    sweep.run_sweep(tmp_path / "two", executor="slurm", cluster="local", timeout_min=10, nproc_per_run=2,
                    wait=False)
    ledger = json.loads((tmp_path / "two" / "submitit" / "jobs.json").read_text())
    assert ledger
    # Until its job takes the run's lock, the run is queued, not pending: a second `sweep run` submits it again no
    # more than it would a running one.
    (run,) = sweep.load_sweep(tmp_path / "two")["runs"]
    assert sweep.run_status(run, ()) in ("queued", "running")
    sweep.run_sweep(tmp_path / "two", executor="slurm", cluster="local", timeout_min=10, nproc_per_run=2,
                    wait=False)
    assert json.loads((tmp_path / "two" / "submitit" / "jobs.json").read_text()) == ledger
    assert sweep.wait_for_sweep(tmp_path / "two", poll_sec=0.5) == {"done": 1}
    (run,) = sweep.load_sweep(tmp_path / "two")["runs"]
    assert json.loads((Path(run["config"]["run_dir"]) / "plan.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_job_warned_of_its_time_limit_is_requeued_and_its_run_resumes(data, tmp_path, processes):
    """SLURM's warning before a job's time limit, sent to every task of a job of submitit's local cluster: the
    run saves the step in hand, submitit requeues the job, and the requeued job finishes the run from there."""
    pytest.importorskip("submitit")
    import psutil

    train = {"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 10_000}  # no periodic checkpoint
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(2e9,), train=train), tmp_path)
    sweep.run_sweep(tmp_path, executor="slurm", cluster="local", timeout_min=10, wait=False, nproc_per_run=processes)
    (run,) = sweep.load_sweep(tmp_path)["runs"]
    run_dir = Path(run["config"]["run_dir"])
    job = json.loads((tmp_path / "submitit" / "jobs.json").read_text())[run["id"]]
    deadline = time.time() + 120
    while time.time() < deadline and (not (run_dir / "metrics.jsonl").exists()
                                      or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 3):
        time.sleep(0.05)
    tasks = psutil.Process(int(job["job_id"])).children()  # the local job's controller runs its tasks
    assert len(tasks) == processes
    for task in tasks:
        task.send_signal(signal.SIGUSR2)
    assert sweep.wait_for_sweep(tmp_path, poll_sec=0.5) == {"done": 1}
    logs = "".join((tmp_path / "submitit" / job["stderr"].replace(".err", end)).read_text() for end in (".err", ".out"))
    assert "this job is timed-out" in logs and "Requeued job" in logs and logs.count("Starting with") == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    total = json.loads((run_dir / "plan.json").read_text())["total_steps"]
    assert steps == list(range(1, total + 1))  # every step once: none redone, none skipped
    # Besides the last step's, the checkpoint saved when warned, off the periodic grid.
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert len(saved) == 2 and 3 <= saved[0] < total and saved[1] == total


@pytest.mark.slow
def test_a_run_forked_from_the_warm_server_equals_one_in_a_fresh_interpreter(data, tmp_path, monkeypatch, capsys):
    forked, fork = [], sweep._ForkedRun
    monkeypatch.setattr(sweep, "_ForkedRun", lambda *args: forked.append(args[2]) or fork(*args))
    runs = {}
    for name, fresh in (("fresh", True), ("warm", False)):
        sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path / name)
        assert sweep.run_sweep(tmp_path / name, num_parallel=1, fresh_processes=fresh) == {"done": 1}
        (runs[name],) = sweep.load_sweep(tmp_path / name)["runs"]
    assert forked == [runs["warm"]["id"]]  # only the warm sweep forked, once
    results = {name: json.loads((Path(run["config"]["run_dir"]) / "result.json").read_text())
               for name, run in runs.items()}
    for key in ("final_train", "validation", "validation_batches", "steps"):
        assert results["warm"][key] == results["fresh"][key]  # same thread count, same numbers, bit for bit
    log = (tmp_path / "warm" / "runs" / f"{runs['warm']['id']}.log").read_text()
    assert log.strip().endswith("done")  # run-one's own output went to the run's log
    # A run that fails in a fork fails the sweep as a subprocess's would, its one-line error in its log.
    sweep.plan_sweep(_spec(data, depths=(2,), budgets_flops=(4e8,)), tmp_path / "bad")
    (bad,) = sweep.load_sweep(tmp_path / "bad")["runs"]
    Path(bad["config"]["run_dir"]).mkdir(parents=True)
    (Path(bad["config"]["run_dir"]) / "config.json").write_text(json.dumps({**bad["config"], "lr": 1.0}))
    with pytest.raises(RuntimeError, match=f"1 run\\(s\\) failed: {bad['id']}"):
        sweep.run_sweep(tmp_path / "bad", num_parallel=1)
    log = (tmp_path / "bad" / "runs" / f"{bad['id']}.log").read_text()
    assert "simslm sweep run-one: error: " in log and "another config (other lr)" in log and "Traceback" not in log
    # Through the command: one line naming the sweep, as the runs' own errors are in their logs (no --debug hint,
    # whose traceback would show only where the sweep waited).
    from simslm.cli import main

    capsys.readouterr()
    assert main(["sweep", "run", str(tmp_path / "bad"), "--num-parallel", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"simslm sweep run: error: {tmp_path / 'bad'}: 1 run(s) failed: {bad['id']}"), err
    assert "--debug" not in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_run_of_two_processes_through_torchrun_on_the_local_executor(data, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path / "sweep")
    assert sweep.run_sweep(tmp_path / "sweep", num_parallel=1, nproc_per_run=2) == {"done": 1}
    (run,) = sweep.load_sweep(tmp_path / "sweep")["runs"]
    assert json.loads((Path(run["config"]["run_dir"]) / "plan.json").read_text())["world_size"] == 2
    assert list((tmp_path / "tmp").glob("torchelastic_*")) == []  # torchrun left no log folder behind
    assert (tmp_path / "sweep" / "runs" / f"{run['id']}.log").read_text().splitlines().count("done") == 1  # rank 0's


@pytest.mark.slow
def test_a_sweep_over_families_of_real_architectures(extracted, tmp_path):
    from simslm.sequences.build import BuildConfig, build_sequences

    families = {name: [tiny_base_model(tmp_path / "models" / f"{name}-{width}", name, width, layers)
                       for width, layers in ((32, 1), (48, 1), (64, 2))] for name in ("qwen2", "llama")}
    # Each family's sequences with its own tokenizer (transformers reads tok512 beside a Qwen2 config as a
    # Qwen2 tokenizer with one more token: the check in `train` refuses a mix-up).
    config, _, _ = extracted
    data = {}
    for name, models in families.items():
        data[name] = str(tmp_path / f"seq-{name}")
        build_sequences(BuildConfig(out=data[name], tokenizer=models[0], manifest=config.manifest, units=config.out,
                                    streams=("interleaved", "speech"), context_length=64))
    spec = sweep.SweepSpec.from_json({
        "families": families, "budgets_flops": [4e8], "validation_data": data,
        "variants": [{"name": "twist", "data": data}, {"name": "scratch", "data": data, "init": "random"}],
        "train": {"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 50}})
    planned = sweep.plan_sweep(spec, tmp_path / "sweep")
    assert len(planned["runs"]) == 12  # 2 families x 3 sizes x 2 variants
    assert {run["variant"] for run in planned["runs"]} == {"qwen2/twist", "qwen2/scratch", "llama/twist",
                                                            "llama/scratch"}
    assert any(run["id"].startswith("qwen2-qwen2-64-twist-c4e08-") for run in planned["runs"])
    counts = sweep.run_sweep(tmp_path / "sweep", num_parallel=2, threads_per_run=1)
    assert counts == {"done": 12}
    from transformers import AutoModelForCausalLM

    for row in sweep.collect(tmp_path / "sweep"):
        # N is the model's own count after its vocabulary grew by the units and markers.
        trained = AutoModelForCausalLM.from_pretrained(Path(row["run_dir"]) / "model")
        assert row["parameters"] == sum(p.numel() for p in trained.parameters())
        architecture = row["variant"].split("/")[0]
        assert trained.config.model_type == architecture
    sizes = {(row["variant"], row["member"]): row["parameters"] for row in sweep.collect(tmp_path / "sweep")}
    assert sizes["qwen2/twist", "qwen2-32"] < sizes["qwen2/twist", "qwen2-48"] < sizes["qwen2/twist", "qwen2-64"]
    assert sizes["qwen2/twist", "qwen2-32"] == sizes["qwen2/scratch", "qwen2-32"]  # same architecture from scratch


@pytest.mark.slow
def test_bracketing_grows_the_grid_until_each_minimum_is_inside_or_says_why_not(data, tmp_path):
    # At 4e8 FLOPs on this data the best depth is about 10 (measured: the grid grew from 2-3 to 2-11).
    sweep.plan_sweep(_spec(data, depths=(9, 10), budgets_flops=(4e8,)), tmp_path)
    sweep.run_sweep(tmp_path, num_parallel=2, bracket=True)
    record = json.loads((tmp_path / "bracket.json").read_text())
    assert record["added"]  # two sizes always put the best at an edge: at least one size was added
    rows = sweep.collect(tmp_path)
    for (variant, budget), best in sweep.best_runs(rows).items():
        sizes = sorted(row["parameters"] for row in rows if (row["variant"], row["budget"]) == (variant, budget))
        at_edge = best["parameters"] in (sizes[0], sizes[-1])
        listed = [edge for edge in record["unbracketed"] if (edge["variant"], edge["budget"]) == (variant, budget)]
        assert at_edge == bool(listed)  # inside the grid, or named with the reason it could not be
        assert all(edge["reason"] for edge in listed)
    from simslm.scaling.report import write_report

    page = write_report(tmp_path).read_text()
    assert ("Not bracketed" in page) == bool(record["unbracketed"]) and "Sizes added to bracket" in page


def test_growing_a_sweep_waits_for_another_process_growing_it(data, tmp_path, lock_held_elsewhere, capsys):
    """Two `sweep run --bracket` of one sweep each grew the grid from what it had read, and the later write of
    sweep.json dropped the other's sizes while that process trained their runs. Reading, growing and writing
    sweep.json (bracketing, `sweep plan` of an existing sweep) now hold the sweep's lock, waiting for another's."""
    import threading

    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    _, release = lock_held_elsewhere(tmp_path / sweep.SWEEP_LOCK)
    threading.Timer(1.5, release).start()
    started = time.perf_counter()
    assert sweep.extend_to_bracket(tmp_path) is False  # nothing finished: nothing to grow
    assert time.perf_counter() - started >= 1.4
    assert "another process is planning or growing this sweep; waiting" in capsys.readouterr().err
    _, release = lock_held_elsewhere(tmp_path / sweep.SWEEP_LOCK)
    threading.Timer(1.5, release).start()
    started = time.perf_counter()
    sweep.plan_sweep(_spec(data, depths=(1, 2), budgets_flops=(4e8,)), tmp_path)
    assert time.perf_counter() - started >= 1.4 and len(sweep.load_sweep(tmp_path)["runs"]) == 2
    # A new sweep takes no lock: a spec refused leaves no folder behind.
    with pytest.raises(ValueError):
        sweep.plan_sweep(_spec(str(tmp_path / "no-data"), depths=(1,)), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_bracketing_takes_the_nearest_held_back_model_beyond_the_edge(tmp_path):
    models = {width: tiny_base_model(tmp_path / f"llama-{width}", "llama", width, 1) for width in (32, 64, 96, 128)}
    spec = sweep.SweepSpec(variants=(sweep.Variant(name="twist", data="x"),), budgets_flops=(1e9,),
                           families={"llama": (models[64], models[96])},
                           bracket_models={"llama": (models[128], models[32])})
    smaller, added = sweep._next_size(spec, "llama", "smaller")
    assert smaller.families["llama"] == (models[32], models[64], models[96]) and "llama-32" in added
    larger, _ = sweep._next_size(smaller, "llama", "larger")
    assert larger.families["llama"][-1] == models[128]
    none, why = sweep._next_size(larger, "llama", "larger")
    assert none is None and "no model larger than its members" in why


def test_below_depth_1_bracketing_adds_a_narrower_depth_1_to_that_cell_only(data, tmp_path, monkeypatch, capsys):
    spec = _spec(data, depths=(1, 2, 3))  # no family: aspect ratio 32, so depth 1 is 32 wide
    sweep.plan_sweep(spec, tmp_path)
    losses = {(4e8, "d1"): 3.0, (4e8, "d2"): 3.1, (4e8, "d3"): 3.3, (8e8, "d1"): 3.0, (8e8, "d2"): 2.9,
              (8e8, "d3"): 3.2}

    def ledger(sweep_dir):  # the runs as planned, with these losses (d1 best at 4e8 only)
        sizes = {"d1w4": 1e3, "d1w8": 2e3, "d1w16": 4e3, "d1": 8e3, "d2": 2e4, "d3": 6e4}
        return [{"variant": run["variant"], "budget": run["budget_flops"], "member": run["member"], "family": "family",
                 "parameters": sizes[run["member"]], "loss_speech": losses[run["budget_flops"], run["member"]]}
                for run in sweep.load_sweep(sweep_dir)["runs"]]

    monkeypatch.setattr(sweep, "collect", ledger)
    losses[4e8, "d1w16"] = 3.2  # what the narrower run will find
    assert sweep.extend_to_bracket(tmp_path)
    planned = sweep.load_sweep(tmp_path)
    narrow = [run for run in planned["runs"] if run["member"] == "d1w16"]
    assert [(run["budget_flops"], run["config"]["base_model"]) for run in narrow] == [(4e8, "family:1:16")]
    assert len(planned["runs"]) == 7  # the grid's 6 and that cell's one
    assert planned["spec"]["cell_sizes"] == [{"variant": "random", "budget_flops": 4e8, "size": "d1w16"}]
    record = json.loads((tmp_path / "bracket.json").read_text())
    assert record["added"] == [{"family": "family", "side": "smaller", "size": "d1w16", "variant": "random",
                                "budget": 4e8}] and record["unbracketed"] == []
    assert not sweep.extend_to_bracket(tmp_path)  # d1 is inside its cell now
    sweep.plan_sweep(spec, tmp_path)  # planned again from the first spec, as the demo does from its options
    assert sweep.extend_to_bracket(tmp_path) and len(sweep.load_sweep(tmp_path)["runs"]) == 7
    assert len(json.loads((tmp_path / "bracket.json").read_text())["added"]) == 1
    # Narrower still while the narrowest is best, by halves down to width 4, then the reason.
    for width, loss in ((16, 2.9), (8, 2.8), (4, 2.7)):
        losses[4e8, f"d1w{width}"], losses[4e8, f"d1w{width // 2}"] = loss, 3.5
        assert sweep.extend_to_bracket(tmp_path) == (width > 4)
    members = [run["member"] for run in sweep.load_sweep(tmp_path)["runs"]]
    assert [members.count(f"d1w{width}") for width in (16, 8, 4)] == [1, 1, 1] and len(members) == 9
    [edge] = json.loads((tmp_path / "bracket.json").read_text())["unbracketed"]
    assert edge["member"] == "d1w4" and "no size below d1w4" in edge["reason"]
    # The sweep ends with that minimum unknown: said on stderr too, not in bracket.json alone (`sweep run --bracket`
    # printed its counts only).
    assert (f"simslm sweep: warning: not bracketed: random at C = 4e+08, best at its smallest size (d1w4); "
            f"{edge['reason']}") in capsys.readouterr().err
    # The spec round-trips, and a cell size it cannot place is refused.
    assert [cell["size"] for cell in sweep.SweepSpec.from_json(sweep.load_sweep(tmp_path)["spec"]).cell_sizes] == [
        "d1w16", "d1w8", "d1w4"]
    for bad, match in (({"variant": "random", "budget_flops": 1e9, "size": "d1w8"}, "no such variant or budget"),
                       ({"variant": "random", "budget_flops": 4e8, "size": "d2w8"}, "only depth 1 comes narrower"),
                       ({"variant": "random", "size": "d1w8"}, "a cell size is")):
        with pytest.raises(ValueError, match=match):
            _spec(data, cell_sizes=(bad,))


def test_bracketing_while_the_grid_runs_judges_finished_cells_only(data, tmp_path, monkeypatch):
    sweep.plan_sweep(_spec(data, depths=(1, 2, 3)), tmp_path)
    losses = {(4e8, "d1"): 3.0, (4e8, "d2"): 3.1, (4e8, "d3"): 3.3, (8e8, "d1"): 3.0, (8e8, "d2"): 2.9}
    sizes = {"d1w16": 4e3, "d1": 8e3, "d2": 2e4, "d3": 6e4, "d4": 1e5}

    def ledger(sweep_dir):  # the runs with a loss so far: 8e8's d3 still running
        return [{"id": run["id"], "variant": run["variant"], "budget": run["budget_flops"], "member": run["member"],
                 "family": "family", "parameters": sizes[run["member"]],
                 "loss_speech": losses[run["budget_flops"], run["member"]]}
                for run in sweep.load_sweep(sweep_dir)["runs"] if (run["budget_flops"], run["member"]) in losses]

    monkeypatch.setattr(sweep, "collect", ledger)
    # 4e8 is finished, its best the smallest size: it grows. 8e8's best so far is its largest finished size,
    # but d3 may yet beat it: no depth 4 for that.
    grown = sweep._grown_runs(tmp_path)  # every run not done on disk (none here: the ledger is made up)
    assert sorted(run["member"] for run in grown) == ["d1", "d1", "d1w16", "d2", "d2", "d3", "d3"]
    assert grown == sweep.load_sweep(tmp_path)["runs"]
    assert "unbracketed" in json.loads((tmp_path / "bracket.json").read_text())
    losses[4e8, "d1w16"] = 3.2
    (tmp_path / "bracket.json").unlink()
    assert sweep._grown_runs(tmp_path) == [] and not (tmp_path / "bracket.json").exists()  # nothing to say yet
    assert sweep.extend_to_bracket(tmp_path)  # judged as if every run had ended: 8e8 wants depth 4
    assert "d4" in {run["member"] for run in sweep.load_sweep(tmp_path)["runs"]}


def test_bracketing_while_the_grid_runs_reads_the_ledger_when_a_run_ends_its_cell_only(data, tmp_path, monkeypatch):
    sweep.plan_sweep(_spec(data), tmp_path)  # d1, d2 at 4e8 and 8e8
    runs = {(run["member"], run["budget_flops"]): run for run in sweep.load_sweep(tmp_path)["runs"]}
    finished, judged = set(), []
    monkeypatch.setattr(sweep.RunResult, "exists", staticmethod(lambda run_dir: Path(run_dir).name in finished))
    monkeypatch.setattr(sweep, "_grown_runs", lambda sweep_dir: judged.append(sweep_dir) or [])
    for size in ("d1", "d2"):
        finished.add(runs[size, 4e8]["id"])
        assert sweep._grown_after(tmp_path, runs[size, 4e8]["id"]) == []
    assert judged == [tmp_path]  # once, when d2 ended the 4e8 cell; 8e8 has not ended
    assert sweep._grown_after(tmp_path, "no-such-run") == [] and len(judged) == 1


def test_the_local_executor_starts_the_runs_bracketing_adds_before_the_rest(tmp_path, monkeypatch):
    started = []

    class Ended:  # a run that has ended once it has started
        returncode = 0

        def __init__(self, context, sweep_dir, identifier, *rest):
            started.append(identifier)

        def poll(self):
            return 0

    monkeypatch.setattr(sweep, "_ForkedRun", Ended)
    monkeypatch.setattr(sweep, "_warm_context", object)
    monkeypatch.setattr(sweep, "_cuda_present", lambda: False)
    monkeypatch.setenv(sweep.PEAK_FLOPS_VARIABLE, "1e11")
    run = lambda name: {"id": name, "config": {"run_dir": str(tmp_path / "runs" / name)}}  # noqa: E731
    answers = iter([[], [run("grown"), run("c")]])  # after a: nothing yet; after b: a new run, and c (queued)
    sweep._local(tmp_path, [run(name) for name in "abcd"], num_parallel=1,
                 more=lambda ended: next(answers, [run("grown")]))
    assert started == ["a", "b", "grown", "c", "d"]


def test_a_sweep_on_the_cpu_measures_each_peak_its_runs_need_once(tmp_path, monkeypatch, measured_peak):
    """The MFU denominators, measured once by the sweep before its runs load the cores: fp32's for every run, and
    bf16's as well when its runs train in bf16 (each measured its own, 2-5 s a run on a CPU without native bf16
    products, beside its neighbours' load). A denominator the user gave is kept."""
    measured, environments = [], []

    class Ended:
        returncode = 0

        def __init__(self, context, sweep_dir, identifier, log_path, threads, environment):
            environments.append({key: environment.get(key) for key in (sweep.PEAK_FLOPS_VARIABLE,
                                                                       sweep.PEAK_FLOPS_BF16_VARIABLE)})

        def poll(self):
            return 0

    monkeypatch.setattr(sweep, "_ForkedRun", Ended)
    monkeypatch.setattr(sweep, "_warm_context", object)
    monkeypatch.setattr(sweep, "_cuda_present", lambda: False)
    monkeypatch.setattr(sweep, "_peak_flops",
                        lambda threads, bf16=False: measured.append(bf16) or (2e9 if bf16 else 3e10))

    def runs(precision):
        return [{"id": name, "config": {"run_dir": str(tmp_path / precision / name), "precision": precision}}
                for name in "ab"]

    sweep._local(tmp_path, runs("fp32"), num_parallel=1)
    assert measured == [False] and environments == [{"SIMSLM_PEAK_FLOPS": "30000000000.0",
                                                    "SIMSLM_PEAK_FLOPS_BF16": None}] * 2
    measured.clear()
    environments.clear()
    sweep._local(tmp_path, runs("bf16-weights"), num_parallel=1)
    assert measured == [False, True] and environments == [{"SIMSLM_PEAK_FLOPS": "30000000000.0",
                                                          "SIMSLM_PEAK_FLOPS_BF16": "2000000000.0"}] * 2
    measured.clear()
    environments.clear()
    monkeypatch.setenv(sweep.PEAK_FLOPS_BF16_VARIABLE, "5e9")
    sweep._local(tmp_path, runs("bf16"), num_parallel=1)
    assert measured == [False] and environments[0]["SIMSLM_PEAK_FLOPS_BF16"] == "5e9"


def test_the_edges_of_a_synthetic_ledger():
    def row(variant, budget, parameters, loss, member):
        return {"variant": variant, "budget": budget, "parameters": parameters, "loss_speech": loss,
                "member": member, "family": "f"}

    rows = [row("a", 1e9, 1e5, 3.0, "d1"), row("a", 1e9, 2e5, 3.1, "d2"), row("a", 1e9, 4e5, 3.2, "d3"),  # smallest
            row("a", 1e10, 1e5, 2.9, "d1"), row("a", 1e10, 2e5, 2.7, "d2"), row("a", 1e10, 4e5, 2.8, "d3"),  # inside
            row("b", 1e9, 1e5, 3.3, "d1"), row("b", 1e9, 2e5, 3.2, "d2")]                                   # largest
    assert sweep.edges(rows) == [
        {"variant": "a", "budget": 1e9, "member": "d1", "needs": "smaller", "family": "f"},
        {"variant": "b", "budget": 1e9, "member": "d2", "needs": "larger", "family": "f"}]


@pytest.mark.slow
def test_a_tokens_per_parameter_grid_trains_each_size_on_r_n_tokens_and_fits(data, tmp_path):
    spec = sweep.SweepSpec.from_json({"variants": [{"name": "r", "data": data, "init": "random"}], "depths": [1, 2],
                                      "tokens_per_parameter": [0.5, 1], "validation_data": data,
                                      "train": {"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 50}})
    planned = sweep.plan_sweep(spec, tmp_path)
    assert sorted(run["id"].split("-")[2] for run in planned["runs"]) == ["t0.5", "t0.5", "t1", "t1"]
    assert sweep.run_sweep(tmp_path, num_parallel=2) == {"done": 4}
    for row in sweep.collect(tmp_path):
        # whole steps of 4 x 64 tokens, as near r N as they come
        assert abs(row["tokens"] - row["tokens_per_parameter"] * row["parameters"]) <= 4 * 64 / 2
        assert row["budget"] is None
    fits = sweep.fit_sweep(tmp_path, num_resamples=50)
    assert "approach 2 could not be computed" in " ".join(fits["variants"]["r"]["warnings"])
    # Its report has no isoFLOP figure: an empty one was drawn, and matplotlib warned of a legend of nothing.
    from simslm.scaling import report

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = report.write_report(tmp_path).read_text()
    assert "isoflop.svg" not in page and "loss_curves.svg" in page


@pytest.mark.slow
def test_bracketing_a_textlm_family_pretrains_the_next_member_as_the_others_were(tmp_path):
    from simslm.textlm import TextLMConfig, pretrain_family

    corpus = tmp_path / "stories.txt"
    corpus.write_text("\n".join(["Once upon a time there was a cat. The cat liked to nap in the sun."] * 40) + "\n")
    config = TextLMConfig(out=str(tmp_path / "family"), text_corpus=str(corpus), depths=(1, 2), aspect_ratio=16,
                          tokens_per_parameter=0.1, context_length=32, batch_size=4)
    pretrain_family(config)
    spec = sweep.SweepSpec(variants=(sweep.Variant(name="twist", data="x"),), budgets_flops=(1e9,), depths=(1, 2),
                           family=str(tmp_path / "family"))
    # A random-init run of a depth is the family's own architecture, aspect ratio included.
    assert [member.random_source for member in spec.members()] == ["family:1:16", "family:2:16"]
    grown, added = sweep._next_size(spec, "family", "larger")
    assert grown.depths == (1, 2, 3) and added == "depth 3"
    family = json.loads((tmp_path / "family" / "family.json").read_text())
    assert [member["depth"] for member in family["members"]] == [1, 2, 3]
    third = family["members"][2]
    assert (tmp_path / "family" / third["model_dir"] / "model.safetensors").exists()
    assert third["pretraining_tokens"] == pytest.approx(0.1 * third["parameters"], abs=4 * 32)  # as the others
    shape = json.loads((tmp_path / "family" / third["model_dir"] / "config.json").read_text())
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]) == (48, 3, 3)
    # A family folder is never resumed with another shape.
    with pytest.raises(ValueError, match="family:1:16, not family:1"):
        pretrain_family(dataclasses.replace(config, aspect_ratio=32))
    none, why = sweep._next_size(spec, "family", "smaller")
    assert none is None and "no depth 0" in why
    # Below depth 1 a TWIST cell gets depth 1 at half the width, pretrained as the others were.
    edge = {"variant": "twist", "budget": 1e9, "member": "d1", "needs": "smaller", "family": "family"}
    narrowed, added = sweep._narrower_in_cell(spec, edge)
    assert added == "d1w8" and narrowed.cell_sizes == ({"variant": "twist", "budget_flops": 1e9, "size": "d1w8"},)
    family = json.loads((tmp_path / "family" / "family.json").read_text())
    assert family["config"]["narrow_widths"] == [8]
    narrow = family["members"][0]
    assert (narrow["depth"], narrow["width"], narrow["model_dir"]) == (1, 8, "depth-1-w8/model")
    assert narrow["pretraining_tokens"] == pytest.approx(0.1 * narrow["parameters"], abs=4 * 32)
    shape = json.loads((tmp_path / "family" / narrow["model_dir"] / "config.json").read_text())
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]) == (8, 1, 1)
    assert narrowed.depth_member(1, 8).twist_source == str(tmp_path / "family" / "depth-1-w8" / "model")


def test_a_speech_loss_difference_gets_a_paired_interval_over_validation_batches():
    rng = np.random.default_rng(0)
    tokens = rng.integers(300, 500, 64).astype(float)
    hardness = rng.normal(3.0, 0.5, 64)  # batches differ far more than the two runs do
    batches = lambda shift: [[0.0, 0.0, (h + shift) * n, n, 0.0, 0.0] for h, n in zip(hardness, tokens)]  # noqa: E731
    first, second = {"validation_batches": batches(-0.05)}, {"validation_batches": batches(0.0)}
    difference, low, high = sweep.speech_loss_difference(first, second)
    assert difference == pytest.approx(-0.05)
    # Paired: the shared batch-to-batch spread cancels, so the interval is tight and excludes zero.
    assert low == pytest.approx(-0.05) and high == pytest.approx(-0.05)
    noisy = {"validation_batches": [[0, 0, (h - 0.05 + e) * n, n, 0, 0]
                                    for h, n, e in zip(hardness, tokens, rng.normal(0, 0.3, 64))]}
    difference, low, high = sweep.speech_loss_difference(noisy, second)
    assert low < -0.05 < high and high - low > 0.05  # per-run noise that does not cancel widens it
    # Runs without per-batch sums, or over other batches, get no interval.
    assert sweep.speech_loss_difference({"validation_batches": None}, second) is None
    assert sweep.speech_loss_difference({"validation_batches": batches(0.0)[:10]}, second) is None


def test_seeds_plan_one_run_per_replicate_and_a_sweep_without_them_plans_as_before(data, tmp_path):
    single = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path / "single")["runs"]
    assert len(single) == 1 and single[0]["config"]["seed"] == 0 and "-s" not in single[0]["id"]
    replicated = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,), seeds=(3, 4)), tmp_path / "two")
    assert [run["config"]["seed"] for run in replicated["runs"]] == [3, 4]
    assert [run["id"].split("-")[2:4] for run in replicated["runs"]] == [["c4e08", "s3"], ["c4e08", "s4"]]
    assert sweep.SweepSpec.from_json(replicated["spec"]).seeds == (3, 4)  # as sweep.json stores it
    for seeds, train, message in (((1, 1), {}, "distinct"), ((-1,), {}, ">= 0"), ((1, 2), {"seed": 5}, "not both")):
        with pytest.raises(ValueError, match=message):
            _spec(data, seeds=seeds, train=train)
    with pytest.raises(ValueError, match="seeds must be a list, not 3"):  # not blamed on a variant
        sweep.SweepSpec.from_json({"variants": [{"name": "r", "data": data, "init": "random"}], "depths": [1],
                                   "budgets_flops": [1e9], "seeds": 3})


def test_a_sweep_given_seeds_later_keeps_its_runs_as_those_of_their_seed(data, tmp_path):
    spec = functools.partial(_spec, data, depths=(1,), budgets_flops=(4e8,))
    (single,) = sweep.plan_sweep(spec(), tmp_path)["runs"]
    (tmp_path / single["config"]["run_dir"]).mkdir(parents=True)  # a run started (or finished) under that plan
    # Seed 0 is the same run (same content, same hash): it keeps its folder; seed 1 is new.
    zero, one = sweep.plan_sweep(spec(seeds=(0, 1)), tmp_path)["runs"]
    assert zero["id"] == single["id"] and zero["config"] == single["config"]
    assert one["id"].split("-")[3] == "s1" and one["config"]["seed"] == 1
    # And back: a replicated sweep planned with one run per cell keeps that seed's run.
    (tmp_path / one["config"]["run_dir"]).mkdir(parents=True)
    (back,) = sweep.plan_sweep(spec(train={**_spec(data).train, "seed": 1}), tmp_path)["runs"]
    assert back["id"] == one["id"] and back["config"] == one["config"]
    # Without a folder on disk, each plan names its runs its own way.
    assert "-s0-" in sweep.plan_sweep(spec(seeds=(0, 1)), tmp_path / "fresh")["runs"][0]["id"]


def test_replicates_make_one_cell_and_the_best_size_is_the_lowest_mean():
    def row(member, seed, loss):
        return {"id": f"v-{member}-s{seed}", "variant": "v", "family": "f", "member": member, "budget": 1e9,
                "seed": seed, "parameters": {"d1": 1e5, "d2": 2e5}[member], "loss_speech": loss, "accuracies": {}}

    # d1 has the single best run (2.90) but d2 the lower mean (3.00 against 3.05).
    rows = [row("d1", 0, 2.90), row("d1", 1, 3.20), row("d2", 0, 3.01), row("d2", 1, 2.99)]
    cells = {cell["member"]: cell for cell in sweep.cells(rows)}
    assert cells["d1"]["loss_speech"] == pytest.approx(3.05) and len(cells["d1"]["replicates"]) == 2
    best = sweep.best_runs(rows)[("v", 1e9)]
    assert best["member"] == "d2" and [r["seed"] for r in best["replicates"]] == [0, 1]
    assert sweep.edges(rows) == [{"variant": "v", "budget": 1e9, "member": "d2", "needs": "larger", "family": "f"}]


def test_a_cell_difference_adds_the_spread_between_runs_to_the_batches_as_welch_does():
    from scipy import stats

    tokens = np.full(64, 400.0)

    def run(loss, noise=None):  # every batch at one loss: the validation sample adds nothing
        losses = loss + (noise if noise is not None else np.zeros(64))
        return {"validation_batches": [[0, 0, value * n, n, 0, 0] for value, n in zip(losses, tokens)]}

    first, second = [3.00, 3.10, 2.95], [3.20, 3.08, 3.30, 3.15]
    cell = lambda losses: {"replicates": [run(loss) for loss in losses]}  # noqa: E731
    difference, low, high = sweep.cell_difference(cell(first), cell(second))
    welch = stats.ttest_ind(first, second, equal_var=False).confidence_interval(0.95)
    assert difference == pytest.approx(np.mean(first) - np.mean(second))
    assert (low, high) == (pytest.approx(welch.low), pytest.approx(welch.high))
    # One run per cell: the batches' paired bootstrap alone, as speech_loss_difference gives it.
    rng = np.random.default_rng(0)
    one, other = run(3.0, rng.normal(0, 0.3, 64)), run(3.1, rng.normal(0, 0.3, 64))
    assert sweep.cell_difference({"replicates": [one]}, {"replicates": [other]}) == \
        sweep.speech_loss_difference(one, other)
    # A gap resolved by one run of each is not when the runs themselves spread that much.
    spread = [run(loss) for loss in (2.80, 3.00, 3.20)]
    assert sweep.cell_difference({"replicates": [run(3.0)]}, {"replicates": [run(3.1)]})[2] < 0
    assert sweep.cell_difference({"replicates": spread}, {"replicates": [run(3.1), run(3.2), run(3.0)]})[2] > 0
    # Both shares count: batch noise widens the interval of the same runs.
    noisy = [run(loss, rng.normal(0, 0.3, 64)) for loss in first]
    assert np.ptp(sweep.cell_difference({"replicates": noisy}, cell(second))[1:]) > high - low
    assert sweep.cell_difference({"replicates": [run(3.0), {"validation_batches": None}]}, cell(second)) is None


def test_a_cells_accuracy_averages_each_items_outcome_over_its_runs():
    from simslm.eval.scoring import accuracy_with_ci, difference_with_ci

    a = accuracy_with_ci(np.array([1, 1, 0, 0.5]), ["x", "x", "y", "y"], aggregation="macro")
    b = accuracy_with_ci(np.array([1, 0, 0, 1.0]), ["x", "x", "y", "y"], aggregation="macro")
    mean = sweep.mean_accuracy([a, b])
    assert mean.outcomes == [1.0, 0.5, 0.0, 0.75] and mean.accuracy == pytest.approx((0.75 + 0.375) / 2)
    assert mean.aggregation == "macro" and difference_with_ci(mean, a) is not None
    bare = sweep.mean_accuracy([a, dataclasses.replace(b, outcomes=None)])
    assert bare.outcomes is None and bare.accuracy == pytest.approx((a.accuracy + b.accuracy) / 2)
    # Results over items (voices averaged) stay so: the runs' counts of pairs and items are kept.
    items = ["i", "i", "j", "k"]
    c = accuracy_with_ci(np.array([1, 0, 0, 1.0]), ["x", "x", "y", "y"], items=items, aggregation="items")
    d = accuracy_with_ci(np.array([1, 1, 1, 1.0]), ["x", "x", "y", "y"], items=items, aggregation="items")
    mean = sweep.mean_accuracy([c, d])
    assert mean.outcomes == [0.75, 0.5, 1.0] and mean.accuracy == pytest.approx(2.25 / 3)
    assert (mean.num_pairs, mean.num_items, mean.groups()) == (4, 3, ["x", "y", "y"])
    assert mean.per_group["x"] == {"accuracy": 0.75, "num_pairs": 2, "num_items": 1}


@pytest.mark.slow
def test_a_sweep_with_seeds_trains_each_replicate_and_fits_them_all(data, tmp_path, measured_peak):
    sweep.plan_sweep(_spec(data, budgets_flops=(4e8,), seeds=(0, 1)), tmp_path)
    assert sweep.run_sweep(tmp_path, num_parallel=2) == {"done": 4}
    rows = sweep.collect(tmp_path)
    assert sorted((row["member"], row["seed"]) for row in rows) == [("d1", 0), ("d1", 1), ("d2", 0), ("d2", 1)]
    # One MFU denominator for all, measured by the executor before the runs load the cores.
    (peak,) = {RunResult.load(tmp_path / "runs" / row["id"]).peak_flops_measured for row in rows}
    assert 0 < peak < 1e14
    for cell in sweep.cells(rows):
        first, second = (r["loss_speech"] for r in cell["replicates"])
        assert first != second  # another data order and init: another model
        assert cell["loss_speech"] == pytest.approx((first + second) / 2)
    fits = sweep.fit_sweep(tmp_path, num_resamples=20)
    assert "random" in fits["variants"]
    # The ledger says which seed each run is, whatever its name.
    header, *lines, total = sweep.status_table(tmp_path).splitlines()
    assert header.split()[:6] == ["run", "status", "size", "params", "budget", "seed"] and total == "total: 4 done"
    assert sorted(tuple(line.split()[2:6:3]) for line in lines) == [("d1", "0"), ("d1", "1"), ("d2", "0"), ("d2", "1")]


def test_a_cell_accuracy_difference_adds_the_runs_spread_to_the_items_bootstrap():
    from scipy import stats

    from simslm.eval.scoring import accuracy_with_ci, difference_with_ci

    groups = ["x"] * 20 + ["y"] * 20
    run = lambda outcomes: {"accuracies": {"b": accuracy_with_ci(np.asarray(outcomes, dtype=float), groups)}}  # noqa: E731
    rng = np.random.default_rng(0)
    one, other = run(rng.random(40) < 0.7), run(rng.random(40) < 0.5)
    # One run a cell: exactly the paired item bootstrap of difference_with_ci.
    assert sweep.cell_accuracy_difference(one, other, "b") == \
        difference_with_ci(one["accuracies"]["b"], other["accuracies"]["b"])
    # Runs that each score every item alike: the items add nothing, so Welch over the runs' accuracies remains.
    first, second = [1.0, 0.5, 0.75], [0.5, 0.25, 0.5]
    cell = lambda values: {"replicates": [run(np.full(40, v)) for v in values]}  # noqa: E731
    difference, low, high = sweep.cell_accuracy_difference(cell(first), cell(second), "b")
    welch = stats.ttest_ind(first, second, equal_var=False).confidence_interval(0.95)
    assert difference == pytest.approx(np.mean(first) - np.mean(second))
    assert (low, high) == (pytest.approx(welch.low), pytest.approx(welch.high))
    assert low < 0 < high  # a 0.33 gap the runs' own spread does not resolve
    assert sweep.cell_accuracy_difference(cell(first), {"replicates": [{"accuracies": {}}]}, "b") is None


def test_a_run_planned_before_validation_every_precision_and_batching_existed_keeps_its_name():
    # run ids hash a run's config; a field added since, at its default, stays out of the hash, or every sweep
    # planned before would name its finished runs anew and train them again.
    config = dataclasses.asdict(TrainConfig(run_dir="runs/x", data="d", budget_flops=1e12))
    before = {key: value for key, value in config.items()
              if key not in ("run_dir", "validation_every", "precision", "checkpoint_format", "batching")}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8]
    assert sweep.run_id("v", "d1", "c1e12", config) == f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "validation_every": 100}) != f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "precision": "bf16"}) != f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "checkpoint_format": "sharded"}) != f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "batching": "pieces"}) != f"v-d1-c1e12-{digest}"


def test_runs_placed_on_gpus_where_there_are_none_are_refused(data, tmp_path, monkeypatch):
    """`sweep run --gpus 0,1` on a machine without CUDA gave each run CUDA_VISIBLE_DEVICES, and every run trained on
    the CPU (its `--device auto`) without a word."""
    monkeypatch.setattr(sweep, "_cuda_present", lambda: False)
    sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path)
    with pytest.raises(ValueError, match=r"--gpus 0,1: torch sees no CUDA device here; leave --gpus out"):
        sweep.run_sweep(tmp_path, gpus="0,1")
    assert not any((tmp_path / "runs").glob("*/config.json"))


def test_a_sweep_with_two_benchmarks_of_one_name_is_refused():
    """Every run's eval.json would file both under one name, the second's results over the first's."""
    with pytest.raises(ValueError, match=r"^bench: 2 benchmarks named sblimp \(mine/sblimp, theirs/sblimp\), whose "
                                         r"results would take one name in eval.json"):
        sweep._check_benchmarks({"bench": ["mine/sblimp", "theirs/sblimp"]})
    sweep._check_benchmarks({"bench": []})


def test_a_size_or_grid_point_given_twice_is_refused(data, tmp_path):
    """A family listing a model twice (or a depth, a budget) planned its runs twice under one id, and the fit
    counted each of them twice."""
    for changes, said in (({"depths": (1, 1)}, "depths lists 1 more than once"),
                          ({"budgets_flops": (4e8, 4e8)}, "budgets_flops lists 400000000.0 more than once"),
                          ({"families": {"f": ("a", "a")}, "depths": ()}, "family f lists a more than once")):
        with pytest.raises(ValueError, match=said):
            _spec(data, **changes)
    model = tiny_base_model(tmp_path / "models" / "llama-32", "llama", 32, 1)
    aliased = _spec(data, families={"f": (model, model + "/")}, depths=())  # one folder, spelled twice
    with pytest.raises(ValueError, match=r"the spec plans the same run more than once \(random-llama-32-c4e08-"):
        sweep.plan_sweep(aliased, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()
