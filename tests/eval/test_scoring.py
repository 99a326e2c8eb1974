import dataclasses

import numpy as np
import pytest

from simslm.eval.layouts import Pair, Part
from simslm.eval.scoring import (
    ScoringOptions,
    accuracy_with_ci,
    difference_with_ci,
    encode_parts,
    pair_outcomes,
    score_pairs,
    sequence_log_likelihoods,
    side_scores,
)


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


@pytest.mark.parametrize(("speech_vocab", "concurrent"), [(False, 1), (True, 1), (False, 3)])
def test_batched_scores_equal_one_pair_at_a_time(tiny_model, vocabulary, speech_vocab, concurrent):
    rng = np.random.default_rng(0)
    sequences_, scored = [], []
    for _ in range(11):
        length = int(rng.integers(5, 60))
        sequences_.append(rng.integers(0, len(vocabulary), length))
        scored.append(rng.random(length - 1) < 0.7)
    sums, counts = sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary,
                                                     speech_vocab=speech_vocab, batch_size=4,
                                                     concurrent_batches=concurrent)
    for i, (tokens, mask) in enumerate(zip(sequences_, scored)):
        expected_sum, expected_count = _naive(tiny_model, tokens, mask, vocabulary, speech_vocab)
        assert counts[i] == expected_count
        assert sums[i] == pytest.approx(expected_sum, rel=1e-5, abs=1e-5)


def _count_shared_pairs(monkeypatch) -> list[int]:
    """Records how many pairs each shared-prefix batch holds."""
    from simslm.eval import scoring

    counted, original = [], scoring._score_shared
    monkeypatch.setattr(scoring, "_score_shared", lambda model, chosen, *rest: (counted.append(len(chosen)),
                                                                                original(model, chosen, *rest)))
    return counted


@pytest.mark.parametrize(("speech_vocab", "concurrent"), [(False, 1), (True, 1), (True, 2)])
def test_sides_with_a_shared_context_score_as_if_alone(tiny_model, vocabulary, speech_vocab, concurrent, monkeypatch):
    """The shared prefix runs once (its keys and values reused by both sides): the same numbers as the
    definition, whatever the prefix and side lengths in one batch, and pairs that share too little run alone."""
    from simslm.eval import scoring

    monkeypatch.setattr(scoring, "MIN_SHARED_TOKENS", 8)  # short sequences, so that the test stays fast
    counted = _count_shared_pairs(monkeypatch)
    sequences_, scored, pairs = _pairs_with_contexts(
        vocabulary, ((40, 12, 20), (9, 1, 30), (25, 15, 15), (3, 10, 10), (30, 0, 8), (60, 5, 2)), seed=1)
    sums, counts = sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary,
                                            speech_vocab=speech_vocab, batch_size=4, pairs=pairs,
                                            concurrent_batches=concurrent)
    # Shared: the contexts of 40, 9, 25 and 60 tokens. Alone: 3 tokens, and a side that is the whole context.
    assert sum(counted) == 4
    _assert_as_alone(tiny_model, sums, counts, sequences_, scored, vocabulary, speech_vocab)


def _pairs_with_contexts(vocabulary, shapes, seed: int):
    """Pairs of random sequences, each (shared context, first side, second side) long, the sides differing right
    after the context; and which targets each sequence scores."""
    rng = np.random.default_rng(seed)
    sequences_, scored, pairs = [], [], []
    for shared, first, second in shapes:
        context = rng.integers(0, len(vocabulary), shared)
        ends = [rng.integers(0, len(vocabulary), n) for n in (first, second)]
        if first and second:
            ends[1][0] = (ends[0][0] + 1) % len(vocabulary)
        pairs.append((len(sequences_), len(sequences_) + 1))
        for end in ends:
            sequences_.append(np.concatenate([context, end]))
            scored.append(rng.random(len(sequences_[-1]) - 1) < 0.8)
    return sequences_, scored, pairs


