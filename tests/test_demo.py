import json

import pytest

from simslm import demo
from simslm.eval.benchbuild import story_key, training_stories


@pytest.mark.slow
def test_a_miniature_demo_runs_every_stage_reports_and_resumes(tmp_path, capsys):
    config = demo.DemoConfig(out=str(tmp_path / "demo"), num_stories=6, num_units=16, depths=(1, 2),
                             budgets_flops=(3e8, 6e8, 1.2e9), text_tokens_per_parameter=1.0, context_length=64,
                             batch_size=4, num_tsc_items=4, sblimp_per_phenomenon=1, num_resamples=20)
    summary = demo.run_demo(config)
    out = tmp_path / "demo"
    assert "Finding 1, interleaved + TWIST beats textless per FLOP:" in summary
    assert "Finding 2, compute-optimal allocation leans to model size" in summary
    assert (out / "sweep" / "report" / "index.html").exists()
    record = json.loads((out / "demo.json").read_text())
    assert set(record["timings_sec"]) >= {"synthesise", "units", "textlm", "sequences", "benchmarks", "sweep", "fit"}
    runs = json.loads((out / "sweep" / "sweep.json").read_text())["runs"]
    assert len(runs) == 3 * 2 * 3
    # No benchmark story is a training story, and every run was evaluated on both benchmarks.

    training = training_stories(str(out / "speech" / "manifest.jsonl"))
    for mutual in (out / "bench" / "tsc" / "audio").glob("*_mutual.txt"):
        assert story_key(mutual.read_text()) not in training
    evaluated = json.loads((out / "sweep" / "runs" / runs[0]["id"] / "eval.json").read_text())["benchmarks"]
    assert {"tsc/S", "tsc/T", "sblimp"} <= set(evaluated)
    # A second call finds every stage done and only rewrites the summary and report.
    capsys.readouterr()
    demo.run_demo(config)
    assert capsys.readouterr().out.count("done earlier") == 7
