import dataclasses
import fcntl
import json
import warnings

import numpy as np
import pytest

from simslm.scaling import bracket, collect, execute, sweep
from simslm.train.plan import RunResult
from tests.scaling.helpers import _spec, _started_run


def test_status_says_how_far_a_run_not_finished_got(data, tmp_path):
    """A run training on a cluster read `running` for hours with no sign of its progress; now its last logged step
    of the plan's steps, read from metrics.jsonl's end (a torn last line, as a kill leaves, skipped)."""
    first, run_dir = _started_run(data, tmp_path)
    assert collect.status_table(tmp_path).splitlines()[1].split()[1] == "started"  # no step yet: no share
    (run_dir / "plan.json").write_text(json.dumps({"total_steps": 400}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": step, "loss": 1.0}) + "\n"
                                                   for step in range(1, 181)) + '{"step": 18')
    assert collect.status_table(tmp_path).splitlines()[1].split()[1:3] == ["started", "45%"]
    with open(run_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert collect.status_table(tmp_path).splitlines()[1].split()[1:3] == ["running", "45%"]


@pytest.mark.slow
def test_a_tokens_per_parameter_grid_trains_each_size_on_r_n_tokens_and_fits(data, tmp_path):
    spec = sweep.SweepSpec.from_json({"variants": [{"name": "r", "data": data, "init": "random"}], "depths": [1, 2],
                                      "tokens_per_parameter": [0.5, 1], "validation_data": data,
                                      "train": {"batch_size": 4, "num_validation_batches": 1, "checkpoint_every": 50}})
    planned = sweep.plan_sweep(spec, tmp_path)
    assert sorted(run["id"].split("-")[2] for run in planned["runs"]) == ["t0.5", "t0.5", "t1", "t1"]
    assert execute.run_sweep(tmp_path, num_parallel=2) == {"done": 4}
    for row in collect.collect(tmp_path):
        # whole steps of 4 x 64 tokens, as near r N as they come
        assert abs(row["tokens"] - row["tokens_per_parameter"] * row["parameters"]) <= 4 * 64 / 2
        assert row["budget"] is None
    fits = collect.fit_sweep(tmp_path, num_resamples=50)
    assert "approach 2 could not be computed" in " ".join(fits["variants"]["r"]["warnings"])
    # Its report has no isoFLOP figure: an empty one was drawn, and matplotlib warned of a legend of nothing.
    from simslm.scaling import report

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = report.write_report(tmp_path).read_text()
    assert "isoflop.svg" not in page and "loss_curves.svg" in page


def test_a_speech_loss_difference_gets_a_paired_interval_over_validation_batches():
    rng = np.random.default_rng(0)
    tokens = rng.integers(300, 500, 64).astype(float)
    hardness = rng.normal(3.0, 0.5, 64)  # batches differ far more than the two runs do
    batches = lambda shift: [[0.0, 0.0, (h + shift) * n, n, 0.0, 0.0] for h, n in zip(hardness, tokens)]  # noqa: E731
    first, second = {"validation_batches": batches(-0.05)}, {"validation_batches": batches(0.0)}
    difference, low, high = collect.speech_loss_difference(first, second)
    assert difference == pytest.approx(-0.05)
    # Paired: the shared batch-to-batch spread cancels, so the interval is tight and excludes zero.
    assert low == pytest.approx(-0.05) and high == pytest.approx(-0.05)
    noisy = {"validation_batches": [[0, 0, (h - 0.05 + e) * n, n, 0, 0]
                                    for h, n, e in zip(hardness, tokens, rng.normal(0, 0.3, 64))]}
    difference, low, high = collect.speech_loss_difference(noisy, second)
    assert low < -0.05 < high and high - low > 0.05  # per-run noise that does not cancel widens it
    # Runs without per-batch sums, or over other batches, get no interval.
    assert collect.speech_loss_difference({"validation_batches": None}, second) is None
    assert collect.speech_loss_difference({"validation_batches": batches(0.0)[:10]}, second) is None


def test_replicates_make_one_cell_and_the_best_size_is_the_lowest_mean():
    def row(member, seed, loss):
        return {"id": f"v-{member}-s{seed}", "variant": "v", "family": "f", "member": member, "budget": 1e9,
                "seed": seed, "parameters": {"d1": 1e5, "d2": 2e5}[member], "loss_speech": loss, "accuracies": {}}

    # d1 has the single best run (2.90) but d2 the lower mean (3.00 against 3.05).
    rows = [row("d1", 0, 2.90), row("d1", 1, 3.20), row("d2", 0, 3.01), row("d2", 1, 2.99)]
    cells = {cell["member"]: cell for cell in collect.cells(rows)}
    assert cells["d1"]["loss_speech"] == pytest.approx(3.05) and len(cells["d1"]["replicates"]) == 2
    best = collect.best_runs(rows)[("v", 1e9)]
    assert best["member"] == "d2" and [r["seed"] for r in best["replicates"]] == [0, 1]
    assert bracket.edges(rows) == [{"variant": "v", "budget": 1e9, "member": "d2", "needs": "larger", "family": "f"}]


def test_a_cell_difference_adds_the_spread_between_runs_to_the_batches_as_welch_does():
    from scipy import stats

    tokens = np.full(64, 400.0)

    def run(loss, noise=None):  # every batch at one loss: the validation sample adds nothing
        losses = loss + (noise if noise is not None else np.zeros(64))
        return {"validation_batches": [[0, 0, value * n, n, 0, 0] for value, n in zip(losses, tokens)]}

    first, second = [3.00, 3.10, 2.95], [3.20, 3.08, 3.30, 3.15]
    cell = lambda losses: {"replicates": [run(loss) for loss in losses]}  # noqa: E731
    difference, low, high = collect.cell_difference(cell(first), cell(second))
    welch = stats.ttest_ind(first, second, equal_var=False).confidence_interval(0.95)
    assert difference == pytest.approx(np.mean(first) - np.mean(second))
    assert (low, high) == (pytest.approx(welch.low), pytest.approx(welch.high))
    # One run per cell: the batches' paired bootstrap alone, as speech_loss_difference gives it.
    rng = np.random.default_rng(0)
    one, other = run(3.0, rng.normal(0, 0.3, 64)), run(3.1, rng.normal(0, 0.3, 64))
    assert collect.cell_difference({"replicates": [one]}, {"replicates": [other]}) == \
        collect.speech_loss_difference(one, other)
    # A gap resolved by one run of each is not when the runs themselves spread that much.
    spread = [run(loss) for loss in (2.80, 3.00, 3.20)]
    assert collect.cell_difference({"replicates": [run(3.0)]}, {"replicates": [run(3.1)]})[2] < 0
    assert collect.cell_difference({"replicates": spread}, {"replicates": [run(3.1), run(3.2), run(3.0)]})[2] > 0
    # Both shares count: batch noise that leaves every run's loss as it was (the runs' share unchanged) widens
    # the interval of the same runs.
    noisy = [run(loss, (noise := rng.normal(0, 0.3, 64)) - noise.mean()) for loss in first]
    assert collect.cell_difference({"replicates": noisy}, cell(second))[0] == pytest.approx(difference)
    assert np.ptp(collect.cell_difference({"replicates": noisy}, cell(second))[1:]) > high - low
    assert collect.cell_difference({"replicates": [run(3.0), {"validation_batches": None}]}, cell(second)) is None


def test_a_cells_accuracy_averages_each_items_outcome_over_its_runs():
    from simslm.eval.scoring import accuracy_with_ci, difference_with_ci

    a = accuracy_with_ci(np.array([1, 1, 0, 0.5]), ["x", "x", "y", "y"], aggregation="macro")
    b = accuracy_with_ci(np.array([1, 0, 0, 1.0]), ["x", "x", "y", "y"], aggregation="macro")
    mean = collect.mean_accuracy([a, b])
    assert mean.outcomes == [1.0, 0.5, 0.0, 0.75] and mean.accuracy == pytest.approx((0.75 + 0.375) / 2)
    assert mean.aggregation == "macro" and difference_with_ci(mean, a) is not None
    bare = collect.mean_accuracy([a, dataclasses.replace(b, outcomes=None)])
    assert bare.outcomes is None and bare.accuracy == pytest.approx((a.accuracy + b.accuracy) / 2)
    # Results over items (voices averaged) stay so: the runs' counts of pairs and items are kept.
    items = ["i", "i", "j", "k"]
    c = accuracy_with_ci(np.array([1, 0, 0, 1.0]), ["x", "x", "y", "y"], items=items, aggregation="items")
    d = accuracy_with_ci(np.array([1, 1, 1, 1.0]), ["x", "x", "y", "y"], items=items, aggregation="items")
    mean = collect.mean_accuracy([c, d])
    assert mean.outcomes == [0.75, 0.5, 1.0] and mean.accuracy == pytest.approx(2.25 / 3)
    assert (mean.num_pairs, mean.num_items, mean.groups()) == (4, 3, ["x", "y", "y"])
    assert mean.per_group["x"] == {"accuracy": 0.75, "num_pairs": 2, "num_items": 1}


@pytest.mark.slow
def test_a_sweep_with_seeds_trains_each_replicate_and_fits_them_all(data, tmp_path, measured_peak):
    sweep.plan_sweep(_spec(data, budgets_flops=(4e8,), seeds=(0, 1)), tmp_path)
    assert execute.run_sweep(tmp_path, num_parallel=2) == {"done": 4}
    rows = collect.collect(tmp_path)
    assert sorted((row["member"], row["seed"]) for row in rows) == [("d1", 0), ("d1", 1), ("d2", 0), ("d2", 1)]
    # One MFU denominator for all, measured by the executor before the runs load the cores.
    (peak,) = {RunResult.load(tmp_path / "runs" / row["id"]).peak_flops_measured for row in rows}
    assert 0 < peak < 1e14
    for cell in collect.cells(rows):
        first, second = (r["loss_speech"] for r in cell["replicates"])
        assert first != second  # another data order and init: another model
        assert cell["loss_speech"] == pytest.approx((first + second) / 2)
    fits = collect.fit_sweep(tmp_path, num_resamples=20)
    assert "random" in fits["variants"]
    # The ledger says which seed each run is, whatever its name.
    header, *lines, total = collect.status_table(tmp_path).splitlines()
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
    assert collect.cell_accuracy_difference(one, other, "b") == \
        difference_with_ci(one["accuracies"]["b"], other["accuracies"]["b"])
    # Runs that each score every item alike: the items add nothing, so Welch over the runs' accuracies remains.
    first, second = [1.0, 0.5, 0.75], [0.5, 0.25, 0.5]
    cell = lambda values: {"replicates": [run(np.full(40, v)) for v in values]}  # noqa: E731
    difference, low, high = collect.cell_accuracy_difference(cell(first), cell(second), "b")
    welch = stats.ttest_ind(first, second, equal_var=False).confidence_interval(0.95)
    assert difference == pytest.approx(np.mean(first) - np.mean(second))
    assert (low, high) == (pytest.approx(welch.low), pytest.approx(welch.high))
    assert low < 0 < high  # a 0.33 gap the runs' own spread does not resolve
    assert collect.cell_accuracy_difference(cell(first), {"replicates": [{"accuracies": {}}]}, "b") is None

