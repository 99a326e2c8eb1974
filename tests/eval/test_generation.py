import math
import sys

import numpy as np
import pytest
import torch

from simslm.eval.generation import JudgeLM, auto_bleu, gen_ppl, gslm_auto_bleu2, sample_continuation, self_bleu2


def test_auto_bleu_is_slamkits_share_of_own_bigrams_that_repeat():
    # NLTK word tokens, case kept: "the dog the dog ran." -> the dog | dog the | the dog | dog ran | ran .
    assert auto_bleu(["the dog the dog ran."]) == pytest.approx(2 / 5)
    # "Hello, hello." -> Hello , | , hello | hello . : nothing repeats (case matters); "" has no bigram: 0.
    assert auto_bleu(["Hello, hello."]) == 0.0 and auto_bleu([""]) == 0.0
    assert auto_bleu(["the dog the dog ran.", "", "x y x y x y"]) == pytest.approx((2 / 5 + 0 + 1) / 3)


def test_gslm_auto_bleu2_counts_only_repeats_that_do_not_overlap():
    # "a a a": every unigram recurs elsewhere (1), but the bigrams at 0 and 1 overlap each other (0), where
    # slamkit's Auto-BLEU counts both bigrams as repeated.
    assert gslm_auto_bleu2(["a a a"], "arithmetic") == pytest.approx(0.5)
    assert gslm_auto_bleu2(["a a a"]) == 0.0 and auto_bleu(["a a a"]) == 1.0
    # "a b a b": unigrams 1; bigrams ab@0 and ab@2 recur apart, ba@1 does not: 2/3.
    assert gslm_auto_bleu2(["a b a b"]) == pytest.approx((2 / 3) ** 0.5)
    assert gslm_auto_bleu2(["a b a b"], "arithmetic") == pytest.approx(0.5 + 0.5 * 2 / 3)
    # At most one word scores 0; no repeated unigram gives 0 whatever the bigrams; all count in the mean.
    texts = ["a b a b", "", "x", "a b c"]
    assert gslm_auto_bleu2(texts) == pytest.approx((2 / 3) ** 0.5 / 4)
    assert gslm_auto_bleu2(texts, "arithmetic") == pytest.approx((0.5 + 1 / 3) / 4)


def test_self_bleu2_is_gslms_unigram_and_bigram_precision_without_brevity_penalty():
    texts = ["a b c", "a b d", "e f"]
    # "a b c" vs {"a b d", "e f"}: unigrams 2/3 (a, b), bigrams 1/2 (a b).
    # "a b d": the same; "e f" vs the others: no unigram matches -> 0.
    geometric = (2 * (2 / 3) ** 0.5 * (1 / 2) ** 0.5 + 0) / 3
    arithmetic = (2 * (0.5 * 2 / 3 + 0.5 * 1 / 2) + 0) / 3
    assert self_bleu2(texts) == pytest.approx(geometric)
    assert self_bleu2(texts, "arithmetic") == pytest.approx(arithmetic)
    # No brevity penalty: a short copy of a longer one is not punished for its length.
    assert self_bleu2(["a b", "a b c d e f"]) == pytest.approx((1.0 + (2 / 6) ** 0.5 * (1 / 5) ** 0.5) / 2)
    # Matching unigrams and no matching bigram: NLTK's method0 (GSLM's smoothing) counts the zero precision as the
    # smallest float, so the geometric mean is tiny, not 0; the arithmetic one is half the unigram precision. Only
    # no matching unigram at all gives 0.
    assert self_bleu2(["a b", "b a"]) == pytest.approx(math.sqrt(sys.float_info.min))
    assert self_bleu2(["a b", "b a"], "arithmetic") == pytest.approx(0.5)


class _FixedJudge:
    """A judge whose mean NLL per transcript is given: GenPPL's averaging alone is under test."""

    def __init__(self, nlls):
        self.nlls = nlls

    def mean_negative_log_likelihood(self, text):
        return self.nlls[text]


def test_gen_ppl_is_the_exp_of_the_mean_per_transcript_nll_as_slamkit():
    judge = _FixedJudge({"a": 1.0, "b": 3.0, "": float("nan")})
    assert gen_ppl(["a", "b"], judge)["gen_ppl"] == pytest.approx(np.exp(2.0))  # not token-weighted
    with_empty = gen_ppl(["a", "b", ""], judge)
    assert np.isnan(with_empty["gen_ppl"]) and with_empty["num_empty"] == 1  # slamkit's 0/0
    assert with_empty["gen_ppl_nonempty"] == pytest.approx(np.exp(2.0))


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


