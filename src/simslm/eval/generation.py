"""Generation: speech and cross-modal continuation, Auto-BLEU, Self-BLEU and GenPPL.

GenPPL is the perplexity a judge text LM gives to transcripts of generated speech, so it
measures the whole chain: SLM -> unit vocoder -> ASR -> judge. The real chain (unit
HiFi-GAN, Whisper, Llama-3.2-1B) needs weights this machine cannot fetch; offline the
chain is a log-mel inversion vocoder (Griffin-Lim) for `logmel` units, pocketsphinx ASR
and a local judge (stories260K or SmolLM2). Its numbers are not comparable with the
paper's; every result therefore carries the same chain applied to real held-out speech
(`reference`), which says how much of the score the chain itself costs.
"""

from __future__ import annotations

import collections
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simslm import jobs, machine
from simslm.eval.layouts import load
from simslm.sequences.vocabulary import SPEECH_MARKER, TEXT_MARKER, Vocabulary
from simslm.speech import audio
from simslm.units.vocoder import LogMelInversionVocoder

# --- sampling ---------------------------------------------------------------------------------


def sample_continuation(model, prompt: np.ndarray, *, max_new_tokens: int, allowed: tuple[int, int] | np.ndarray,
                        temperature: float = 1.0, top_k: int | None = 50, seed: int = 0,
                        device: str = "cpu", stop: tuple[int, ...] = ()) -> np.ndarray:
    """Sample tokens after `prompt`, only from the ids `allowed` (a range [start, end), or an array of the ids),
    until one of `stop` is drawn (left out, as slamkit's decoding drops EOS) or `max_new_tokens` are sampled.

    Each step is HF `generate`'s sampling with `bad_words_ids` for the ids not allowed: temperature, then top-k
    (ties with the k-th kept), then a draw from the softmax."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.tensor(prompt[None], dtype=torch.long, device=device)
    candidates = (torch.arange(allowed[0], allowed[1]) if isinstance(allowed, tuple)
                  else torch.as_tensor(np.asarray(allowed, dtype=np.int64))).to(device)
    max_length = int(model.config.max_position_embeddings)
    new: list[int] = []
    past = None
    # transformers renamed `past_key_values` to `cache` (5.2x); accept either.
    cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if ids.shape[1] + len(new) >= max_length:
                break
            step_input = ids if past is None else torch.tensor([[new[-1]]], device=device)
            output = model(input_ids=step_input, use_cache=True, **({cache_argument: past} if past is not None else {}))
            past = getattr(output, "cache", None) or output.past_key_values
            logits = output.logits[0, -1, candidates].float().cpu()
            if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()) or \
                    not bool(torch.isfinite(logits).any()):  # a -inf alone is a token ruled out, not a fault
                # torch.multinomial's "probability tensor contains either `inf`, `nan`" named neither the model
                # nor the cause; a greedy argmax of NaNs took the first token.
                raise ValueError("the model's next-token scores are not finite numbers; are its weights finite? "
                                 "(a run whose last update diverged, a model converted from another precision)")
            if temperature <= 0:
                choice = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k:
                    threshold = torch.topk(logits, min(top_k, len(logits))).values[-1]
                    logits = logits.masked_fill(logits < threshold, float("-inf"))
                choice = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            token = int(candidates[choice])
            if token in stop:
                break
            new.append(token)
    return np.asarray(new, dtype=np.int64)


def continuation_options(vocabulary: Vocabulary, model, speech: bool) -> dict[str, Any]:
    """`sample_continuation`'s `allowed` and `stop` for a continuation in speech or in text, as slamkit's
    `SpeechLM.generate` has them: HF `generate` with `bad_words_ids` from the interleaving tokeniser's
    `get_ignore_tokens(modality)` (speech bans every text token and both markers but BOS and EOS; text bans the
    units) and the model's EOS (`generation_config.eos_token_id`) ending it, never banned. simslm's pad, a token of
    its own (slamkit's is id 0, a real text token), is never allowed."""
    tokenizer = vocabulary.tokenizer
    specials = {token for token in (tokenizer.bos_token_id, tokenizer.eos_token_id) if token is not None}
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    stop = tuple(eos) if isinstance(eos, (list, tuple)) else () if eos is None else (int(eos),)
    units = set(range(vocabulary.unit_offset, vocabulary.unit_offset + vocabulary.num_units))
    if speech:
        allowed = units | specials
    else:
        allowed = (set(range(len(vocabulary))) - units) | {vocabulary.speech_id, vocabulary.text_id} | specials
    allowed.discard(vocabulary.pad_id)
    # HF's `NoBadWordsLogitsProcessor` never bans an EOS of the generation's: one that is no BOS or EOS of the
    # tokenizer (Llama-3's instruct models end at three ids) may end speech as well.
    allowed |= set(stop)
    return {"allowed": np.asarray(sorted(allowed), dtype=np.int64), "stop": stop}


def continuation_text(vocabulary: Vocabulary, tokens: np.ndarray) -> str:
    """A text continuation as slamkit's `decode_sample` gives it: BOS, EOS, pad and both markers dropped, the
    rest decoded as it is (other special tokens kept), then stripped. (slamkit also drops id 0, its pad: "!" in
    Qwen's and Llama's vocabularies; kept here.)"""
    tokenizer = vocabulary.tokenizer
    dropped = {tokenizer.bos_token_id, tokenizer.eos_token_id, vocabulary.pad_id, vocabulary.speech_id,
               vocabulary.text_id}
    return tokenizer.decode([int(t) for t in tokens if int(t) not in dropped], skip_special_tokens=False).strip()


# --- repetition and diversity -----------------------------------------------------------------


def auto_bleu(transcripts: list[str], n: int = 2) -> float:
    """Auto-BLEU as slamkit computes it (`calc_auto_bleu`, mean over transcripts): high values mean loops.

    Per transcript: its NLTK word tokens (case kept, punctuation as tokens) form n-grams, and
    the score is the share of them that occur again elsewhere in it; a transcript with no
    n-gram (an empty one, say) scores 0 and still counts in the mean.
    """
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer, scores = NLTKWordTokenizer(), []
    for transcript in transcripts:
        tokens = tokenizer.tokenize(transcript)
        grams = [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        counts = collections.Counter(grams)
        scores.append(sum(counts[gram] > 1 for gram in grams) / len(grams) if grams else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def gslm_auto_bleu2(transcripts: list[str], averaging: str = "geometric") -> float:
    """GSLM's Auto-BLEU2 (`self_auto_bleu.py`'s `auto_bleu`, weights 1/2 and 1/2), which slamkit's is not.

    Per transcript (whitespace tokens, as GSLM's ASR output): for n = 1 and 2, the share of its
    n-grams that occur again at a position that does not overlap them, so "a a a" repeats its
    unigrams but not its bigrams (slamkit counts any other occurrence); the two shares combined
    geometrically (no smoothing: no repeated unigram gives 0) or arithmetically with weights 1/2;
    0 for a transcript of at most one word. The mean over transcripts.
    """
    scores = []
    for transcript in transcripts:
        words = transcript.strip().split()
        if len(words) <= 1:
            scores.append(0.0)
            continue
        shares = []
        for n in (1, 2):
            starts: dict[tuple[str, ...], list[int]] = collections.defaultdict(list)
            grams = [tuple(words[p:p + n]) for p in range(len(words) - n + 1)]
            for p, gram in enumerate(grams):
                starts[gram].append(p)
            # Another occurrence that ends before p or starts at p + n or later; the starts are sorted.
            shares.append(sum(starts[gram][0] <= p - n or starts[gram][-1] >= p + n
                              for p, gram in enumerate(grams)) / len(grams))
        scores.append(0.5 * sum(shares) if averaging == "arithmetic" else math.prod(s ** 0.5 for s in shares))
    return float(np.mean(scores)) if scores else float("nan")


def self_bleu2(transcripts: list[str], averaging: str = "geometric") -> float:
    """GSLM's Self-BLEU2 (`self_auto_bleu.py`): high values mean little diversity across generations.

    Each transcript (whitespace tokens, as GSLM's ASR output) is scored against all the
    others with clipped unigram and bigram precisions weighted 1/2 each and no brevity
    penalty, combined geometrically (NLTK's method0: a zero precision counts as the smallest
    float) or arithmetically; 0 when no unigram matches. The mean over transcripts.
    """
    from nltk.translate.bleu_score import modified_precision

    tokenized = [transcript.strip().split() for transcript in transcripts]
    if len(tokenized) < 2:
        return float("nan")
    scores = []
    for i, hypothesis in enumerate(tokenized):
        others = tokenized[:i] + tokenized[i + 1:]
        precisions = [modified_precision(others, hypothesis, n) for n in (1, 2)]
        if precisions[0].numerator == 0:
            scores.append(0.0)
        elif averaging == "arithmetic":
            scores.append(sum(0.5 * float(p) for p in precisions))
        else:
            scores.append(math.exp(sum(0.5 * math.log(float(p) if p.numerator else sys.float_info.min)
                                       for p in precisions)))
    return float(np.mean(scores))


# --- vocoders, ASR, judges (registries) ---------------------------------------------------------


class PocketsphinxASR:
    """pocketsphinx's bundled US English acoustic model and language model (offline; on the CPU, whatever
    `device` the evaluation runs on)."""

    def __init__(self, device: str = "cpu"):
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=audio.TARGET_SAMPLE_RATE, loglevel="FATAL")

    def __call__(self, samples: np.ndarray) -> str:
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""


class WhisperASR:
    """Whisper through transformers' ASR pipeline (the paper's chain); needs local weights.

    On the evaluation's device, in half precision on a GPU and fp32 on the CPU, as slamkit's `get_whisper_pipeline`
    runs it: on the CPU beside a GPU, whisper-large-v3-turbo took seconds a transcript, and its fp32 transcripts
    need not be the fp16 ones slamkit's GenPPL scores."""

    def __init__(self, model_path: str, device: str = "cpu"):
        import torch
        from transformers import pipeline

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self._pipeline = pipeline("automatic-speech-recognition", model=model_path, device=device,
                                  **machine.weights_dtype(dtype))

    def __call__(self, samples: np.ndarray) -> str:
        # Not stripped: slamkit's asr_perplexity hands Whisper's text to the judge as it comes, with its leading
        # space, which Llama-3's tokenizer reads as another first token (" Once", not "Once").
        return self._pipeline({"raw": samples, "sampling_rate": audio.TARGET_SAMPLE_RATE})["text"]


class JudgeLM:
    """A text LM that scores transcripts: stories260K, SmolLM2 (.gguf), Llama-3.2-1B, any HF causal LM."""

    def __init__(self, source: str, device: str = "cpu"):
        from simslm.model import load_base_model
        from simslm.sequences.vocabulary import load_base_tokenizer

        # fp32, as slamkit's `get_llm` loads it (transformers 4's default), on the evaluation's device as there
        self.model = load_base_model(source).to(device).eval()
        self.tokenizer = load_base_tokenizer(source if not source.endswith(".bin") else "stories260K")
        self.source = source

    def mean_negative_log_likelihood(self, text: str) -> float:
        """Mean NLL (nats) of the text's tokens as the judge's tokenizer gives them by default (with its BOS,
        which is not itself predicted); NaN when there is no token to predict (slamkit's 0/0)."""
        import torch

        ids = self.tokenizer(text)["input_ids"]
        if len(ids) < 2:
            return float("nan")
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0, :-1].float()
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:], device=logits.device)))


