import json

import numpy as np
import pytest

from simslm.eval.bench_units import run_units_folder, units_lookup
from simslm.eval.evaluate import EvalConfig, evaluate_run, load_run_model
from simslm.eval.layouts import Pair, Part, load
from simslm.eval.scoring import (
    ScoringOptions,
    accuracy_with_ci,
    encode_parts,
    pair_outcomes,
    score_pairs,
    sequence_log_likelihoods,
    side_scores,
)
from simslm.model import build_family_model
from simslm.sequences.vocabulary import Vocabulary
from simslm.units.extract import ExtractConfig, extract_units


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.build("stories260K", num_units=32)


@pytest.fixture(scope="module")
def tiny_model(vocabulary):
    return build_family_model(2, len(vocabulary), seed=3, context_length=128)


def _naive(model, tokens, scored, vocabulary, speech_vocab):
    """One sequence at a time, no padding: the definition the batched scorer must match."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens[None], dtype=torch.long)).logits[0, :-1].double()
    total = 0.0
    for position, target in enumerate(tokens[1:]):
        if not scored[position]:
            continue
        row = logits[position]
        unit = vocabulary.unit_offset <= target < vocabulary.unit_offset + vocabulary.num_units
        if speech_vocab and unit:
            row = row[vocabulary.unit_offset:vocabulary.unit_offset + vocabulary.num_units]
            target -= vocabulary.unit_offset
        total += float(row[target] - torch.logsumexp(row, 0))
    return total, int(np.sum(scored))


@pytest.mark.parametrize("speech_vocab", [False, True])
def test_batched_scores_equal_one_pair_at_a_time(tiny_model, vocabulary, speech_vocab):
    rng = np.random.default_rng(0)
    sequences_, scored = [], []
    for _ in range(11):
        length = int(rng.integers(5, 60))
        sequences_.append(rng.integers(0, len(vocabulary), length))
        scored.append(rng.random(length - 1) < 0.7)
    sums, counts = sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary,
                                                     speech_vocab=speech_vocab, batch_size=4)
    for i, (tokens, mask) in enumerate(zip(sequences_, scored)):
        expected_sum, expected_count = _naive(tiny_model, tokens, mask, vocabulary, speech_vocab)
        assert counts[i] == expected_count
        assert sums[i] == pytest.approx(expected_sum, rel=1e-5, abs=1e-5)


def test_ties_count_half_and_means_and_sums_differ():
    outcomes = pair_outcomes(np.array([1.0, 2.0, 3.0, -1.0]), np.array([0.5, 2.0, 4.0, -1.0]))
    assert outcomes.tolist() == [1.0, 0.5, 0.0, 0.5]
    assert accuracy_with_ci(outcomes)["accuracy"] == pytest.approx(0.5)
    sums, counts = np.array([-10.0, -4.0]), np.array([10, 2])
    assert side_scores(sums, counts, "mean").tolist() == [-1.0, -2.0]
    assert side_scores(sums, counts, "sum").tolist() == [-10.0, -4.0]


def test_macro_aggregation_averages_groups_not_pairs():
    outcomes = np.array([1.0] * 9 + [0.0] + [0.0, 0.0])
    groups = ["big"] * 10 + ["small"] * 2
    pairs = accuracy_with_ci(outcomes, groups, aggregation="pairs")
    macro = accuracy_with_ci(outcomes, groups, aggregation="macro")
    assert pairs["accuracy"] == pytest.approx(9 / 12)
    assert macro["accuracy"] == pytest.approx((0.9 + 0.0) / 2)
    assert macro["per_group"]["big"] == {"accuracy": pytest.approx(0.9), "num_pairs": 10}


@pytest.mark.parametrize("aggregation", ["pairs", "macro"])
def test_bootstrap_intervals_cover_the_true_rate(aggregation):
    true_rate, covered, trials = 0.7, 0, 200
    rng = np.random.default_rng(1)
    for trial in range(trials):
        outcomes = (rng.random(300) < true_rate).astype(float)
        groups = [f"g{i % 5}" for i in range(300)]
        result = accuracy_with_ci(outcomes, groups, aggregation=aggregation, num_resamples=500, seed=trial)
        covered += result["ci_low"] <= true_rate <= result["ci_high"]
        assert result["ci_low"] <= result["accuracy"] <= result["ci_high"]
    assert 0.90 <= covered / trials <= 0.99  # nominal 95%


def test_encode_parts_marks_switches_merges_the_cut_and_keeps_the_ending(vocabulary):
    units = {"a.wav": np.array([1, 2, 3]), "b.wav": np.array([3, 4])}
    parts = (Part("text", "Tom ran."), Part("speech", audio="a.wav"),
             Part("speech", audio="b.wav"))
    tokens, owners = encode_parts(parts, vocabulary, units.__getitem__, max_length=100)
    offset = vocabulary.unit_offset
    text_ids = vocabulary.tokenizer("Tom ran.", add_special_tokens=False)["input_ids"]
    assert tokens.tolist() == [vocabulary.bos_id, vocabulary.text_id, *text_ids, vocabulary.speech_id,
                               offset + 1, offset + 2, offset + 3, offset + 4]
    assert owners.tolist() == [-1, -1, *[0] * len(text_ids), -1, 1, 1, 1, 2]
    short, short_owners = encode_parts(parts, vocabulary, units.__getitem__, max_length=5)
    assert short.tolist() == [vocabulary.bos_id, vocabulary.text_id, offset + 2, offset + 3, offset + 4]
    assert short_owners[-1] == 2


def _naive_side(model, parts, vocabulary, units_of, *, scored_part):
    """Mean log-likelihood of one part's tokens, from a sequence built by hand."""
    tokens, owners = encode_parts(parts, vocabulary, units_of, max_length=128)
    total, count = _naive(model, tokens, (owners == scored_part)[1:], vocabulary, speech_vocab=False)
    return total / count


