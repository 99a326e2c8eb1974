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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simslm import jobs
from simslm.eval.layouts import load
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech import audio
from simslm.units.vocoder import LogMelInversionVocoder

# --- sampling ---------------------------------------------------------------------------------


def sample_continuation(model, prompt: np.ndarray, *, max_new_tokens: int, allowed: tuple[int, int],
                        temperature: float = 1.0, top_k: int | None = 50, seed: int = 0,
                        device: str = "cpu") -> np.ndarray:
    """Sample tokens after `prompt`, only from ids in [allowed[0], allowed[1]) (one modality's vocabulary)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.tensor(prompt[None], dtype=torch.long, device=device)
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
            logits = output.logits[0, -1, allowed[0]:allowed[1]].float().cpu()
            if temperature <= 0:
                choice = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k:
                    threshold = torch.topk(logits, min(top_k, len(logits))).values[-1]
                    logits = logits.masked_fill(logits < threshold, float("-inf"))
                choice = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            new.append(allowed[0] + choice)
    return np.asarray(new, dtype=np.int64)


# --- repetition and diversity -----------------------------------------------------------------


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def auto_bleu(transcripts: list[str], n: int = 2) -> float:
    """Auto-BLEU (slamkit's definition): share of a transcript's own n-grams that occur elsewhere in it.

    Averaged over transcripts that have at least one n-gram; high values mean loops.
    """
    scores = []
    for transcript in transcripts:
        grams = _ngrams(transcript.lower().split(), n)
        if not grams:
            continue
        counts = collections.Counter(grams)
        scores.append(sum(1 for gram in grams if counts[gram] > 1) / len(grams))
    return float(np.mean(scores)) if scores else float("nan")


def sentence_bleu(hypothesis: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """BLEU of one hypothesis against references (clipped n-gram precisions, brevity penalty, +1 smoothing above n=1)."""
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        grams = collections.Counter(_ngrams(hypothesis, n))
        best: collections.Counter = collections.Counter()
        for reference in references:
            best |= collections.Counter(_ngrams(reference, n))
        matched = sum(min(count, best[gram]) for gram, count in grams.items())
        total = sum(grams.values())
        smoothing = 0 if n == 1 else 1  # Lin & Och (2004) add-one for n > 1, so short texts do not zero out
        if matched + smoothing == 0 or total + smoothing == 0:
            return 0.0
        log_precision += math.log((matched + smoothing) / (total + smoothing)) / max_n
    closest = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1]
    brevity = 1.0 if len(hypothesis) > closest else math.exp(1 - closest / len(hypothesis))
    return brevity * math.exp(log_precision)


def self_bleu(transcripts: list[str], max_n: int = 4) -> float:
    """Self-BLEU (GSLM's): mean BLEU of each transcript against all the others; high = little diversity."""
    tokenized = [t.lower().split() for t in transcripts if t.strip()]
    if len(tokenized) < 2:
        return float("nan")
    return float(np.mean([sentence_bleu(hypothesis, tokenized[:i] + tokenized[i + 1:], max_n)
                          for i, hypothesis in enumerate(tokenized)]))


# --- vocoders, ASR, judges (registries) ---------------------------------------------------------


class PocketsphinxASR:
    """pocketsphinx's bundled US English acoustic model and language model (offline)."""

    def __init__(self):
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
    """Whisper through transformers' ASR pipeline (the paper's chain); needs local weights."""

    def __init__(self, model_path: str):
        from transformers import pipeline

        self._pipeline = pipeline("automatic-speech-recognition", model=model_path)

    def __call__(self, samples: np.ndarray) -> str:
        return self._pipeline({"raw": samples, "sampling_rate": audio.TARGET_SAMPLE_RATE})["text"].strip()


class JudgeLM:
    """A text LM that scores transcripts: stories260K, SmolLM2 (.gguf), Llama-3.2-1B, any HF causal LM."""

    def __init__(self, source: str):
        from simslm.model import load_base_model
        from simslm.sequences.vocabulary import load_base_tokenizer

        self.model = load_base_model(source).eval()
        self.tokenizer = load_base_tokenizer(source if not source.endswith(".bin") else "stories260K")
        self.source = source

    def negative_log_likelihood(self, text: str) -> tuple[float, int]:
        """Summed NLL (nats) of the text's tokens after BOS, and how many tokens."""
        import torch

        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        ids = ([bos] if bos is not None else []) + ids
        if len(ids) < 2:
            return 0.0, 0
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")
        return float(nll), len(ids) - 1


ASRS: dict[str, Callable[..., Callable[[np.ndarray], str]]] = {"pocketsphinx": PocketsphinxASR,
                                                               "whisper": WhisperASR}


def gen_ppl(transcripts: list[str], judge: JudgeLM) -> dict[str, Any]:
    """Token-weighted perplexity of the non-empty transcripts under the judge, and how many were empty."""
    total, count, empty = 0.0, 0, 0
    for transcript in transcripts:
        nll, tokens = judge.negative_log_likelihood(transcript)
        if tokens == 0:
            empty += 1
            continue
        total, count = total + nll, count + tokens
    return {"gen_ppl": math.exp(total / count) if count else float("nan"), "num_tokens": count,
            "num_empty": empty}


# --- the generation benchmark -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    """How continuations are sampled and judged."""

    num_prompts: int = 16
    prompt_units: int = 60
    """Prompt length in (deduplicated) units, about 3 s of logmel speech."""
    max_new_speech_tokens: int = 150
    max_new_text_tokens: int = 40
    temperature: float = 1.0
    top_k: int = 50
    asr: str = "pocketsphinx"
    asr_model: str | None = None
    judge: str = "stories260K"


def _metrics(transcripts: list[str], judge: JudgeLM) -> dict[str, Any]:
    return {"auto_bleu2": auto_bleu(transcripts, 2), "self_bleu4": self_bleu(transcripts, 4),
            **gen_ppl(transcripts, judge), "mean_words": float(np.mean([len(t.split()) for t in transcripts])),
            "examples": transcripts[:3]}


def generation_metrics(model, vocabulary: Vocabulary, folder: Path, run_dir: Path, device: str, *, seed: int = 0,
                       options: GenerationOptions = GenerationOptions()) -> dict[str, Any]:
    """Continue speech prompts from a cross-modal benchmark in speech (S->S) and in text (S->T)."""
    from simslm.eval.bench_units import bench_units_cache, run_units_folder, units_for_audio

    _, pairs = load(folder, "S")
    pairs = pairs[:options.num_prompts]
    prompts = [pair.positive[0].audio for pair in pairs]
    endings = [pair.positive[1] for pair in pairs]
    units_folder = run_units_folder(run_dir)
    table = units_for_audio(prompts + [e.audio for e in endings], units_folder, bench_units_cache())
    header = jobs.read_json(units_folder / "units.json")
    vocoder = LogMelInversionVocoder(header["codebook"])
    if options.asr not in ASRS:
        raise ValueError(f"unknown ASR '{options.asr}'; known: {', '.join(ASRS)}")
    asr = ASRS[options.asr](options.asr_model) if options.asr_model else ASRS[options.asr]()
    judge = JudgeLM(options.judge)
    unit_range = (vocabulary.unit_offset, vocabulary.unit_offset + vocabulary.num_units)
    speech_transcripts, text_continuations, reference_transcripts = [], [], []
    for number, (prompt_audio, ending) in enumerate(jobs.progress(list(zip(prompts, endings)), "generation")):
        if prompt_audio not in table:
            continue
        prompt = np.concatenate([[vocabulary.bos_id] if vocabulary.bos_id is not None else [], [vocabulary.speech_id],
                                 table[prompt_audio][:options.prompt_units] + vocabulary.unit_offset]).astype(np.int64)
        speech = sample_continuation(model, prompt, max_new_tokens=options.max_new_speech_tokens,
                                     allowed=unit_range, temperature=options.temperature, top_k=options.top_k,
                                     seed=seed + number, device=device)
        speech_transcripts.append(asr(vocoder(speech - vocabulary.unit_offset, prompt_audio)))
        text = sample_continuation(model, np.append(prompt, vocabulary.text_id),
                                   max_new_tokens=options.max_new_text_tokens, allowed=(0, vocabulary.unit_offset),
                                   temperature=options.temperature, top_k=options.top_k, seed=seed + number,
                                   device=device)
        text_continuations.append(vocabulary.tokenizer.decode(text.tolist(), skip_special_tokens=True).strip())
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