ASRS: dict[str, Callable[..., Callable[[np.ndarray], str]]] = {"pocketsphinx": PocketsphinxASR,
                                                               "whisper": WhisperASR}


def gen_ppl(transcripts: list[str], judge: JudgeLM) -> dict[str, Any]:
    """GenPPL as slamkit's `asr_perplexity` computes it: exp of the mean over transcripts of each one's mean NLL.

    A transcript with nothing to score (an empty one) makes slamkit's mean NaN, and so
    `gen_ppl` here; `gen_ppl_nonempty` is the same mean without them, under its own name.
    """
    nlls = np.array([judge.mean_negative_log_likelihood(transcript) for transcript in transcripts])
    scored = nlls[~np.isnan(nlls)]
    return {"gen_ppl": float(np.exp(nlls.mean())) if len(nlls) else float("nan"),
            "gen_ppl_nonempty": float(np.exp(scored.mean())) if len(scored) else float("nan"),
            "num_empty": int(np.isnan(nlls).sum())}


# --- the generation benchmark -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    """How continuations are sampled and judged."""

    num_prompts: int = 16
    # slamkit's generation settings (config/metric/asr_perplexity.yaml, cm_generate.yaml): the first 3 s of each
    # prompt's waveform, encoded alone; 150 new tokens in either modality.
    prompt_sec: float = 3.0
    max_new_speech_tokens: int = 150
    max_new_text_tokens: int = 150
    temperature: float = 0.8
    top_k: int = 25
    asr: str = "pocketsphinx"
    asr_model: str | None = None
    judge: str = "stories260K"