@pytest.mark.parametrize("ending", ["speech", "text"])
def test_no_context_baseline_subtracts_the_ending_scored_alone(tiny_model, vocabulary, ending):
    rng = np.random.default_rng(5)
    units = {name: rng.integers(0, vocabulary.num_units, int(rng.integers(6, 20))) for name in "cpn"}
    context = Part("speech", audio="c")
    sides = {"p": (Part("speech", audio="p") if ending == "speech" else Part("text", "Tom was happy.")),
             "n": (Part("speech", audio="n") if ending == "speech" else Part("text", "A red ball fell."))}
    pair = Pair("0", "all", (context, sides["p"]), (context, sides["n"]))
    options = ScoringOptions(baseline="no-context")
    positive, negative, _, _, without_baseline = score_pairs(tiny_model, [pair], vocabulary,
                                                                       units.__getitem__, options)
    assert ending == "text" or units["p"][0] == units["c"][-1]
    for score, side in ((positive[0], sides["p"]), (negative[0], sides["n"])):
        with_context = _naive_side(tiny_model, (context, side), vocabulary, units.__getitem__, scored_part=1)
        # Alone means the very tokens scored after the context: a unit merged across the
        # context/ending cut (the seed makes "p" start with the context's last unit) stays out.
        merged = side.audio is not None and units[side.audio][0] == units["c"][-1]
        alone_units = {**units, "p": units["p"][1:] if merged else units["p"]}
        alone = _naive_side(tiny_model, (side,), vocabulary, alone_units.__getitem__, scored_part=0)
        assert score == pytest.approx(with_context - alone, abs=1e-5)
        assert abs(alone) > 0.1  # the baseline really removed something
    # The standard score is the with-context part alone; the baseline changes the scores.
    plain = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__, ScoringOptions())
    assert plain[0][0] == pytest.approx(_naive_side(tiny_model, (context, sides["p"]), vocabulary,
                                                   units.__getitem__, scored_part=1), abs=1e-5)
    assert plain[0][0] != pytest.approx(positive[0], abs=1e-3)
    assert without_baseline[0][0] == plain[0][0] and without_baseline[1][0] == plain[1][0]