def _assert_as_alone(model, sums, counts, sequences_, scored, vocabulary, speech_vocab):
    for i, (tokens, mask) in enumerate(zip(sequences_, scored)):
        expected_sum, expected_count = _naive(model, tokens, mask, vocabulary, speech_vocab)
        assert counts[i] == expected_count
        assert sums[i] == pytest.approx(expected_sum, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2", "gpt_neox", "opt"])
def test_a_shared_context_scores_as_if_alone_in_other_architectures(vocabulary, architecture, monkeypatch):
    """The second pass after a kept cache reads the mask and the positions as each architecture does (rotary, learned
    positions, positions counted from the mask): every one scores each side as it scores the side alone."""
    import torch
    import transformers

    from simslm.eval import scoring

    monkeypatch.setattr(scoring, "MIN_SHARED_TOKENS", 8)
    counted = _count_shared_pairs(monkeypatch)
    size = dict(vocab_size=len(vocabulary), initializer_range=0.3)  # sharp attention: positions show in the scores
    config = {"qwen2": lambda: transformers.Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                                         num_hidden_layers=2, intermediate_size=64, **size),
              "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=128, **size),
              "gpt_neox": lambda: transformers.GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                                             intermediate_size=64, **size),
              "opt": lambda: transformers.OPTConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                                    ffn_dim=64, word_embed_proj_dim=32, **size)}[architecture]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    sequences_, scored, pairs = _pairs_with_contexts(vocabulary, ((40, 12, 20), (9, 1, 30), (25, 15, 15)), seed=2)
    sums, counts = sequence_log_likelihoods(model, sequences_, scored, vocabulary=vocabulary, batch_size=4,
                                            pairs=pairs)
    assert sum(counted) == 3
    _assert_as_alone(model, sums, counts, sequences_, scored, vocabulary, False)


def test_only_a_context_long_enough_to_pay_for_a_second_pass_is_shared(tiny_model, vocabulary, monkeypatch):
    """sBLIMP-like pairs, which share a few words, run alone: at the old threshold of 8 tokens they scored at
    0.71x; a tSC-like context of 64 tokens or more runs once."""
    from simslm.eval import scoring

    counted = _count_shared_pairs(monkeypatch)
    rng = np.random.default_rng(2)
    sequences_, pairs = [], []
    for shared in (scoring.MIN_SHARED_TOKENS - 1, scoring.MIN_SHARED_TOKENS, 100):
        context = rng.integers(0, len(vocabulary), shared)
        first, second = rng.integers(0, len(vocabulary), (2, 10))
        second[0] = (first[0] + 1) % len(vocabulary)
        pairs.append((len(sequences_), len(sequences_) + 1))
        sequences_ += [np.concatenate([context, first]), np.concatenate([context, second])]
    scored = [np.ones(len(tokens) - 1, dtype=bool) for tokens in sequences_]
    sums, _ = sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary, batch_size=8,
                                       pairs=pairs)
    assert sum(counted) == 2
    alone, _ = sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary, batch_size=8)
    np.testing.assert_allclose(sums, alone, rtol=1e-5, atol=1e-5)


def test_a_batch_out_of_memory_is_scored_in_halves_with_the_same_numbers(tiny_model, vocabulary, monkeypatch,
                                                                        capsys):
    """A batch the device cannot hold (a GPU smaller than --batch-size was chosen for) is scored again in halves,
    and later batches at the size that fitted: the same numbers, a warning once per halving, where the allocator's
    error used to end the evaluation. A single sequence that does not fit still raises it."""
    import torch

    from simslm.eval import scoring

    monkeypatch.setattr(scoring, "MIN_SHARED_TOKENS", 8)

    class SmallDevice:
        """The model, on a device that holds at most `rows` sequences at once."""

        def __init__(self, model, rows):
            self.model, self.rows, self.forward, self.sizes = model, rows, model.forward, []

        def eval(self):
            return self

        def __call__(self, **arguments):
            self.sizes.append(len(arguments["input_ids"]))
            if len(arguments["input_ids"]) > self.rows:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.model(**arguments)

    sequences_, scored, pairs = _pairs_with_contexts(
        vocabulary, ((40, 12, 20), (9, 1, 30), (25, 15, 15), (3, 10, 10), (30, 0, 8), (60, 5, 2)), seed=1)
    sequences_ += [np.arange(1, n) % len(vocabulary) for n in range(10, 30, 2)]
    scored += [np.ones(len(tokens) - 1, dtype=bool) for tokens in sequences_[len(scored):]]
    expected, _ = sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary, batch_size=8,
                                           pairs=pairs)
    small = SmallDevice(tiny_model, rows=3)
    sums, _ = sequence_log_likelihoods(small, sequences_, scored, vocabulary=vocabulary, batch_size=8, pairs=pairs)
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "out of memory" in line]
    # Sequences alone: 8 fail, then 4, then 2 fit; pairs (4 a batch, both sides in pass 2): 4, then 2, then 1.
    assert len(warnings) == 4 and "going on with 2" in warnings[1] and "going on with 1" in warnings[3]
    assert small.sizes.count(8) == 1  # later batches start at the size that fitted, without failing first
    with pytest.raises(torch.OutOfMemoryError):
        sequence_log_likelihoods(SmallDevice(tiny_model, rows=0), sequences_, scored, vocabulary=vocabulary,
                                 batch_size=8, pairs=pairs)