def _metrics(transcripts: list[str], judge: JudgeLM) -> dict[str, Any]:
    return {"auto_bleu2": auto_bleu(transcripts, 2), "auto_bleu2_gslm": gslm_auto_bleu2(transcripts, "geometric"),
            "auto_bleu2_gslm_arithmetic": gslm_auto_bleu2(transcripts, "arithmetic"),
            "self_bleu2": self_bleu2(transcripts, "geometric"),
            "self_bleu2_arithmetic": self_bleu2(transcripts, "arithmetic"),
            **gen_ppl(transcripts, judge), "mean_words": float(np.mean([len(t.split()) for t in transcripts])),
            "examples": transcripts[:3]}


def speech_prompt(vocabulary: Vocabulary, units: np.ndarray, output_marker: str) -> np.ndarray:
    """A speech prompt as slamkit's `build_prompt` writes it, tokenised with the tokenizer's own special tokens, a
    trailing EOS removed: its units, then the marker of the output modality. A prompt for text is opened by the
    speech marker too: slamkit continues speech in text only through `cm_generate`, whose prompts are interleaved
    inputs (a marker at the start and at each switch), while its speech-only `generate` and `asr_perplexity`
    (GenPPL) tokenise the waveforms as they are."""
    opening = SPEECH_MARKER if output_marker == TEXT_MARKER else ""
    ids = vocabulary.encode_samples([opening + vocabulary.unit_string(units) + output_marker])[0]
    if vocabulary.tokenizer.eos_token_id is not None and ids and ids[-1] == vocabulary.tokenizer.eos_token_id:
        ids = ids[:-1]
    return np.asarray(ids, dtype=np.int64)