def test_a_continuation_may_take_the_ids_slamkit_allows_and_ends_at_eos(vocabulary, tiny_model):
    """slamkit's `SpeechLM.generate`: HF `generate` with `bad_words_ids` = the interleaving tokeniser's
    `get_ignore_tokens(modality)` and the model's EOS ending it. For speech that bans every text token and both
    markers but BOS and EOS; for text, the units. Its decoding drops pad, BOS, EOS and the markers."""
    from simslm.eval.generation import continuation_options, continuation_text, speech_prompt
    from simslm.sequences.vocabulary import SPEECH_MARKER, TEXT_MARKER

    tokenizer = vocabulary.tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert (bos, eos) == (1, 2)  # stories260K's SentencePiece model
    units = set(range(vocabulary.unit_offset, vocabulary.unit_offset + vocabulary.num_units))
    markers = {vocabulary.speech_id, vocabulary.text_id}
    speech = continuation_options(vocabulary, tiny_model, speech=True)
    text = continuation_options(vocabulary, tiny_model, speech=False)
    assert set(speech["allowed"].tolist()) == units | {bos, eos}
    every = set(range(len(vocabulary)))
    assert set(text["allowed"].tolist()) == every - units - {vocabulary.pad_id}  # text, both markers, BOS, EOS
    assert markers <= set(text["allowed"].tolist()) and vocabulary.pad_id not in speech["allowed"]
    before = tiny_model.generation_config.eos_token_id
    try:
        tiny_model.generation_config.eos_token_id = eos
        assert continuation_options(vocabulary, tiny_model, speech=True)["stop"] == (eos,)
        tiny_model.generation_config.eos_token_id = [eos, 7]  # Llama-3's instruct models name several
        assert continuation_options(vocabulary, tiny_model, speech=False)["stop"] == (eos, 7)
        # HF's NoBadWordsLogitsProcessor never bans the generation's EOS: a text token as one may end speech too.
        assert set(continuation_options(vocabulary, tiny_model, speech=True)["allowed"].tolist()) == \
            units | {bos, eos, 7}
    finally:
        tiny_model.generation_config.eos_token_id = before

    # Greedy: the first token drawn is the argmax over the allowed ids; made a stop, the continuation is empty,
    # and otherwise it never holds a stop.
    prompt = np.array([5, 6, 7])
    first = sample_continuation(tiny_model, prompt, max_new_tokens=1, allowed=speech["allowed"], temperature=0)
    assert len(first) == 1 and first[0] in units | {bos, eos}
    assert len(sample_continuation(tiny_model, prompt, max_new_tokens=10, allowed=speech["allowed"], temperature=0,
                                   stop=(int(first[0]),))) == 0
    stops = tuple(range(vocabulary.unit_offset, vocabulary.unit_offset + 16))
    lengths = []
    for seed in range(6):
        drawn = sample_continuation(tiny_model, prompt, max_new_tokens=40, allowed=speech["allowed"], top_k=0,
                                    seed=seed, stop=stops)
        assert not set(drawn.tolist()) & set(stops)
        lengths.append(len(drawn))
    assert min(lengths) < 40  # half the units end it: a draw of 40 without one would be a (1/2)^40 event

    # Speech continued in speech: the units and the speech marker (the speech-only `generate`, GenPPL's path); in
    # text, opened by the speech marker as `cm_generate` writes an interleaved input.
    assert speech_prompt(vocabulary, np.array([3, 4]), SPEECH_MARKER).tolist() == [
        vocabulary.unit_offset + 3, vocabulary.unit_offset + 4, vocabulary.speech_id]
    assert speech_prompt(vocabulary, np.array([3]), TEXT_MARKER).tolist() == [
        vocabulary.speech_id, vocabulary.unit_offset + 3, vocabulary.text_id]

    ids = tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    written = [bos, vocabulary.text_id, *ids[:2], vocabulary.speech_id, *ids[2:], eos, vocabulary.pad_id]
    assert continuation_text(vocabulary, np.array(written)) == tokenizer.decode(ids)
    assert continuation_text(vocabulary, np.array([0, *ids])) == tokenizer.decode([0, *ids])  # <unk> kept


def test_whisper_text_reaches_the_judge_as_it_comes(monkeypatch):
    """slamkit's asr_perplexity scores `res_text["text"]` as the pipeline gives it: Whisper's leading space
    stays, which a byte-level BPE judge reads as another first token (SmolLM2: " Once" 4027, "Once" 6403)."""
    import transformers.pipelines

    from simslm.eval.generation import WhisperASR

    heard, built = [], []
    # `from transformers import pipeline` reads the submodule's (transformers 5's lazy module).
    monkeypatch.setattr(transformers.pipelines, "pipeline", lambda task, model, **options: built.append(
        options) or (lambda inputs: heard.append(inputs) or {"text": " Once upon a time."}))
    samples = np.zeros(1600, dtype=np.float32)
    assert WhisperASR("whisper-large-v3-turbo")(samples) == " Once upon a time."
    assert heard[0]["sampling_rate"] == 16000 and heard[0]["raw"] is samples
    # On the evaluation's device, in half precision on a GPU as slamkit's `get_whisper_pipeline` runs it (it ran
    # on the CPU in fp32 whatever the device); fp32 on the CPU, as there.
    WhisperASR("whisper-large-v3-turbo", device="cuda:1")
    (dtype,) = (value for key, value in built[1].items() if key in ("dtype", "torch_dtype"))
    assert built[1]["device"] == "cuda:1" and dtype == torch.float16
    assert built[0]["device"] == "cpu" and torch.float32 in built[0].values()


