"""Side by side with slamkit itself, on the same inputs: interleaved samples, span statistics, Auto-BLEU, GenPPL.

    .venv/bin/pip install omegaconf   # one of slamkit's own imports, not a simslm dependency
    SIMSLM_MIRROR=../shared/data PYTHONPATH=<a checkout of slp-rl/slamkit> \
        .venv/bin/python benchmarks/side_by_side_slamkit.py --stories 20

slamkit's code is imported from a checkout given on PYTHONPATH and run, not copied. For each
check both tools get the same inputs:

- samples: synthesised TinyStories stories with espeak-ng word timings and logmel units;
  slamkit's `InterleavingTokeniser._create_interleaved_text` gets the words as Whisper gives
  them (each with its leading space and punctuation) and the same speech mask as simslm, and
  its `string_tokenise`; simslm's `build_interleaved`. On SmolLM2's byte-level BPE and on
  stories260K's SentencePiece tokenizer. Compared: the token ids, exactly.
- spans: slamkit's `select_spans_poisson` (numpy's global generator, seeded) and simslm's
  `poisson_spans`, and slamkit's `random` method and simslm's (`--speech-ratio` unset), 4,000 draws
  each over the stories' word counts; compared: speech share, mean spoken run, switches per utterance.
- Auto-BLEU: slamkit's `calc_auto_bleu` with NLTK's word tokenizer and simslm's `auto_bleu`
  on the same transcripts; compared: the mean, exactly.
- GenPPL: slamkit's `get_llm_preplexity` (a batch padded on the right, pad = EOS as its
  `get_llm` sets it) and simslm's `gen_ppl` with the stories260K judge on the same
  transcripts; compared: exp of the mean NLL.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=20)
    args = parser.parse_args()

    import importlib.util
    import sys
    import types

    import slamkit

    # slamkit's metric package imports torchaudio in its __init__, which does not load beside
    # this torch: metric_utils (which does not use it) is loaded alone, under its own name.
    package = types.ModuleType("slamkit.metric")
    package.__path__ = [str(Path(slamkit.__file__).parent / "metric")]
    sys.modules["slamkit.metric"] = package
    spec = importlib.util.spec_from_file_location("slamkit.metric.metric_utils",
                                                  Path(package.__path__[0]) / "metric_utils.py")
    metric_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metric_utils)
    get_llm_preplexity = metric_utils.get_llm_preplexity
    from slamkit.tokeniser.interleaving_tokeniser import InterleavingTokeniser, select_spans_poisson
    from slamkit.utils.calculation_utils import calc_auto_bleu

    from simslm.eval.generation import JudgeLM, auto_bleu, gen_ppl
    from simslm.model import smollm2_gguf_path
    from simslm.sequences.build import BuildConfig
    from simslm.sequences.interleave import INTERLEAVERS, build_interleaved, poisson_spans, sample_rng, word_boundaries
    from simslm.sequences.vocabulary import Vocabulary, load_base_tokenizer
    from simslm.speech.manifest import read_manifest
    from simslm.speech.synth import SynthConfig, synthesize_corpus
    from simslm.units.extract import ExtractConfig, extract_units
    from simslm.units.fit import FitConfig, fit_codebook
    from simslm.units.folder import read_units

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        synthesize_corpus(SynthConfig(out=str(scratch / "speech"), corpus=f"tinystories-sample[:{args.stories}]"))
        manifest = scratch / "speech" / "manifest.jsonl"
        codebook = fit_codebook(FitConfig(manifest=str(manifest), out=str(scratch / "km"), num_units=100))
        extract_units(ExtractConfig(manifest=str(manifest), codebook=str(codebook), out=str(scratch / "units")))
        units = {u.id: u for u in read_units(scratch / "units")}
        utterances = [u for u in read_manifest(manifest) if u.words and u.id in units]

        # --- interleaved samples --------------------------------------------------------------------
        class Units:  # slamkit's tokeniser asks its feature extractor only for the unit duration here
            @staticmethod
            def get_unit_duration():
                return 1 / 25

        for name, base in (("SmolLM2, byte-level BPE", str(smollm2_gguf_path())),
                           ("stories260K, SentencePiece", "stories260K")):
            load_base_tokenizer(base).save_pretrained(scratch / "tokenizer")
            vocabulary = Vocabulary.build(base, 100)
            theirs = InterleavingTokeniser(Units(), num_units=100, text_tokeniser_path=str(scratch / "tokenizer"),
                                           interleave_method="poisson", interleave_span=10, interleave_prob=0.3)
            same = total = 0
            for utterance in utterances:
                for epoch in range(5):
                    mask = poisson_spans(len(utterance.words), sample_rng(0, utterance.id, epoch))
                    bounds = word_boundaries(utterance.transcript)
                    whisper_words = [utterance.transcript[a:b] for a, b in zip(bounds, bounds[1:])]
                    aligned = [(text, w.start_sec, w.end_sec, "audio" if spoken else "text")
                               for text, w, spoken in zip(whisper_words, utterance.words, mask)]
                    rep = {"units": units[utterance.id].units.tolist(),
                           "duration": units[utterance.id].durations.tolist()}
                    their_ids = theirs.string_tokenise([theirs._create_interleaved_text(rep, aligned)])["input_ids"][0]
                    ours = build_interleaved(utterance, units[utterance.id], vocabulary, mask).tokens.tolist()
                    same += their_ids == ours
                    total += 1
            rows.append((f"interleaved samples, token ids identical ({name})", f"{same} of {total}"))

        # --- span statistics ------------------------------------------------------------------------
        counts = [len(u.words) for u in utterances] * 200

        def statistics(masks):
            runs, switches = [], []
            for mask in masks:
                edges = np.diff(np.concatenate(([0], np.asarray(mask, int), [0])))
                runs.extend(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
                switches.append(int(np.count_nonzero(np.diff(np.asarray(mask, int)))))
            return (sum(int(np.sum(m)) for m in masks) / sum(len(m) for m in masks), np.mean(runs), np.mean(switches))

        np.random.seed(0)
        slamkit_masks = [select_spans_poisson(n, 10, 0.3) for n in counts]
        simslm_masks = [poisson_spans(n, sample_rng(0, str(i), 0)) for i, n in enumerate(counts)]
        # The `random` method: slamkit's `_assign_interleaved_modality` (torch's global generator, seeded), called
        # on a stand-in for the tokeniser, which it reads only for the method's name; simslm's `random` as
        # `sequences build --method random` calls it, with --speech-ratio unset.
        import torch

        torch.manual_seed(0)
        stand_in = SimpleNamespace(interleave_method="random")
        slamkit_random = [[modality == "audio" for *_, modality in InterleavingTokeniser._assign_interleaved_modality(
            stand_in, [(f"w{j}", 0.0, 0.0) for j in range(n)])] for n in counts]
        unset = BuildConfig(out="o", manifest="m", units="u", streams=("interleaved",), method="random")
        simslm_random = [INTERLEAVERS["random"].draw(n, sample_rng(0, str(i), 0), **INTERLEAVERS["random"].arguments(
            unset)) for i, n in enumerate(counts)]
        for name, masks in (("slamkit select_spans_poisson", slamkit_masks), ("simslm poisson_spans", simslm_masks),
                            ("slamkit random", slamkit_random), ("simslm random", simslm_random)):
            share, run, switches = statistics(masks)
            rows.append((f"spans, {name} ({len(masks)} draws)",
                         f"speech share {100 * share:.2f}%, mean run {run:.3f} words, {switches:.3f} switches"))

        # --- Auto-BLEU and GenPPL ---------------------------------------------------------------------
        from nltk.tokenize import NLTKWordTokenizer

        transcripts = [u.transcript for u in utterances[:10]] + ["the the the dog dog", "Hello, hello.",
                                                                  "a b a b a b a"]
        tokenizer = NLTKWordTokenizer()
        theirs_bleu = float(np.mean([calc_auto_bleu(t, tokenizer, 2) for t in transcripts]))
        rows.append(("Auto-BLEU-2, slamkit vs simslm", f"{theirs_bleu:.6f} vs {auto_bleu(transcripts, 2):.6f}"))
        judge = JudgeLM("stories260K")
        # As slamkit's get_llm sets the judge up (pad = EOS when there is none). Its batch is padded
        # on the tokenizer's side; a left-padding tokenizer (stories260K's) shifts the positions of
        # the shorter texts in slamkit, so the comparison pads on the right, as Llama-3.2's does.
        judge.tokenizer.pad_token = judge.tokenizer.pad_token or judge.tokenizer.eos_token
        judge.tokenizer.padding_side = "right"
        their_nlls = get_llm_preplexity(judge.model, judge.tokenizer, transcripts[:6], device="cpu")
        theirs_ppl = math.exp(float(their_nlls.mean()))
        rows.append(("GenPPL (stories260K judge), slamkit vs simslm",
                     f"{theirs_ppl:.4f} vs {gen_ppl(transcripts[:6], judge)['gen_ppl']:.4f}"))
    print("| check | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
