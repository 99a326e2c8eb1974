import dataclasses
import json
import re
import shutil

import pytest

from simslm import demo
from simslm.eval.benchbuild import story_key, training_stories


@pytest.mark.slow
def test_a_miniature_demo_runs_every_stage_reports_and_resumes(tmp_path, capsys, monkeypatch):
    from simslm import machine
    from simslm.scaling import collect, execute

    # The sweep runs a one-thread run per core, and the fit a worker per core: 3 here, as on a 3-core machine.
    monkeypatch.setattr(machine, "default_workers", lambda: 3)
    parallel, run_sweep, fit_sweep = [], execute.run_sweep, collect.fit_sweep
    monkeypatch.setattr(execute, "run_sweep", lambda *given, **options: parallel.append(
        ("sweep", options["num_parallel"], options["threads_per_run"])) or run_sweep(*given, **options))
    monkeypatch.setattr(collect, "fit_sweep", lambda *given, **options: parallel.append(
        ("fit", options["num_workers"])) or fit_sweep(*given, **options))
    config = demo.DemoConfig(out=str(tmp_path / "demo"), num_stories=6, num_units=16, depths=(1, 2),
                             budgets_flops=(3e8, 6e8, 1.2e9), text_tokens_per_parameter=1.0, context_length=64,
                             batch_size=4, num_tsc_items=4, sblimp_per_phenomenon=1, num_swuggy_items=4,
                             num_resamples=20,
                             bracket=False)
    summary = demo.run_demo(config)
    assert parallel == [("sweep", 3, 1), ("fit", 3)]
    out = tmp_path / "demo"
    assert "Finding 1, interleaved + TWIST beats textless per FLOP:" in summary
    assert "Finding 2, compute-optimal allocation leans to model size" in summary
    assert (out / "sweep" / "report" / "index.html").exists()
    record = json.loads((out / "demo.json").read_text())
    assert set(record["timings_sec"]) >= {"synthesise", "units", "textlm", "sequences", "benchmarks", "swuggy", "sweep",
                                          "fit"}
    runs = json.loads((out / "sweep" / "sweep.json").read_text())["runs"]
    assert len(runs) == 3 * 2 * 3
    # No benchmark story is a training story, and every run was evaluated on every benchmark.

    training = training_stories(str(out / "speech" / "manifest.jsonl"))
    for mutual in (out / "bench" / "tsc" / "audio").glob("*_mutual.txt"):
        assert story_key(mutual.read_text()) not in training
    evaluated = json.loads((out / "sweep" / "runs" / runs[0]["id"] / "eval.json").read_text())["benchmarks"]
    assert {"tsc/S", "tsc/T", "sblimp", "swuggy"} <= set(evaluated)
    # A second call finds every stage done and only rewrites the summary and report.
    capsys.readouterr()
    demo.run_demo(config)
    assert capsys.readouterr().out.count("done earlier") == 8
    # A folder from before the sWUGGY stage: its runs are evaluated on the new set, and none is trained again.
    shutil.rmtree(out / "bench" / "swuggy")
    (out / "stages" / "swuggy.json").unlink()
    for run in runs:
        path = out / "sweep" / "runs" / run["id"] / "eval.json"
        record = json.loads(path.read_text())
        record["benchmarks"] = {name: entry for name, entry in record["benchmarks"].items()
                                if not name.startswith("swuggy")}
        path.write_text(json.dumps(record))
    trained = {run["id"]: (out / "sweep" / "runs" / run["id"] / "result.json").stat().st_mtime_ns for run in runs}
    demo.run_demo(config)
    assert "swuggy: built after the sweep; sweep and fit run again" in capsys.readouterr().out
    for run in runs:
        assert "swuggy" in json.loads((out / "sweep" / "runs" / run["id"] / "eval.json").read_text())["benchmarks"]
        assert (out / "sweep" / "runs" / run["id"] / "result.json").stat().st_mtime_ns == trained[run["id"]]
    # More seeds on the finished demo: the sweep and fit run again, keeping every run as its seed-0 run.
    demo.run_demo(dataclasses.replace(config, seeds=2))
    printed = capsys.readouterr().out
    assert printed.count("done earlier") == 6
    assert "sweep, fit: made with --seeds 1 (now --seeds 2); running again" in printed
    again = json.loads((out / "sweep" / "sweep.json").read_text())["runs"]
    assert len(again) == 2 * len(runs) and {run["id"] for run in runs} < {run["id"] for run in again}
    assert all((out / "sweep" / "runs" / run["id"] / "result.json").exists() for run in again)
    # An option that would replace a finished stage's output is refused, and nothing changes.
    with pytest.raises(ValueError, match="made with --num-units 16, not --num-units 8; that changes its units, "
                                         "sequences, sweep, fit stages"):
        demo.run_demo(dataclasses.replace(config, seeds=2, num_units=8))
    assert json.loads((out / "demo_config.json").read_text())["num_units"] == 16
    # Moved whole (nothing left where it was), the folder resumes as itself: every stage done, no run trained or
    # scored again (eval.json named its benchmarks by their absolute paths alone before).
    moved = tmp_path / "elsewhere" / "demo"
    moved.parent.mkdir()
    shutil.move(out, moved)
    written = {path: path.stat().st_mtime_ns for path in (moved / "sweep" / "runs").glob("*/*.json")}
    demo.run_demo(dataclasses.replace(config, out=str(moved), seeds=2))
    assert capsys.readouterr().out.count("done earlier") == 8
    assert {path: path.stat().st_mtime_ns for path in (moved / "sweep" / "runs").glob("*/*.json")} == written
    scored = json.loads((moved / "sweep" / "runs" / runs[0]["id"] / "eval.json").read_text())["benchmarks"]["sblimp"]
    assert (moved / "sweep" / "runs" / runs[0]["id"] / scored["folder"]["relative"]).resolve() == \
        (moved / "bench" / "sblimp").resolve()