def test_top_k_keeps_the_k_best_and_their_ties_as_hf_generate_does():
    """HF's `TopKLogitsWarper` (what `generate(top_k=...)` samples through) keeps every score not below the k-th:
    with k = 3 over 1.0, 0.9, 0.8, 0.8, ... the tie at the third place stays, so four tokens can be drawn."""
    import types

    from transformers import TopKLogitsWarper

    scores = torch.tensor([1.0, 0.9, 0.8, 0.8, 0.0, -0.5, -1.0, -1.0])

    class Fixed(torch.nn.Module):  # the same next-token scores whatever came before
        config = types.SimpleNamespace(max_position_embeddings=10_000)

        def forward(self, input_ids, use_cache=True, past_key_values=None):
            return types.SimpleNamespace(logits=scores.expand(1, input_ids.shape[1], -1), past_key_values=())

    drawn = sample_continuation(Fixed(), np.array([0]), max_new_tokens=400, allowed=(0, 8), top_k=3, seed=0)
    kept = TopKLogitsWarper(3)(None, scores[None])[0].isfinite()
    assert set(drawn.tolist()) == set(np.flatnonzero(kept.numpy()).tolist()) == {0, 1, 2, 3}

def test_judge_prefers_real_text_to_shuffled_words():
    judge = JudgeLM("stories260K")
    text = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    words = text.split()
    shuffled = " ".join(np.random.default_rng(0).permutation(words))
    assert gen_ppl([text], judge)["gen_ppl"] < gen_ppl([shuffled], judge)["gen_ppl"]
    assert gen_ppl(["", text], judge)["num_empty"] == 1
    # The judge scores text as its tokenizer gives it by default (tok512 adds no BOS), the first token unpredicted,
    # as slamkit's `get_llm_preplexity` does for a batch padded on the right (Llama-3.2-1B's tokenizer, its judge):
    # logits shifted by one against labels with the padding at -100, each transcript's NLL the mean over its own.
    texts = [text, shuffled, "Lily ran home.", "Lily"]  # one token: 0/0, NaN
    tokenizer = judge.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # slamkit's `get_llm`
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][2, -1] == 0 and batch["attention_mask"][3].sum() == 1
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        logits = judge.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                               reduction="none").view(len(texts), -1)
    kept = labels[:, 1:] != -100
    expected = (losses * kept).sum(1) / kept.sum(1)
    ours = [judge.mean_negative_log_likelihood(t) for t in texts]
    assert ours == pytest.approx(expected.tolist(), rel=1e-5, nan_ok=True)


@pytest.mark.slow
def test_generation_metrics_on_a_trained_run(trained_run):
    import json

    from simslm.eval.evaluate import EvalConfig, evaluate_run

    run, bench = trained_run
    evaluate_run(EvalConfig(run=str(run), bench=(f"generation={bench}",), num_generation_prompts=2))
    result = json.loads((run / "eval.json").read_text())["benchmarks"]["generation"]
    assert result["num_prompts"] == 2 and result["chain"]["asr"] == "pocketsphinx"
    # slamkit's settings: 3 s of each prompt's audio, 150 new tokens in speech and in text.
    assert {key: result["options"][key] for key in ("prompt_sec", "max_new_speech_tokens", "max_new_text_tokens",
                                                    "temperature", "top_k")} == {
        "prompt_sec": 3.0, "max_new_speech_tokens": 150, "max_new_text_tokens": 150, "temperature": 0.8, "top_k": 25}
    for key in ("speech_to_speech", "speech_to_text"):
        assert set(result[key]) >= {"auto_bleu2", "self_bleu2", "gen_ppl", "gen_ppl_nonempty", "num_empty"}
    # The chain applied to real speech: vocoded held-out endings, transcribed, judged.
    assert len(result["reference"]["resynthesised_real_speech"]["examples"]) == 2
    from simslm.eval.evaluate import format_results

    table = format_results({"generation": result}).splitlines()  # what the command prints
    assert table[1].startswith("generation S→S") and f"GenPPL {result['speech_to_speech']['gen_ppl']:.2f}" in table[1]
    assert table[2].startswith("generation S→T") and table[3].lstrip().startswith("reference")
    assert result["reference"]["real_text"]["gen_ppl"] < 100
