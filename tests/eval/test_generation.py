import numpy as np
import pytest

from simslm.eval.generation import JudgeLM, auto_bleu, gen_ppl, sample_continuation, self_bleu, sentence_bleu


def test_auto_bleu_is_the_share_of_own_bigrams_that_repeat():
    # "the cat the cat sat": bigrams (the cat) x2, (cat the), (cat sat) -> 2 of 4 repeat.
    assert auto_bleu(["the cat the cat sat"]) == pytest.approx(0.5)
    assert auto_bleu(["a b c d"]) == 0.0
    assert auto_bleu(["x y x y x y"]) == pytest.approx(1.0)
    assert auto_bleu(["the cat the cat sat", "a b c d"]) == pytest.approx(0.25)


def test_bleu_and_self_bleu():
    words = "the little dog ran to the park".split()
    assert sentence_bleu(words, [words]) == pytest.approx(1.0)
    assert sentence_bleu(words, ["zebra quantum violin".split()]) == 0.0
    same = ["the dog ran home"] * 3
    diverse = ["the dog ran home", "a cat sat on a mat", "birds sing in spring"]
    assert self_bleu(same) == pytest.approx(1.0)
    assert self_bleu(diverse) < 0.2


def test_continuation_samples_only_allowed_tokens_and_is_seeded():
    from simslm.model import build_family_model

    model = build_family_model(1, 100, seed=0, context_length=64)
    prompt = np.array([1, 5, 6, 7])
    first = sample_continuation(model, prompt, max_new_tokens=20, allowed=(40, 60), seed=3)
    again = sample_continuation(model, prompt, max_new_tokens=20, allowed=(40, 60), seed=3)
    other = sample_continuation(model, prompt, max_new_tokens=20, allowed=(40, 60), seed=4)
    assert len(first) == 20 and ((first >= 40) & (first < 60)).all()
    assert (first == again).all() and not (first == other).all()
    long = sample_continuation(model, prompt, max_new_tokens=500, allowed=(0, 100), seed=0)
    assert len(prompt) + len(long) == 64  # stops at the model's context


def test_judge_prefers_real_text_to_shuffled_words():
    judge = JudgeLM("stories260K")
    text = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    words = text.split()
    shuffled = " ".join(np.random.default_rng(0).permutation(words))
    assert gen_ppl([text], judge)["gen_ppl"] < gen_ppl([shuffled], judge)["gen_ppl"]
    assert gen_ppl(["", text], judge)["num_empty"] == 1


def test_generation_metrics_on_a_trained_run(trained_run):
    import json

    from simslm.eval.evaluate import EvalConfig, evaluate_run

    run, bench = trained_run
    evaluate_run(EvalConfig(run=str(run), bench=(f"generation={bench}",), num_generation_prompts=2))
    result = json.loads((run / "eval.json").read_text())["benchmarks"]["generation"]
    assert result["num_prompts"] == 2 and result["chain"]["asr"] == "pocketsphinx"
    for key in ("speech_to_speech", "speech_to_text"):
        assert set(result[key]) >= {"auto_bleu2", "self_bleu4", "gen_ppl", "num_empty"}
    # The chain applied to real speech: vocoded held-out endings, transcribed, judged.
    assert len(result["reference"]["resynthesised_real_speech"]["examples"]) == 2
    assert result["reference"]["real_text"]["gen_ppl"] < 100