def generation_metrics(model, vocabulary: Vocabulary, folder: Path, run_dir: Path, device: str, *, seed: int = 0,
                       options: GenerationOptions = GenerationOptions(), speech_units: str | None = None
                       ) -> dict[str, Any]:
    """Continue speech prompts from a cross-modal benchmark in speech (S->S) and in text (S->T)."""
    from simslm.eval.bench_units import bench_units_cache, cut_prompt, run_unit_source, units_for_audio

    _, pairs = load(folder, "S")
    pairs = pairs[:options.num_prompts]
    prompts = [pair.positive[0].audio for pair in pairs]
    endings = [pair.positive[1] for pair in pairs]
    source = run_unit_source(run_dir, speech_units)
    # A prompt is its recording's first seconds, cut before encoding as slamkit's PromptDataset cuts the waveform.
    cut = {path: cut_prompt(path, source, options.prompt_sec) for path in prompts}
    table = units_for_audio(list(cut.values()) + [e.audio for e in endings], source, bench_units_cache(),
                            device=device)
    vocoder = LogMelInversionVocoder(source.codebook)
    if options.asr not in ASRS:
        raise ValueError(f"unknown ASR '{options.asr}'; known: {', '.join(ASRS)}")
    asr = ASRS[options.asr](options.asr_model, device=device) if options.asr_model else ASRS[options.asr](device=device)
    judge = JudgeLM(options.judge, device=device)
    in_speech, in_text = (continuation_options(vocabulary, model, speech) for speech in (True, False))
    speech_transcripts, text_continuations, reference_transcripts = [], [], []
    for number, (prompt_audio, ending) in enumerate(jobs.progress(list(zip(prompts, endings)), "generation")):
        if cut[prompt_audio] not in table:
            continue
        prompt = speech_prompt(vocabulary, table[cut[prompt_audio]], SPEECH_MARKER)
        speech = sample_continuation(model, prompt, max_new_tokens=options.max_new_speech_tokens,
                                     temperature=options.temperature, top_k=options.top_k, seed=seed + number,
                                     device=device, **in_speech)
        # slamkit transcribes the prompt and its continuation together (generate keeps the prompt), units alone.
        spoken = np.concatenate([prompt, speech])
        speech_transcripts.append(asr(vocoder(spoken[vocabulary.is_unit(spoken)] - vocabulary.unit_offset,
                                              prompt_audio)))
        text = sample_continuation(model, speech_prompt(vocabulary, table[cut[prompt_audio]], TEXT_MARKER),
                                   max_new_tokens=options.max_new_text_tokens, temperature=options.temperature,
                                   top_k=options.top_k, seed=seed + number, device=device, **in_text)
        text_continuations.append(continuation_text(vocabulary, text))
        if ending.audio in table:
            reference_transcripts.append(asr(vocoder(table[ending.audio], ending.audio)))
    return {"speech_to_speech": _metrics(speech_transcripts, judge),
            "speech_to_text": _metrics(text_continuations, judge),
            "reference": {"resynthesised_real_speech": _metrics(reference_transcripts, judge),
                          "real_text": _metrics([e.text for e in endings], judge)},
            "chain": {"vocoder": "logmel-inversion (Griffin-Lim)", "asr": options.asr_model or options.asr,
                      "judge": options.judge},
            "num_prompts": len(speech_transcripts), "options": options.__dict__,
            "note": "offline chain; compare with `reference`, not with published GenPPL"}