def test_concurrent_batches_give_torch_its_threads_back_even_when_a_batch_fails(tiny_model, vocabulary):
    """Batches scored at once split torch's threads; after the scoring, or a failure in any batch, the process
    has its own thread count again, and the error is the batch's own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sequences_ = [np.arange(1, 20) % len(vocabulary) for _ in range(6)]
        scored = [np.ones(18, dtype=bool)] * 6
        sums, _ = sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary, batch_size=2,
                                           concurrent_batches=2)
        assert torch.get_num_threads() == 2 and np.allclose(sums, sums[0])
        sequences_[3] = np.array([len(vocabulary) + 5, 1, 2])  # an id past the embedding: that batch raises
        with pytest.raises(IndexError):
            sequence_log_likelihoods(tiny_model, sequences_, scored, vocabulary=vocabulary, batch_size=2,
                                     concurrent_batches=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_a_one_thread_process_scores_one_batch_at_a_time(tiny_model, vocabulary):
    """A sweep's run has one torch thread: asking for two batches at once then runs them in turn, in the
    calling thread, rather than oversubscribing its core."""
    import threading

    import torch

    class Recording:
        def __init__(self, model):
            self.model, self.threads = model, set()

        def eval(self):
            return self

        def __call__(self, **arguments):
            self.threads.add(threading.current_thread().name)
            return self.model(**arguments)

    sequences_ = [np.arange(1, 12) for _ in range(4)]
    scored = [np.ones(10, dtype=bool)] * 4
    threads = torch.get_num_threads()
    try:
        for count, allowed in ((1, {threading.current_thread().name}), (2, {"scoring_0", "scoring_1"})):
            torch.set_num_threads(count)
            model = Recording(tiny_model)
            sequence_log_likelihoods(model, sequences_, scored, vocabulary=vocabulary, batch_size=1,
                                     concurrent_batches=2)
            assert model.threads and model.threads <= allowed  # which pool threads take the batches is the pool's
    finally:
        torch.set_num_threads(threads)


def test_ties_count_half_and_means_and_sums_differ():
    outcomes = pair_outcomes(np.array([1.0, 2.0, 3.0, -1.0]), np.array([0.5, 2.0, 4.0, -1.0]))
    assert outcomes.tolist() == [1.0, 0.5, 0.0, 0.5]
    assert accuracy_with_ci(outcomes).accuracy == pytest.approx(0.5)
    sums, counts = np.array([-10.0, -4.0]), np.array([10, 2])
    assert side_scores(sums, counts, "mean").tolist() == [-1.0, -2.0]
    assert side_scores(sums, counts, "sum").tolist() == [-10.0, -4.0]


def test_macro_aggregation_averages_groups_not_pairs():
    outcomes = np.array([1.0] * 9 + [0.0] + [0.0, 0.0])
    groups = ["big"] * 10 + ["small"] * 2
    pairs = accuracy_with_ci(outcomes, groups, aggregation="pairs")
    macro = accuracy_with_ci(outcomes, groups, aggregation="macro")
    assert pairs.accuracy == pytest.approx(9 / 12)
    assert macro.accuracy == pytest.approx((0.9 + 0.0) / 2)
    assert macro.per_group["big"] == {"accuracy": pytest.approx(0.9), "num_pairs": 10}


@pytest.mark.parametrize("aggregation", ["pairs", "macro"])
def test_bootstrap_intervals_cover_the_true_rate(aggregation):
    true_rate, covered, trials = 0.7, 0, 200
    rng = np.random.default_rng(1)
    for trial in range(trials):
        outcomes = (rng.random(300) < true_rate).astype(float)
        groups = [f"g{i % 5}" for i in range(300)]
        result = accuracy_with_ci(outcomes, groups, aggregation=aggregation, num_resamples=500, seed=trial)
        covered += result.ci_low <= true_rate <= result.ci_high
        assert result.ci_low <= result.accuracy <= result.ci_high
    assert 0.90 <= covered / trials <= 0.99  # nominal 95%


def test_a_95_percent_interval_is_as_wide_as_the_normal_one_over_many_pairs():
    """The percentile bootstrap's central 95% of the resampled accuracies: over many pairs that is the normal
    interval p +- 1.96 sqrt(p (1 - p) / n), which the coverage test above cannot tell from a 97.5% one."""
    n, rate = 1600, 0.7
    outcomes = np.r_[np.ones(int(n * rate)), np.zeros(n - int(n * rate))]
    result = accuracy_with_ci(outcomes, num_resamples=4000, seed=0)
    normal = 2 * 1.96 * np.sqrt(rate * (1 - rate) / n)
    assert result.ci_high - result.ci_low == pytest.approx(normal, rel=0.06)
    assert (result.ci_low + result.ci_high) / 2 == pytest.approx(rate, abs=0.003)

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


def _naive_side(model, parts, vocabulary, units_of, *, scored_part, max_length=128):
    """Mean log-likelihood of one part's tokens, from a sequence built by hand."""
    tokens, owners = encode_parts(parts, vocabulary, units_of, max_length=max_length)
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
    options = ScoringOptions(preset="pmi")
    scores = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__, options)
    positive, negative, without_baseline = scores.positive, scores.negative, scores.without_baseline
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
    # The ending preset is the with-context part alone; the baseline changes the scores.
    plain = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__, ScoringOptions(preset="ending"))
    assert plain[0][0] == pytest.approx(_naive_side(tiny_model, (context, sides["p"]), vocabulary,
                                                   units.__getitem__, scored_part=1), abs=1e-5)
    assert plain[0][0] != pytest.approx(positive[0], abs=1e-3)
    assert without_baseline[0][0] == plain[0][0] and without_baseline[1][0] == plain[1][0]


