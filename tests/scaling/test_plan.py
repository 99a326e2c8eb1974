"""`simslm plan`: the nearest size to train, of the sweep a fit is of or of simslm's own family."""

import json
import re

import numpy as np

from simslm import model
from simslm.cli import main
from simslm.scaling.fit import Law
from tests.scaling.test_report import LAW, _fake_sweep


def test_a_plan_from_a_non_embedding_fit_counts_the_family_so(tmp_path, capsys):
    """A fit whose N is non-embedding parameters (`fit --convention non_embedding`) planned the member of that
    many parameters in all, and its tokens from all of them: C = 6 N D of another N than the fit's."""

    rows = ["parameters,non_embedding_parameters,tokens,loss"]
    for parameters in np.logspace(4.5, 6.5, 5):
        for tokens in np.logspace(5.5, 8, 5):
            rows.append(f"{3 * parameters},{parameters},{tokens},{float(LAW.loss(parameters, tokens))}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    assert main(["fit", str(tmp_path / "t.csv"), "--convention", "non_embedding", "--num-resamples", "20"]) == 0
    capsys.readouterr()
    assert main(["plan", "--flops", "1e15", "--fit", str(tmp_path / "t.fit.json"), "--vocab-size", "600"]) == 0
    out = capsys.readouterr().out
    n_opt = float(out.split("N_opt = ")[1].split()[0])
    assert out.split("N_opt = ")[1].split()[1:3] == ["non-embedding", "parameters"]
    depth, width = model.family_member_for(n_opt, 600, non_embedding=True)
    assert width is None
    counted = model.family_parameters(depth, 600, non_embedding=True)
    assert (f"nearest family member (vocabulary 600): depth {depth}, {counted:,} non-embedding parameters -> train it "
            f"for {1e15 / (6 * counted):.4g} tokens") in out


def test_a_plan_from_a_sweeps_fit_names_the_sizes_the_sweep_trained(tmp_path, capsys):
    """`plan` matched N_opt to simslm's default family at vocabulary 1015 whatever the sweep trained: from the
    demo's own fit it said "depth 3, 429,888 parameters", where the demo's depth 3 (aspect ratio 16, 715 tokens)
    has 117,600. A sweep's fit is planned onto the sweep's own sizes, counted as the fit counts them."""
    _fake_sweep(tmp_path / "sweep")  # sizes d1..d4 of 3e4, 1e5, 3e5, 1e6 parameters (0.8 of them non-embedding)
    assert main(["fit", str(tmp_path / "sweep"), "--num-resamples", "10"]) == 0
    capsys.readouterr()
    fit_path = tmp_path / "sweep" / "fit.json"
    law = Law(**json.loads(fit_path.read_text())["variants"]["interleaved-twist"]["approach3"]["law"])
    flops = 1e13
    n_opt = law.optimum(flops)[0]
    trained = {"d1": 3e4, "d2": 1e5, "d3": 3e5, "d4": 1e6}
    name = min(trained, key=lambda member: abs(np.log(trained[member] / n_opt)))
    assert main(["plan", "--flops", str(flops), "--fit", str(fit_path), "--variant", "interleaved-twist"]) == 0
    out = capsys.readouterr().out
    assert (f"nearest size the sweep trained: {name}, {int(trained[name]):,} parameters -> train it for "
            f"{flops / (6 * int(trained[name])):.4g} tokens") in out
    assert "nearest family member" not in out and "extrapolated" not in out
    # The sweep folder names its fit.json ("a folder, not a JSON file" before).
    assert main(["plan", str(tmp_path / "sweep"), "--flops", str(flops), "--variant", "interleaved-twist"]) == 0
    assert capsys.readouterr().out == out
    # Past the largest size, the plan says the law is read beyond the sizes it was fitted on.
    assert main(["plan", "--flops", "1e18", "--fit", str(fit_path), "--variant", "interleaved-twist"]) == 0
    out = capsys.readouterr().out
    assert "nearest size the sweep trained: d4, 1,000,000 parameters" in out
    assert re.search(r"note: N_opt is [0-9.e+]+x the largest size the sweep trained \(d4\): the law is "
                     r"extrapolated there", out)
    # A non-embedding fit of the same sweep: its sizes counted outside the embeddings.
    assert main(["fit", str(tmp_path / "sweep"), "--num-resamples", "10", "--convention", "non_embedding",
                 "--out", str(tmp_path / "ne.json")]) == 0
    capsys.readouterr()
    assert main(["plan", "--flops", "1e9", "--fit", str(tmp_path / "ne.json"), "--variant", "textless-twist"]) == 0
    out = capsys.readouterr().out
    assert "nearest size the sweep trained: d1, 24,000 non-embedding parameters -> train it for" in out
    assert "x smaller than the smallest size the sweep trained (d1)" in out
    # Its C counts the non-embedding parameters: what training d1 costs counting all of them is said too.
    assert (f"C here is 6 N D with N outside the embeddings, as the fit counts it: with all 30,000 parameters, "
            f"that training is {6 * 30000 * 1e9 / (6 * 24000):.4g} FLOPs") in out
    # A folder without a fit.json says what it holds.
    (tmp_path / "sweep" / "fit.json").rename(tmp_path / "sweep" / "fit.old.json")
    assert main(["plan", str(tmp_path / "sweep"), "--flops", "1e9"]) == 2
    assert f"{tmp_path / 'sweep'}: a folder with no fit.json; it holds fit.old.json: name it" in capsys.readouterr().err
    (tmp_path / "sweep" / "fit.old.json").rename(fit_path)
    # A sweep whose runs cannot be read still plans, onto simslm's own family, and says why.
    (tmp_path / "sweep" / "runs" / "interleaved-twist-d1-c1e+12" / "result.json").write_text("{")
    assert main(["plan", "--flops", str(flops), "--fit", str(fit_path), "--variant", "interleaved-twist"]) == 0
    captured = capsys.readouterr()
    assert "nearest family member (vocabulary 1015)" in captured.out
    assert "simslm plan: warning: the sizes of sweep" in captured.err


def test_plan_says_when_it_caps_the_family(capsys):
    assert main(["plan", "--flops", "1e24"]) == 0
    assert "capped at the family's largest member (depth 48)" in capsys.readouterr().out
    assert main(["plan", "--flops", "1e15"]) == 0
    assert "capped" not in capsys.readouterr().out


def test_a_plan_below_depth_1_names_the_narrower_member_a_sweep_would_train(capsys):
    """Below depth 1 simslm's family narrows (d1w16 ... d1w4, as bracketing grows a grid into them); `plan` named
    depth 1 whatever the budget, as "train it for 0.003758 tokens" at 1e3 FLOPs, without a word."""
    vocabulary = 1015
    for flops in (1e11, 1e10):
        assert main(["plan", "--flops", str(flops)]) == 0
        out = capsys.readouterr().out
        n_opt = float(out.split("N_opt = ")[1].split()[0])
        ladder = [(f"d1w{width}", model.family_parameters(1, vocabulary, aspect_ratio=width)) for width in (32, 16, 8, 4)]
        label, parameters = min(ladder, key=lambda member: abs(np.log(member[1] / n_opt)))
        assert label != "d1w32"  # the law's N_opt at these budgets lies below depth 1
        assert (f"nearest family member (vocabulary {vocabulary}): depth 1 at width {label[3:]} ({label}), "
                f"{parameters:,} parameters -> train it for {flops / (6 * parameters):.4g} tokens") in out
    assert main(["plan", "--flops", "1e3"]) == 0
    assert "capped at the family's smallest member (d1w4); N_opt is " in capsys.readouterr().out
    # Capped only past where a narrower member at the ladder's step (d1w8 has 2.03x d1w4's parameters) would be the
    # nearer: at N_opt 1.04x below d1w4 (9.94e9 FLOPs) d1w4 is the nearest member of any longer ladder, and the note
    # said it was capped all the same; at 1.71x below (3.6e9), past the 1.42x midpoint, it is.
    assert main(["plan", "--flops", "9.94e9"]) == 0
    out = capsys.readouterr().out
    assert "(d1w4), 4,328 parameters" in out and "capped" not in out
    assert main(["plan", "--flops", "3.6e9"]) == 0
    assert "capped at the family's smallest member (d1w4); N_opt is 1.71x smaller than it" in capsys.readouterr().out
