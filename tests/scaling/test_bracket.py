import dataclasses
import json
import time
from pathlib import Path

import pytest

from simslm.scaling import bracket, collect, execute, sweep
from simslm.train.plan import RunResult
from tests.conftest import tiny_base_model
from tests.scaling.helpers import _spec


@pytest.mark.slow
def test_bracketing_grows_the_grid_until_each_minimum_is_inside_or_says_why_not(data, tmp_path):
    # At 4e8 FLOPs on this data the best depth is about 10 (measured: the grid grew from 2-3 to 2-11).
    sweep.plan_sweep(_spec(data, depths=(9, 10), budgets_flops=(4e8,)), tmp_path)
    execute.run_sweep(tmp_path, num_parallel=2, bracket=True)
    record = json.loads((tmp_path / "bracket.json").read_text())
    assert record["added"]  # two sizes always put the best at an edge: at least one size was added
    rows = collect.collect(tmp_path)
    for (variant, budget), best in collect.best_runs(rows).items():
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
    assert bracket.extend_to_bracket(tmp_path) is False  # nothing finished: nothing to grow
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
    smaller, added = bracket._next_size(spec, "llama", "smaller")
    assert smaller.families["llama"] == (models[32], models[64], models[96]) and "llama-32" in added
    larger, _ = bracket._next_size(smaller, "llama", "larger")
    assert larger.families["llama"][-1] == models[128]
    none, why = bracket._next_size(larger, "llama", "larger")
    assert none is None and "no model larger than its members" in why


def test_below_depth_1_bracketing_adds_a_narrower_depth_1_to_that_cell_only(data, tmp_path, monkeypatch, capsys):
    spec = _spec(data, depths=(1, 2, 3))  # no family: aspect ratio 32, so depth 1 is 32 wide
    sweep.plan_sweep(spec, tmp_path)
    losses = {(4e8, "d1"): 3.0, (4e8, "d2"): 3.1, (4e8, "d3"): 3.3, (8e8, "d1"): 3.0, (8e8, "d2"): 2.9,
              (8e8, "d3"): 3.2}

    def collected(sweep_dir):  # the runs as planned, with these losses (d1 best at 4e8 only)
        sizes = {"d1w4": 1e3, "d1w8": 2e3, "d1w16": 4e3, "d1": 8e3, "d2": 2e4, "d3": 6e4}
        return [{"variant": run["variant"], "budget": run["budget_flops"], "member": run["member"], "family": "family",
                 "parameters": sizes[run["member"]], "loss_speech": losses[run["budget_flops"], run["member"]]}
                for run in sweep.load_sweep(sweep_dir)["runs"]]

    monkeypatch.setattr(bracket, "collect", collected)
    losses[4e8, "d1w16"] = 3.2  # what the narrower run will find
    assert bracket.extend_to_bracket(tmp_path)
    planned = sweep.load_sweep(tmp_path)
    narrow = [run for run in planned["runs"] if run["member"] == "d1w16"]
    assert [(run["budget_flops"], run["config"]["base_model"]) for run in narrow] == [(4e8, "family:1:16")]
    assert len(planned["runs"]) == 7  # the grid's 6 and that cell's one
    assert planned["spec"]["cell_sizes"] == [{"variant": "random", "budget_flops": 4e8, "size": "d1w16"}]
    record = json.loads((tmp_path / "bracket.json").read_text())
    assert record["added"] == [{"family": "family", "side": "smaller", "size": "d1w16", "variant": "random",
                                "budget": 4e8}] and record["unbracketed"] == []
    assert not bracket.extend_to_bracket(tmp_path)  # d1 is inside its cell now
    sweep.plan_sweep(spec, tmp_path)  # planned again from the first spec, as the demo does from its options
    assert bracket.extend_to_bracket(tmp_path) and len(sweep.load_sweep(tmp_path)["runs"]) == 7
    assert len(json.loads((tmp_path / "bracket.json").read_text())["added"]) == 1
    # Narrower still while the narrowest is best, by halves down to width 4, then the reason.
    for width, loss in ((16, 2.9), (8, 2.8), (4, 2.7)):
        losses[4e8, f"d1w{width}"], losses[4e8, f"d1w{width // 2}"] = loss, 3.5
        assert bracket.extend_to_bracket(tmp_path) == (width > 4)
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

    def collected(sweep_dir):  # the runs with a loss so far: 8e8's d3 still running
        return [{"id": run["id"], "variant": run["variant"], "budget": run["budget_flops"], "member": run["member"],
                 "family": "family", "parameters": sizes[run["member"]],
                 "loss_speech": losses[run["budget_flops"], run["member"]]}
                for run in sweep.load_sweep(sweep_dir)["runs"] if (run["budget_flops"], run["member"]) in losses]

    monkeypatch.setattr(bracket, "collect", collected)
    # 4e8 is finished, its best the smallest size: it grows. 8e8's best so far is its largest finished size,
    # but d3 may yet beat it: no depth 4 for that.
    grown = bracket._grown_runs(tmp_path)  # every run not done on disk (none here: the ledger is made up)
    assert sorted(run["member"] for run in grown) == ["d1", "d1", "d1w16", "d2", "d2", "d3", "d3"]
    assert grown == sweep.load_sweep(tmp_path)["runs"]
    assert "unbracketed" in json.loads((tmp_path / "bracket.json").read_text())
    losses[4e8, "d1w16"] = 3.2
    (tmp_path / "bracket.json").unlink()
    assert bracket._grown_runs(tmp_path) == [] and not (tmp_path / "bracket.json").exists()  # nothing to say yet
    assert bracket.extend_to_bracket(tmp_path)  # judged as if every run had ended: 8e8 wants depth 4
    assert "d4" in {run["member"] for run in sweep.load_sweep(tmp_path)["runs"]}