def test_no_context_baseline_leaves_items_without_context_alone(tiny_model, vocabulary):
    units = {"p": np.array([1, 2, 3, 4]), "n": np.array([4, 3, 2, 1])}
    pair = Pair("0", "all", (Part("speech", audio="p"),), (Part("speech", audio="n"),))
    plain = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__, ScoringOptions())
    based = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__,
                                 ScoringOptions(baseline="no-context"))
    assert based[0].tolist() == plain[0].tolist() and based[1].tolist() == plain[1].tolist()
    assert based.without_baseline is None
    with pytest.raises(ValueError, match="baseline must be one of"):
        ScoringOptions(baseline="pmi")


# --- end to end on a tiny trained run -----------------------------------------------------------


def test_eval_writes_accuracy_ci_and_options_for_every_mode(trained_run):
    run, bench = trained_run
    config = EvalConfig(run=str(run), bench=(f"tsc={bench}", "validation"), num_resamples=200)
    results = evaluate_run(config)
    assert set(results) == {"tsc/S", "tsc/S2T", "tsc/T2S", "tsc/T", "validation"}
    for mode in ("S", "S2T", "T2S", "T"):
        entry = results[f"tsc/{mode}"]
        assert entry["num_pairs"] == 4 and entry["aggregation"] == "pairs" and entry["mode"] == mode
        assert entry["ci_low"] <= entry["accuracy"] <= entry["ci_high"]
        assert entry["scoring"] == {"reduction": "mean", "speech_vocab": False, "span": "auto", "baseline": "none"}
    assert results["validation"]["loss_speech"] > 0
    written = json.loads((run / "eval.json").read_text())
    assert written["benchmarks"]["tsc/T"] == json.loads(json.dumps(results["tsc/T"]))
    # A second evaluation reuses the extracted units and merges into eval.json.
    evaluate_run(EvalConfig(run=str(run), bench=(f"again={bench}",), modes="S", reduction="sum"))
    written = json.loads((run / "eval.json").read_text())
    assert {"tsc/S", "again/S", "validation"} <= set(written["benchmarks"])
    assert written["benchmarks"]["again/S"]["scoring"]["reduction"] == "sum"
    evaluate_run(EvalConfig(run=str(run), bench=(f"pmi={bench}",), modes="S", baseline="no-context"))
    written = json.loads((run / "eval.json").read_text())
    assert written["benchmarks"]["pmi/S"]["scoring"]["baseline"] == "no-context"
    # The plain score comes free with the baseline one: the same as scoring without it.
    assert written["benchmarks"]["pmi/S"]["without_baseline"]["accuracy"] == written["benchmarks"]["tsc/S"]["accuracy"]


def test_eval_cli_prints_the_table(trained_run, capsys):
    from simslm.cli import main

    run, bench = trained_run
    assert main(["eval", str(run), "--bench", f"cli={bench}", "--modes", "T", "--num-resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "cli/T" in out and "95% CI" in out and "eval.json" in out


def test_pre_extracted_units_give_the_same_scores_as_audio(trained_run, tmp_path):
    from simslm.speech import audio

    run, bench = trained_run
    header = json.loads((run_units_folder(run) / "units.json").read_text())
    files = sorted((bench / "audio").glob("*.flac"))
    records = [{"id": f.stem, "path": str(f), "duration_sec": audio.audio_info(f)[1]} for f in files]
    extract_units(ExtractConfig(manifest="bench", codebook=header["codebook"], out=str(tmp_path / "u"),
                                            num_workers=1), records=records)
    model, vocabulary, _ = load_run_model(run, "cpu")
    for mode in ("S", "T2S"):
        _, pairs = load(bench, mode)
        options = ScoringOptions()
        from_audio = score_pairs(model, pairs, vocabulary, units_lookup(pairs, run, None), options)
        from_units = score_pairs(model, pairs, vocabulary,
                                          units_lookup(pairs, run, str(tmp_path / "u")), options)
        assert from_units[3] == 0  # nothing skipped
        np.testing.assert_allclose(from_units[0], from_audio[0], rtol=1e-6)
        np.testing.assert_allclose(from_units[1], from_audio[1], rtol=1e-6)