def test_no_context_baseline_leaves_items_without_context_alone(tiny_model, vocabulary):
    units = {"p": np.array([1, 2, 3, 4]), "n": np.array([4, 3, 2, 1])}
    pair = Pair("0", "all", (Part("speech", audio="p"),), (Part("speech", audio="n"),))
    plain = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__, ScoringOptions(preset="ending"))
    based = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__, ScoringOptions(preset="pmi"))
    assert based[0].tolist() == plain[0].tolist() and based[1].tolist() == plain[1].tolist()
    assert based.without_baseline is None
    with pytest.raises(ValueError, match="--preset must be one of reference, ending, pmi"):
        ScoringOptions(preset="baseline")


def _naive_mean(model, string, vocabulary):
    """slamkit's log_likelihood: mean log-probability of every token after the first of the tokenised string."""
    tokens = np.asarray(vocabulary.tokenizer(string, add_special_tokens=True)["input_ids"])
    total, count = _naive(model, tokens, np.ones(len(tokens) - 1, bool), vocabulary, speech_vocab=False)
    return total / count


def test_the_reference_preset_scores_the_sequences_slamkit_writes(tiny_model, vocabulary):
    rng = np.random.default_rng(2)
    units = {name: rng.integers(0, vocabulary.num_units, int(rng.integers(5, 15))) for name in ("c", "p", "n")}
    units[("c", "p")], units[("c", "n")] = (rng.integers(0, vocabulary.num_units, 20) for _ in range(2))
    unit_string = lambda key: "".join(f"<unit_{u}>" for u in units[key])  # noqa: E731
    context, endings = "Tom went to the park.", {"p": "He played there.", "n": "The cat sat down."}
    # The four cross-modal modes, each side written out by hand from slamkit's definitions:
    # a marker at the start and at each switch, text parts joined with nothing between them,
    # a spoken context and ending encoded as one recording (its own units, not the parts').
    modes = {
        "S": (lambda e: (Part("speech", audio="c"), Part("speech", audio=e)),
              lambda e: "<speech>" + unit_string(("c", e))),
        "S2T": (lambda e: (Part("speech", audio="c"), Part("text", endings[e])),
                lambda e: "<speech>" + unit_string("c") + "<text>" + endings[e]),
        "T2S": (lambda e: (Part("text", context), Part("speech", audio=e)),
                lambda e: "<text>" + context + "<speech>" + unit_string(e)),
        "T": (lambda e: (Part("text", context), Part("text", endings[e])),
              lambda e: "<text>" + context + endings[e]),
        # A speech-only item (sBLIMP, tSC): its units alone, no marker.
        "speech-only": (lambda e: (Part("speech", audio=e),), lambda e: unit_string(e)),
    }
    for mode, (parts, written) in modes.items():
        pair = Pair(mode, "all", parts("p"), parts("n"))
        scores = score_pairs(tiny_model, [pair], vocabulary, units.__getitem__, ScoringOptions())
        assert scores.positive[0] == pytest.approx(_naive_mean(tiny_model, written("p"), vocabulary), abs=1e-5), mode
        assert scores.negative[0] == pytest.approx(_naive_mean(tiny_model, written("n"), vocabulary), abs=1e-5), mode


