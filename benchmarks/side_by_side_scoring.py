"""Side by side with slamkit's own evaluation: one slamkit UnitLM scored by slamkit's `sblimp`, `storycloze` and
`cm_storycloze` and, converted with `simslm model from-slamkit`, by `simslm eval`'s scorer, on the same audio.

    .venv/bin/pip install omegaconf   # one of slamkit's own imports, not a simslm dependency
    SIMSLM_MIRROR=../shared/data PYTHONPATH=<a checkout of slp-rl/slamkit> \
        .venv/bin/python benchmarks/side_by_side_scoring.py --stories 20

slamkit's code is imported from the checkout and run, not copied. What each side gets:

- the model: stories260K, grown by slamkit's own `UnitLM` to its tokeniser's vocabulary (tok512, `<Un0..K-1>`,
  `<speech>`, `<text>`), its new rows then drawn at random (seeded) so that units differ from one another, as in
  a trained model, and saved with `save_pretrained`. slamkit scores that UnitLM (its `eval` would load it back
  with `UnitLM.from_pretrained`, which fails under transformers 5); simslm reads the saved folder through
  `simslm model from-slamkit`.
- the audio: sBLIMP and tSC built by `simslm bench build --slamkit-pairs --audio-format wav` (BLiMP and held-out
  TinyStories, espeak-ng): slamkit's speech-only evaluator reads `slamkit/` as its metric configs read theirs
  (sBLIMP from a sub-folder per phenomenon, `subfolder: true`; tSC flat), its cross-modal one `audio/`.
- the units: simslm's logmel encoder and a codebook fit on the synthesised stories. slamkit's tokeniser gets them
  through a stand-in for its feature extractor (its HuBERT needs weights): frame units of each waveform's
  unpadded part, which slamkit then deduplicates itself. torchaudio does not load beside this torch, so
  `torchaudio.load` is stood in for by soundfile.
- the settings: slamkit's `eval` defaults (batch 8, mean NLL, no token modality), simslm's `reference` preset.

Compared, per benchmark and mode: each side's log-likelihood (largest difference), each pair's outcome (equal
count) and the accuracy.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import tempfile
import types
from pathlib import Path

import numpy as np


def _torchaudio_stand_in() -> types.ModuleType:
    """`torchaudio.load` as slamkit calls it (channels x samples, float in [-1, 1], rate), read with soundfile."""
    import soundfile
    import torch

    module = types.ModuleType("torchaudio")
    # A spec, so that transformers' check for torchaudio finds no package metadata and says "not installed".
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)

    def load(path, *_, **__):
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(samples.T.copy()), rate

    module.load = load
    module.functional = types.SimpleNamespace(resample=None)  # the benchmark audio is 16 kHz already
    return module


class LogMelUnits:
    """slamkit's feature-extractor interface over simslm's logmel encoder and a codebook."""

    def __init__(self, codebook):
        from simslm.units.encoders import LogMelEncoder

        self.encoder, self.codebook = LogMelEncoder(), codebook

    def extract(self, wav, lens=None):
        lens = lens.tolist() if lens is not None else [wav.shape[-1]] * wav.shape[0]
        return [self.codebook.assign(self.encoder.encode(row[:length].numpy())) for row, length in zip(wav, lens)]

    def get_unit_duration(self) -> float:
        return 1 / 25

    @property
    def sample_rate(self) -> int:
        return 16_000

    def to(self, device):
        return self


def spoken_stories(scratch: Path, stories: int, num_units: int) -> tuple[Path, Path]:
    """The first `stories` TinyStories spoken into `scratch/speech`, a logmel codebook of `num_units` fit on them
    and their units in `scratch/units`: (manifest, codebook)."""
    from simslm.speech.synth import SynthConfig, synthesize_corpus
    from simslm.units.extract import ExtractConfig, extract_units
    from simslm.units.fit import FitConfig, fit_codebook

    synthesize_corpus(SynthConfig(out=str(scratch / "speech"), corpus=f"tinystories-sample[:{stories}]"))
    manifest = scratch / "speech" / "manifest.jsonl"
    codebook = fit_codebook(FitConfig(manifest=str(manifest), out=str(scratch / "km"), num_units=num_units))
    extract_units(ExtractConfig(manifest=str(manifest), codebook=str(codebook), out=str(scratch / "units")))
    return manifest, codebook


def slamkit_unit_lm(scratch: Path, codebook, num_units: int, positions: int | None = None):
    """slamkit's UnitLM over stories260K (saved to `scratch/base`) grown to its interleaving tokeniser's vocabulary
    (tok512, `<Un0..K-1>`, `<speech>`, `<text>`), its new rows drawn at random (seed 0) so that units differ from
    one another, as in a trained model, and saved to `scratch/unitlm`; with `positions`, the base's
    max_position_embeddings raised to it. (unit_lm, tokeniser, the base's own positions.)

    slamkit's eval would load the saved UnitLM back with UnitLM.from_pretrained, which fails under transformers 5
    (its __init__ resizes the embeddings while from_pretrained builds on the meta device): the one saved is used."""
    import torch
    from slamkit.model.unit_lm import UnitLM, UnitLMConfig
    from slamkit.tokeniser.interleaving_tokeniser import InterleavingTokeniser

    from simslm.model import load_base_model
    from simslm.sequences.vocabulary import load_base_tokenizer

    base = load_base_model("stories260K")
    base_positions = base.config.max_position_embeddings
    if positions:
        base.config.max_position_embeddings = positions
    base.save_pretrained(scratch / "base")
    load_base_tokenizer("stories260K").save_pretrained(scratch / "base")
    tokeniser = InterleavingTokeniser(LogMelUnits(codebook), num_units=num_units,
                                      text_tokeniser_path=str(scratch / "base"))
    torch.manual_seed(0)
    unit_lm = UnitLM(UnitLMConfig(base_model_name=str(scratch / "base"), vocab_size=len(tokeniser.text_tokeniser),
                                  pad_token_id=0, bos_token_id=1, eos_token_id=1))
    text_rows = len(tokeniser.text_tokeniser) - num_units - 2
    with torch.no_grad():
        embeddings = unit_lm.lm.get_input_embeddings().weight
        embeddings[text_rows:] = 0.5 * torch.randn_like(embeddings[text_rows:])
    unit_lm.save_pretrained(scratch / "unitlm")
    return unit_lm, tokeniser, base_positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=20, help="stories synthesised to fit the codebook on")
    parser.add_argument("--units", type=int, default=100, help="codebook size")
    parser.add_argument("--tsc-items", type=int, default=24)
    parser.add_argument("--positions", type=int, default=4096,
                        help="max_position_embeddings of the model (stories260K's own is 512)")
    args = parser.parse_args()

    sys.modules.setdefault("torchaudio", _torchaudio_stand_in())
    import torch
    from slamkit.metric.cross_modal_metric import CrossModalMetricDataset, cm_storycloze
    from slamkit.metric.modelling_metric import ModellingMetricDataset, sblimp, storycloze
    from slamkit.model.speech_lm import SpeechLM

    from simslm.eval.benchbuild import BenchBuildConfig, build_benchmark
    from simslm.eval.evaluate import EvalConfig, pairs_to_score
    from simslm.eval.scoring import encode_pairs, pair_outcomes, score_pairs
    from simslm.model import FromSlamkitConfig, from_slamkit, load_model_folder
    from simslm.sequences.vocabulary import Vocabulary
    from simslm.units import kmeans

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        _, codebook = spoken_stories(scratch, args.stories, args.units)
        build_benchmark(BenchBuildConfig(kind="sblimp", out=str(scratch / "sblimp"), per_phenomenon=1,
                                         slamkit_pairs=True, audio_format="wav"))
        build_benchmark(BenchBuildConfig(kind="tsc", out=str(scratch / "tsc"), num_items=args.tsc_items,
                                         source="tinystories-sample[2000:2100]", slamkit_pairs=True,
                                         audio_format="wav"))

        # --- the model, as slamkit builds, saves and loads it ------------------------------------------
        # slamkit scores a whole sequence however long; simslm keeps its last max_position_embeddings tokens (a
        # named difference, docs/LOG.md 2026-12-04). Raised, so that both score every token of every tSC story.
        unit_lm, tokeniser, base_positions = slamkit_unit_lm(scratch, kmeans.Codebook.load(codebook), args.units,
                                                             args.positions)
        theirs = SpeechLM(unit_lm, tokeniser, device="cpu")
        recorded: list[torch.Tensor] = []  # each side's log-likelihood as slamkit's evaluators compute it
        log_likelihood = theirs.log_likelihood

        def recording(*args, **kwargs):
            recorded.append(log_likelihood(*args, **kwargs))
            return recorded[-1]

        theirs.log_likelihood = recording

        converted = from_slamkit(FromSlamkitConfig(checkpoint=str(scratch / "unitlm"), out=str(scratch / "simslm"),
                                                   tokenizer=str(scratch / "base"), num_units=args.units,
                                                   speech_units=str(scratch / "units")))
        ours_model, vocabulary = load_model_folder(converted), Vocabulary.load(converted)

        def ours(bench: str, mode: str | None):
            config = EvalConfig(run=str(converted), bench=[bench], **({"modes": [mode]} if mode else {}))
            _, _, by_mode, units_of = pairs_to_score(config, converted, bench)
            pairs = by_mode[mode]
            scores = score_pairs(ours_model, pairs, vocabulary, units_of, config)
            long = sum(len(tokens) > base_positions
                       for tokens in encode_pairs(pairs, vocabulary, units_of, config, 10 ** 9).sequences)
            return pairs, scores, long

        def slamkit_run(call) -> tuple[float, np.ndarray, np.ndarray]:
            recorded.clear()
            accuracy = list(call().values())[0]
            positive = torch.cat(recorded[0::2]).numpy()
            negative = torch.cat(recorded[1::2]).numpy()
            return accuracy, positive, negative

        common = {"used_token_modality": None, "mean_nll": True, "batch_size": 8, "num_workers": 0,
                  "pin_memory": False, "subfolder": False}
        # Speech only: both read the `slamkit/` folders, whose pairs come in the order of their numbers.
        # sBLIMP in a sub-folder per phenomenon, read as slamkit's sblimp config reads it (`subfolder: true`).
        checks = [("sBLIMP", str(scratch / "sblimp" / "slamkit"), None,
                   lambda: sblimp(theirs, str(scratch / "sblimp" / "slamkit"), **{**common, "subfolder": True})),
                  ("tSC, speech only", str(scratch / "tsc" / "slamkit"), None,
                   lambda: storycloze(theirs, str(scratch / "tsc" / "slamkit"), **common))]
        for mode, (prompt, continuation) in {"S": ("SPEECH", "SPEECH"), "T": ("TEXT", "TEXT"),
                                             "S2T": ("SPEECH", "TEXT"), "T2S": ("TEXT", "SPEECH")}.items():
            checks.append((f"tSC cross-modal {mode}", str(scratch / "tsc"), mode,
                           lambda p=prompt, c=continuation: cm_storycloze(theirs, str(scratch / "tsc" / "audio"),
                                                                          p, c, **common)))
        # slamkit's cross-modal dataset lists `*_correct.wav` in the file system's order; its items by stem.
        cm_order = [Path(str(path)).name.split("_correct.wav")[0]
                    for path in CrossModalMetricDataset(str(scratch / "tsc" / "audio"), subfolder=False).data]
        # Its sBLIMP takes the sub-folders in the file system's order too: its pairs by their positive's file.
        sblimp_order = [str(path) for path in ModellingMetricDataset(str(scratch / "sblimp" / "slamkit"), sep="+",
                                                                     subfolder=True).data[0::2]]
        for name, bench, mode, call in checks:
            accuracy, positive, negative = slamkit_run(call)
            pairs, scores, long = ours(bench, mode)
            if name.startswith("tSC cross-modal"):
                order = {pair.id.split("/")[-1]: index for index, pair in enumerate(pairs)}
                index = [order[stem] for stem in cm_order]
                mine = scores.positive[index], scores.negative[index]
            elif name == "sBLIMP":
                order = {pair.positive[0].audio: index for index, pair in enumerate(pairs)}
                index = [order[path] for path in sblimp_order]
                mine = scores.positive[index], scores.negative[index]
            else:
                mine = scores.positive, scores.negative
            difference = max(np.abs(positive - mine[0]).max(), np.abs(negative - mine[1]).max())
            same = int(np.sum(np.sign(positive - negative) == np.sign(mine[0] - mine[1])))
            our_accuracy = float(pair_outcomes(*mine).mean())
            rows.append((name, len(positive), long, f"{difference:.1e}", f"{same} of {len(positive)}",
                         f"{accuracy:.4f} vs {our_accuracy:.4f}"))
    print(f"| benchmark | pairs | sides longer than {base_positions} tokens | largest score difference | same outcome "
          f"| accuracy, slamkit vs simslm |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