def test_bracketing_while_the_grid_runs_reads_the_ledger_when_a_run_ends_its_cell_only(data, tmp_path, monkeypatch):
    sweep.plan_sweep(_spec(data), tmp_path)  # d1, d2 at 4e8 and 8e8
    runs = {(run["member"], run["budget_flops"]): run for run in sweep.load_sweep(tmp_path)["runs"]}
    finished, judged = set(), []
    monkeypatch.setattr(RunResult, "exists", staticmethod(lambda run_dir: Path(run_dir).name in finished))
    monkeypatch.setattr(bracket, "_grown_runs", lambda sweep_dir: judged.append(sweep_dir) or [])
    for size in ("d1", "d2"):
        finished.add(runs[size, 4e8]["id"])
        assert bracket.grown_after(tmp_path, runs[size, 4e8]["id"]) == []
    assert judged == [tmp_path]  # once, when d2 ended the 4e8 cell; 8e8 has not ended
    assert bracket.grown_after(tmp_path, "no-such-run") == [] and len(judged) == 1


def test_the_edges_of_a_synthetic_ledger():
    def row(variant, budget, parameters, loss, member):
        return {"variant": variant, "budget": budget, "parameters": parameters, "loss_speech": loss,
                "member": member, "family": "f"}

    rows = [row("a", 1e9, 1e5, 3.0, "d1"), row("a", 1e9, 2e5, 3.1, "d2"), row("a", 1e9, 4e5, 3.2, "d3"),  # smallest
            row("a", 1e10, 1e5, 2.9, "d1"), row("a", 1e10, 2e5, 2.7, "d2"), row("a", 1e10, 4e5, 2.8, "d3"),  # inside
            row("b", 1e9, 1e5, 3.3, "d1"), row("b", 1e9, 2e5, 3.2, "d2")]                                   # largest
    assert bracket.edges(rows) == [
        {"variant": "a", "budget": 1e9, "member": "d1", "needs": "smaller", "family": "f"},
        {"variant": "b", "budget": 1e9, "member": "d2", "needs": "larger", "family": "f"}]


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
    grown, added = bracket._next_size(spec, "family", "larger")
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
    none, why = bracket._next_size(spec, "family", "smaller")
    assert none is None and "no depth 0" in why
    # Below depth 1 a TWIST cell gets depth 1 at half the width, pretrained as the others were.
    edge = {"variant": "twist", "budget": 1e9, "member": "d1", "needs": "smaller", "family": "family"}
    narrowed, added = bracket._narrower_in_cell(spec, edge)
    assert added == "d1w8" and narrowed.cell_sizes == ({"variant": "twist", "budget_flops": 1e9, "size": "d1w8"},)
    family = json.loads((tmp_path / "family" / "family.json").read_text())
    assert family["config"]["narrow_widths"] == [8]
    narrow = family["members"][0]
    assert (narrow["depth"], narrow["width"], narrow["model_dir"]) == (1, 8, "depth-1-w8/model")
    assert narrow["pretraining_tokens"] == pytest.approx(0.1 * narrow["parameters"], abs=4 * 32)
    shape = json.loads((tmp_path / "family" / narrow["model_dir"] / "config.json").read_text())
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]) == (8, 1, 1)
    assert narrowed.depth_member(1, 8).twist_source == str(tmp_path / "family" / "depth-1-w8" / "model")