def _long_and_short_pairs(vocabulary, positions):
    rng = np.random.default_rng(4)
    units = {"long": rng.integers(0, vocabulary.num_units, positions + 40), "short": np.array([1, 2, 3]),
             "fits": rng.integers(0, vocabulary.num_units, positions - 10)}
    pairs = [Pair("0", "all", (Part("speech", audio="long"),), (Part("speech", audio="short"),)),
             Pair("1", "all", (Part("speech", audio="fits"),), (Part("speech", audio="short"),))]
    return units, pairs


@pytest.mark.parametrize("preset", ["reference", "ending"])
def test_sides_longer_than_the_context_are_counted_and_by_default_scored_whole_as_slamkit_does(tiny_model, vocabulary,
                                                                                               preset):
    """slamkit's `log_likelihood` truncates nothing: a rotary model scores every token, past its positions."""
    positions = int(tiny_model.config.max_position_embeddings)  # 128
    units, pairs = _long_and_short_pairs(vocabulary, positions)
    scores = score_pairs(tiny_model, pairs, vocabulary, units.__getitem__, ScoringOptions(preset=preset))
    assert scores.num_cut == 1
    if preset == "reference":  # the sequence slamkit writes, every token after the first
        expected = _naive_mean(tiny_model, "".join(f"<unit_{u}>" for u in units["long"]), vocabulary)
    else:
        expected = _naive_side(tiny_model, (Part("speech", audio="long"),), vocabulary, units.__getitem__,
                               scored_part=0, max_length=None)
    assert scores.positive[0] == pytest.approx(expected, abs=1e-5)


def test_a_model_with_learned_positions_is_not_asked_past_them(vocabulary):
    from transformers import GPT2Config, GPT2LMHeadModel

    from simslm.eval.scoring import LongSidesError, has_rotary_positions

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocabulary), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    assert not has_rotary_positions(model.eval())
    units, pairs = _long_and_short_pairs(vocabulary, 64)
    with pytest.raises(LongSidesError, match="1 of 4 sides are longer than the model's 64 positions, which it learned"):
        score_pairs(model, pairs, vocabulary, units.__getitem__, ScoringOptions())
    scores = score_pairs(model, pairs, vocabulary, units.__getitem__, ScoringOptions(long_sides="cut"))
    assert scores.num_cut == 1 and np.isfinite(scores.positive).all()


@pytest.mark.parametrize("preset", ["reference", "ending"])
def test_with_long_sides_cut_they_are_scored_on_their_latest_tokens(tiny_model, vocabulary, preset):
    positions = int(tiny_model.config.max_position_embeddings)  # 128
    units, pairs = _long_and_short_pairs(vocabulary, positions)
    scores = score_pairs(tiny_model, pairs, vocabulary, units.__getitem__,
                         ScoringOptions(preset=preset, long_sides="cut"))
    assert scores.num_cut == 1
    # The long side is scored as its last `positions` tokens would be alone.
    cut = Pair("2", "all", (Part("speech", audio="end"),), (Part("speech", audio="short"),))
    ending = {**units, "end": units["long"][-(positions - (0 if preset == "reference" else 2)):]}
    if preset == "reference":
        alone = score_pairs(tiny_model, [cut], vocabulary, ending.__getitem__, ScoringOptions(preset=preset))
        assert alone.num_cut == 0
        assert scores.positive[0] == pytest.approx(alone.positive[0], abs=1e-5)
    else:  # BOS and the marker stay in front of the latest units
        assert scores.positive[0] == pytest.approx(
            _naive_side(tiny_model, (Part("speech", audio="end"),), vocabulary, ending.__getitem__, scored_part=0),
            abs=1e-5)


