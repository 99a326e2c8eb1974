"""Side by side with slamkit's own generation: one slamkit UnitLM continuing the same prompts greedily through
slamkit's `SpeechLM.generate` and, converted with `simslm model from-slamkit`, through simslm's sampler.

    .venv/bin/pip install omegaconf   # one of slamkit's own imports, not a simslm dependency
    SIMSLM_MIRROR=../shared/data PYTHONPATH=<a checkout of slp-rl/slamkit> \
        .venv/bin/python benchmarks/side_by_side_generation.py --prompts 8

slamkit's code is imported from the checkout and run, not copied. The model, units and audio are built as
`side_by_side_scoring.py` builds them (stories260K grown by slamkit's `UnitLM`, its new rows drawn at random;
logmel units through a stand-in for slamkit's feature extractor). Greedy decoding (`do_sample=False`), so that
each side's draw is the same function of its logits: sampled continuations could not be compared token for
token, since HF draws over the whole vocabulary and simslm over the ids allowed.

A spoken prompt is its first `--prompt-sec` (3, slamkit's `prompt_length`), cut on each side by its own code:
slamkit's `PromptDataset` (S2S) and `CrossModalPromptDataset` (S2T), simslm's `_join_audio` (as `eval
generation=`). Prompts, each as slamkit writes it: S2S the speech-only `generate`'s (`build_prompt` of a
waveform batch, the path of `asr_perplexity`, i.e. GenPPL); S2T and T2S `cm_generate`'s (`build_prompt` of
`GenerationInput`s).
Compared: the prompt's token ids, the new tokens (slamkit's up to and with its EOS, simslm's without it), and the
decoded output (`decode_sample`: units, or text). `--eos-from-text` makes the model's EOS the token that its
greedy S2T continuation of the first prompt draws fifth, so that both sides must stop on it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from side_by_side_scoring import _torchaudio_stand_in, slamkit_unit_lm, spoken_stories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--units", type=int, default=100, help="codebook size")
    parser.add_argument("--prompt-sec", type=float, default=3.0, help="seconds of each story spoken as a prompt")
    parser.add_argument("--new-tokens", type=int, default=150, help="slamkit's max_new_tokens")
    parser.add_argument("--eos-from-text", action="store_true")
    parser.add_argument("--earlier-rules", action="store_true",
                        help="simslm's sampling as it was before 2026-12-05 (twenty-second session), for comparison")
    args = parser.parse_args()

    sys.modules.setdefault("torchaudio", _torchaudio_stand_in())
    import torch
    from slamkit.metric.cross_modal_generation import CrossModalPromptDataset
    from slamkit.metric.generative_metric import PromptDataset
    from slamkit.model.speech_lm import SpeechLM
    from slamkit.tokeniser.interleaving_tokeniser import GenerationInput

    from simslm.eval.bench_units import _join_audio
    from simslm.eval.generation import continuation_options, continuation_text, sample_continuation, speech_prompt
    if args.earlier_rules:
        speech_prompt, continuation_options, continuation_text = _earlier_rules()
    from simslm.model import FromSlamkitConfig, from_slamkit, load_model_folder
    from simslm.sequences.vocabulary import SPEECH_MARKER, TEXT_MARKER, Vocabulary
    from simslm.speech import audio
    from simslm.speech.manifest import read_manifest
    from simslm.units import kmeans
    from simslm.units.encoders import LogMelEncoder
    from simslm.units.folder import deduplicate

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        manifest, codebook_path = spoken_stories(scratch, args.prompts, args.units)
        codebook = kmeans.Codebook.load(codebook_path)

        unit_lm, tokeniser, _ = slamkit_unit_lm(scratch, codebook, args.units)
        theirs = SpeechLM(unit_lm, tokeniser, device="cpu")
        recorded: list[tuple[torch.Tensor, torch.Tensor]] = []  # (prompt ids, whole output) of slamkit's generate
        generate = unit_lm.generate

        def recording(*positional, **options):
            output = generate(*positional, **options)
            recorded.append((options["input_ids"][0], output[0]))
            return output

        unit_lm.generate = recording
        converted = from_slamkit(FromSlamkitConfig(checkpoint=str(scratch / "unitlm"), out=str(scratch / "simslm"),
                                                   tokenizer=str(scratch / "base"), num_units=args.units,
                                                   speech_units=str(scratch / "units")))
        ours_model, vocabulary = load_model_folder(converted), Vocabulary.load(converted)

        utterances = read_manifest(manifest)[:args.prompts]
        paths = [str(u.audio_path(manifest.parent)) for u in utterances]
        # Each side cuts a spoken prompt its own way: slamkit's datasets (`PromptDataset` of asr_perplexity for S2S,
        # `CrossModalPromptDataset` of cm_generate for S2T), simslm as `eval generation=` does (`_join_audio`).
        theirs_waves = {"S2S": [PromptDataset(path, prompt_length=args.prompt_sec)[0][0] for path in paths],
                        "S2T": [CrossModalPromptDataset(path, prompt_length=args.prompt_sec,
                                                        prompt_modality="SPEECH")[0][0].content for path in paths]}
        ours_waves = [audio.load_audio(_join_audio((path,), scratch / "cut", "sinc-hann", args.prompt_sec))
                      for path in paths]
        texts = [" ".join(u.transcript.split()[:8]) for u in utterances]

        def slamkit_side(mode: str, number: int):
            recorded.clear()
            options = {"do_sample": False, "max_new_tokens": args.new_tokens}
            if mode == "S2S":  # asr_perplexity's path: a batch of waveforms
                wave = theirs_waves["S2S"][number]
                decoded = theirs.generate(wave[None], torch.tensor([len(wave)]), "SPEECH", **options)
            else:
                prompt = ("SPEECH", theirs_waves["S2T"][number]) if mode == "S2T" else ("TEXT", texts[number])
                decoded = theirs.generate([[GenerationInput.from_tuple(prompt)]],
                                          output_modality="SPEECH" if mode.endswith("S") else "TEXT", **options)
            prompt_ids, output = recorded[0]
            return prompt_ids.tolist(), output[len(prompt_ids):].tolist(), decoded[0]

        def simslm_side(mode: str, number: int):
            if mode.startswith("S"):
                units, _ = deduplicate(codebook.assign(LogMelEncoder().encode(ours_waves[number])))
                ids = speech_prompt(vocabulary, units, SPEECH_MARKER if mode == "S2S" else TEXT_MARKER)
            else:
                ids = np.asarray(vocabulary.encode_samples([f"{TEXT_MARKER}{texts[number]}{SPEECH_MARKER}"])[0])
            new = sample_continuation(ours_model, ids, max_new_tokens=args.new_tokens, temperature=0,
                                      **continuation_options(vocabulary, ours_model, speech=mode.endswith("S")))
            whole = np.concatenate([ids, new])  # slamkit decodes the prompt with its continuation
            decoded = (whole[vocabulary.is_unit(whole)] - vocabulary.unit_offset).tolist() if mode.endswith("S") \
                else continuation_text(vocabulary, new)
            return ids.tolist(), new.tolist(), decoded

        if args.eos_from_text:
            _, drawn, _ = slamkit_side("S2T", 0)
            eos = drawn[4]
            unit_lm.lm.generation_config.eos_token_id = eos  # slamkit sets it from the base config
            ours_model.generation_config.eos_token_id = eos
            print(f"EOS is now token {eos} ({vocabulary.tokenizer.convert_ids_to_tokens(eos)!r})")
        eos = ours_model.generation_config.eos_token_id
        stop = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)  # the model's, whatever the rules
        print("| mode | prompts | same prompt ids | same new tokens | same output | ended at EOS (slamkit, simslm) "
              "| BOS or EOS drawn in speech |\n| --- | --- | --- | --- | --- | --- | --- |")
        for mode in ("S2S", "S2T", "T2S"):
            same_prompt = same_new = same_output = ended_theirs = ended_ours = special = 0
            for number in range(len(utterances)):
                their_prompt, their_new, their_output = slamkit_side(mode, number)
                our_prompt, our_new, our_output = simslm_side(mode, number)
                ended = bool(their_new) and their_new[-1] in stop
                ended_theirs += ended
                ended_ours += len(our_new) < args.new_tokens and len(our_prompt) + len(our_new) < \
                    ours_model.config.max_position_embeddings
                same_prompt += their_prompt == our_prompt
                same_new += (their_new[:-1] if ended else their_new) == our_new
                their_output = their_output.tolist() if isinstance(their_output, torch.Tensor) else their_output
                if mode.endswith("S"):
                    special += sum(token in (vocabulary.tokenizer.bos_token_id, vocabulary.tokenizer.eos_token_id)
                                   for token in our_new)
                same_output += their_output == our_output if mode.endswith("S") else their_output.strip() == our_output
            count = len(utterances)
            print(f"| {mode} | {count} | {same_prompt} | {same_new} | {same_output} | {ended_theirs}, {ended_ours} "
                  f"| {special if mode.endswith('S') else '-'} |")


def _earlier_rules():
    """`speech_prompt`, `continuation_options` and `continuation_text` as simslm had them before the twenty-second
    session: speech drawn from the units alone, text from the ids below them, no stop at EOS, a spoken prompt
    with no opening marker, text decoded with `skip_special_tokens`."""
    def prompt(vocabulary, units, output_marker):
        return np.asarray(vocabulary.encode_samples([vocabulary.unit_string(units) + output_marker])[0], np.int64)

    def options(vocabulary, model, speech):
        start, end = ((vocabulary.unit_offset, vocabulary.unit_offset + vocabulary.num_units) if speech
                      else (0, vocabulary.unit_offset))
        return {"allowed": np.arange(start, end), "stop": ()}

    def text(vocabulary, tokens):
        return vocabulary.tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip()

    return prompt, options, text


if __name__ == "__main__":
    main()