def test_finding_one_is_judged_per_budget_with_paired_intervals():
    import numpy as np

    from simslm.eval.scoring import accuracy_with_ci

    rng = np.random.default_rng(0)
    hardness, tokens = rng.normal(4.0, 0.5, 32), rng.integers(300, 500, 32).astype(float)

    def row(member, shift, noise, outcomes):
        losses = hardness + shift + rng.normal(0, noise, 32)
        return {"member": member, "loss_speech": float((losses * tokens).sum() / tokens.sum()),
                "validation_batches": [[0, 0, loss * n, n, 0, 0] for loss, n in zip(losses, tokens)],
                "accuracies": {"tsc/S": accuracy_with_ci(np.asarray(outcomes, dtype=float))}}

    chance = (rng.random(100) < 0.5).astype(float)
    best = {}
    for budget, shift in ((1e11, -0.1), (2e11, -0.1), (4e11, -0.1), (8e11, 0.0)):
        best["interleaved-twist", budget] = row("d2", shift, 0.05, chance)
        best["textless-twist", budget] = row("d3", 0.0, 0.05, chance)
    lines = demo.finding_one(best, sorted({b for _, b in best}))
    assert lines[0].startswith("Finding 1, interleaved + TWIST beats textless per FLOP: holds only in part here: "
                               "lower speech CE at 3 of 4 budgets, higher at 0, within noise at 1")
    assert "no benchmark difference is resolved" in lines[0]
    assert len(lines) == 5 and all(re.search(r"minus textless \(d2 vs d3\): speech CE -0\.\d+ \[-0\.\d+, -0\.\d+\]",
                                             line) for line in lines[1:4])
    assert "tsc/S +0.0 [+0.0, +0.0] pp" in lines[1]