def test_outcomes_are_stored_by_group_and_pair_up_for_a_paired_difference():
    groups = ["b", "a", "b", "a", "c", "c"]
    first = accuracy_with_ci(np.array([1.0, 0.0, 1.0, 1.0, 0.5, 1.0]), groups, aggregation="macro")
    assert first.outcomes == [0.0, 1.0, 1.0, 1.0, 0.5, 1.0] and first.groups() == ["a", "a", "b", "b", "c", "c"]
    # Against itself: exactly zero, with a zero-width interval (the pairs move together).
    assert difference_with_ci(first, first) == (0.0, 0.0, 0.0)
    # A model right on every item a second one gets wrong: the difference and its interval are the
    # macro accuracies' difference and an interval around it; paired, so narrower than either accuracy's.
    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.6).astype(float)
    better = base.copy()
    better[rng.choice(np.flatnonzero(base == 0), 40, replace=False)] = 1.0
    labels = [f"g{i % 4}" for i in range(400)]
    a, b = accuracy_with_ci(better, labels, aggregation="macro"), accuracy_with_ci(base, labels, aggregation="macro")
    difference, low, high = difference_with_ci(a, b)
    assert difference == pytest.approx(a.accuracy - b.accuracy) == pytest.approx(0.1)
    assert 0 < low < difference < high and high - low < a.ci_high - a.ci_low
    # Not the same items, or results written before outcomes were stored: no interval rather than a wrong one.
    other = accuracy_with_ci(base[:399], labels[:399], aggregation="macro")
    assert difference_with_ci(a, other) is None
    assert difference_with_ci(a, dataclasses.replace(b, outcomes=None)) is None


def _zerospeech_score(table):
    """ZeroSpeech 2021's score written out from its definition (`evaluate_by_pair`, then the mean of the by-pair
    table): rows of (item, voice, outcome); each item's outcomes averaged over its voices, then the items."""
    by_item = {}
    for item, _, outcome in table:
        by_item.setdefault(item, []).append(outcome)
    return sum(sum(values) / len(values) for values in by_item.values()) / len(by_item)


def test_items_aggregation_averages_an_items_voices_before_the_mean_over_items():
    # Item a is spoken in three voices and wrong in two; b and c in one voice each, right. The pair mean
    # weighs a three times; ZeroSpeech weighs every item once.
    table = [("a", "v1", 1.0), ("a", "v2", 0.0), ("a", "v3", 0.0), ("b", "v1", 1.0), ("c", "v2", 0.5)]
    outcomes = np.array([outcome for *_, outcome in table])
    items, groups = [item for item, *_ in table], ["g1", "g1", "g1", "g2", "g2"]
    result = accuracy_with_ci(outcomes, groups, items=items, aggregation="items", num_resamples=200)
    assert result.accuracy == pytest.approx(_zerospeech_score(table)) == pytest.approx((1 / 3 + 1 + 0.5) / 3)
    assert accuracy_with_ci(outcomes, groups, items=items, aggregation="pairs").accuracy == pytest.approx(2.5 / 5)
    assert result.num_pairs == 5 and result.num_items == 3
    assert result.per_group == {"g1": {"accuracy": pytest.approx(1 / 3), "num_pairs": 3, "num_items": 1},
                                "g2": {"accuracy": pytest.approx(0.75), "num_pairs": 2, "num_items": 2}}
    # Macro over groups is the mean of ZeroSpeech's by-type table, itself over items.
    macro = accuracy_with_ci(outcomes, groups, items=items, aggregation="macro")
    assert macro.accuracy == pytest.approx((1 / 3 + 0.75) / 2)
    # The stored outcomes are the items' own, so two models' results still pair up item by item.
    assert result.outcomes == pytest.approx([1 / 3, 1.0, 0.5]) and result.groups() == ["g1", "g2", "g2"]
    assert difference_with_ci(result, result) == (0.0, 0.0, 0.0)
    # The interval resamples items: of three items, at most three distinct means can be drawn per position.
    assert result.ci_low >= 1 / 9 and result.ci_high <= 1.0


def test_an_item_split_across_groups_is_refused():
    with pytest.raises(ValueError, match="item a has pairs in more than one group"):
        accuracy_with_ci(np.array([1.0, 0.0]), ["x", "y"], items=["a", "a"], aggregation="items")