def test_finding_one_with_replicates_holds_the_spread_between_runs():
    import numpy as np

    tokens = np.full(32, 400.0)

    def run(loss):
        return {"loss_speech": loss, "accuracies": {},
                "validation_batches": [[0, 0, loss * n, n, 0, 0] for n in tokens]}

    def cell(member, losses):
        return {"member": member, "loss_speech": float(np.mean(losses)), "accuracies": {},
                "replicates": [run(loss) for loss in losses]}

    # The same 0.1-nat gap at both budgets; at the second, the runs of a cell spread over 0.4 nats.
    best = {("interleaved-twist", 1e11): cell("d2", [3.00, 3.01, 2.99]),
            ("textless-twist", 1e11): cell("d2", [3.10, 3.11, 3.09]),
            ("interleaved-twist", 2e11): cell("d2", [2.80, 3.00, 3.20]),
            ("textless-twist", 2e11): cell("d3", [2.90, 3.10, 3.30])}
    lines = demo.finding_one(best, [1e11, 2e11])
    assert "lower speech CE at 1 of 2 budgets, higher at 0, within noise at 1" in lines[0]
    assert "3+ training runs per cell" in lines[0] and "not in them" not in lines[0]
    assert re.search(r"C=2e\+11: .*speech CE -0\.100 \[-0\.\d+, \+0\.\d+\]", lines[2])
    # Two runs a cell: said to be few, and the intervals are wider than with three.
    pairs = {key: {**value, "replicates": value["replicates"][:2]} for key, value in best.items()}
    two = demo.finding_one(pairs, [1e11, 2e11])
    assert "2+ training runs per cell" in two[0] and "Welch's t has 1-2 degrees of freedom" in two[0]
    interval = lambda line: np.array(re.search(r"speech CE \S+ \[(\S+), (\S+)\]", line).groups(), float)  # noqa: E731
    assert np.diff(interval(two[1])) > np.diff(interval(lines[1]))


def test_the_demos_sweep_has_one_run_per_cell_or_one_per_seed():
    single = demo.sweep_spec(demo.DemoConfig(out="d", seed=4))
    assert single.seeds == () and single.train["seed"] == 4  # the run ids of a demo made before seeds existed
    replicated = demo.sweep_spec(demo.DemoConfig(out="d", seed=4, seeds=3))
    assert replicated.seeds == (4, 5, 6) and "seed" not in replicated.train
    assert [v.name for v in replicated.variants] == ["interleaved-twist", "interleaved-random", "textless-twist"]
    # Rows, the default, leave a run's id as before batching existed; slamkit's pieces name runs of their own.
    assert single.train["batching"] == "rows"
    pieces = demo.sweep_spec(demo.DemoConfig(out="d", seed=4, batching="pieces"))
    assert pieces.train["batching"] == "pieces"


def test_stale_stages_compare_each_finished_stage_with_the_options_it_ran_with(tmp_path):
    from simslm import storage

    made = demo.DemoConfig(out=str(tmp_path))
    stored = json.loads(json.dumps(dataclasses.asdict(made)))
    del stored["seeds"]  # a folder made before --seeds existed ran one seed, the option's default
    storage.write_json(tmp_path / "demo_config.json", stored)
    for stage in demo.STAGE_OPTIONS:
        storage.write_json(tmp_path / "stages" / f"{stage}.json", {"wall_sec": 1.0})
    assert demo.stale_stages(tmp_path, made) == {}
    assert demo.stale_stages(tmp_path, dataclasses.replace(made, seeds=3)) == \
        {"sweep": {"seeds": (1, 3)}, "fit": {"seeds": (1, 3)}}
    assert set(demo.stale_stages(tmp_path, dataclasses.replace(made, depths=(1, 2, 3, 4, 5)))) == \
        {"textlm", "sweep", "fit"}
    assert set(demo.stale_stages(tmp_path, dataclasses.replace(made, num_resamples=10))) == {"fit"}
    assert demo.stale_stages(tmp_path, dataclasses.replace(made, bracket=False))["sweep"] == {"bracket": (True, False)}
    assert demo.stale_stages(tmp_path, dataclasses.replace(made, batching="pieces")) == \
        {"sweep": {"batching": ("rows", "pieces")}, "fit": {"batching": ("rows", "pieces")}}
    assert [demo._option(*option) for option in (("bracket", False), ("depths", [1, 2]), ("lr", 0.006),
                                                 ("budgets_flops", [1.25e11, 2e11]))] == \
        ["--no-bracket", "--depths 1 2", "--lr 0.006", "--budgets-flops 1.25e+11 2e+11"]
    # A marker's own options come first: this fit ran with 10 resamples, whatever the last call asked.
    storage.write_json(tmp_path / "stages" / "fit.json", {"wall_sec": 1.0, "options": {"num_resamples": 10}})
    assert demo.stale_stages(tmp_path, dataclasses.replace(made, num_resamples=10)) == {}
    with pytest.raises(ValueError, match=r"--seed 0, not --seed 1; that changes its synthesise, units, textlm"):
        demo.stale_stages(tmp_path, dataclasses.replace(made, seed=1))
    # A marker or record that is not one is named, not a traceback.
    storage.write_json(tmp_path / "stages" / "fit.json", {"wall_sec": 1.0, "options": [10]})
    with pytest.raises(ValueError, match=r"fit.json: not a record of the demo's options"):
        demo.stale_stages(tmp_path, made)
    storage.write_json(tmp_path / "stages" / "fit.json", ["done"])
    with pytest.raises(ValueError, match=r"fit.json: not a record of a finished stage"):
        demo.stale_stages(tmp_path, made)


def test_the_summary_names_the_cells_whose_minimum_the_grid_does_not_bracket(tmp_path):
    from simslm import storage
    from simslm.scaling import bracket

    def row(member, budget, loss):
        return {"id": f"v-{member}-{budget:g}", "variant": "v", "family": "f", "member": member, "budget": budget,
                "seed": 0, "parameters": {"d1": 1e5, "d2": 2e5, "d3": 3e5}[member], "loss_speech": loss,
                "accuracies": {}}

    # At 1e9 the smallest size is the best (unbracketed); at 2e9, d2 is (bracketed).
    rows = [row("d1", 1e9, 3.0), row("d2", 1e9, 3.1), row("d3", 1e9, 3.3),
            row("d1", 2e9, 3.0), row("d2", 2e9, 2.9), row("d3", 2e9, 3.1)]
    storage.write_json(tmp_path / "bracket.json", {"added": [], "unbracketed": [
        {"variant": "v", "budget": 1e9, "member": "d1", "needs": "smaller", "family": "f", "reason": "no depth 0"}]})
    assert demo.bracketing(tmp_path, bracket.edges(rows), 2) == (
        "Bracketing: the best size is at the grid's edge in 1 of 2 (variant, budget) cells, so their isoFLOP minimum "
        "may lie outside the sizes run: v at C=1e+09 (best d1, the grid's smallest; no depth 0).")
    assert demo.bracketing(tmp_path, bracket.edges(rows[3:]), 1) == \
        "Bracketing: the best size is inside the grid in all 1 (variant, budget) cells."


def test_the_demo_refuses_a_folder_of_other_files_before_writing_anything(tmp_path, capsys):
    from simslm.cli import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    assert main(["demo", "--out", str(tmp_path / "mine")]) == 2
    assert "not empty, and not a demo folder" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_finding_two_names_a_degenerate_law_and_with_single_runs_says_how_more_may_determine_it():
    sound = {"approach3": {"a": 0.62, "ci_a": [0.55, 0.70], "degenerate": []},
             "approach2": {"a": 0.60, "ci_a": [0.50, 0.68]}, "approach1": {"a": float("nan")}}
    assert demo.finding_two(sound, 0, 4, 1).startswith(
        "Finding 2, compute-optimal allocation leans to model size (a > b, i.e. a > 0.5): holds here: a = 0.620 "
        "[0.550, 0.700], approach 2 a = 0.600 [0.500, 0.680], approach 1 n/a")
    assert "Approaches 2 and 3 agree within their 95% intervals." in demo.finding_two(sound, 0, 4, 1)
    assert "cannot be judged (the best size is the grid's smallest or largest at 1 of 4 budgets" in \
        demo.finding_two(sound, 1, 4, 1)
    reason = "alpha ended on the bound of its search (5): the data do not determine it"
    degenerate = {**sound, "approach3": {**sound["approach3"], "degenerate": [reason]}}
    single = demo.finding_two(degenerate, 0, 4, 1)
    assert f"cannot be judged (the parametric fit is degenerate: {reason}; a second training run per cell " \
           f"(--seeds 2, which trains only the new runs) may determine it) here: approach 2 a = 0.600" in single
    assert "a = 0.620" not in single and "agree" not in single  # a degenerate law's numbers are not shown
    assert f"degenerate: {reason}) here:" in demo.finding_two(degenerate, 0, 4, 2)  # replicates already: no hint
