"""The extended vocabulary: a text tokenizer plus `<unit_0..K-1>`, `<speech>`, `<text>` and a pad token."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import assets, storage

SPEECH_MARKER, TEXT_MARKER, PAD_TOKEN = "<speech>", "<text>", "<simslm_pad>"


VOCAB_FILE = "simslm_vocab.json"


@dataclass
class Vocabulary:
    """A base LM tokenizer extended with `<unit_0..K-1>`, `<speech>`, `<text>` and a pad token.

    Unit tokens get consecutive ids, so unit u is token `unit_offset + u`. The pad token is
    a new special token: slamkit forces pad id 0, which is a real text token in Qwen and
    Llama vocabularies.
    """

    tokenizer: Any
    num_units: int
    unit_offset: int
    speech_id: int
    text_id: int
    pad_id: int
    bos_id: int | None

    @classmethod
    def build(cls, base: str, num_units: int) -> "Vocabulary":
        """Extend the tokenizer at `base`: an HF tokenizer folder or id, a SentencePiece .model, or an asset.

        A speech LM's folder (a run's model/, a `model from-slamkit` conversion) holds a vocabulary extended
        already: it is the vocabulary, as it is, for units of its own number (continued training of that model)."""
        if (extended := speech_vocabulary(base)) is not None:
            if extended.num_units != num_units:
                raise ValueError(f"{base}: a speech LM's vocabulary of {extended.num_units} units, but the units "
                                 f"are of a {num_units}-unit codebook; build with units of the model's own codebook")
            return extended
        tokenizer = load_base_tokenizer(base)
        vocab = tokenizer.get_vocab()
        units = [f"<unit_{i}>" for i in range(num_units)]
        if any(token in vocab for token in units):
            raise ValueError(f"tokenizer {base} already has unit tokens; it was extended before")
        # Markers and pad may already be there: a text LM pretrained by `simslm textlm`
        # saw <text> and keeps its rows, so a TWIST model built on it reuses them.
        markers = [token for token in (SPEECH_MARKER, TEXT_MARKER, PAD_TOKEN) if token not in vocab]
        base_size = len(tokenizer)
        tokenizer.add_tokens(units + markers, special_tokens=True)
        tokenizer.pad_token = PAD_TOKEN
        unit_ids = tokenizer.convert_tokens_to_ids(units)
        if unit_ids != list(range(base_size, base_size + num_units)):
            raise ValueError(f"tokenizer {base}: unit tokens did not get consecutive ids")
        speech_id, text_id, pad_id = tokenizer.convert_tokens_to_ids([SPEECH_MARKER, TEXT_MARKER, PAD_TOKEN])
        return cls(tokenizer=tokenizer, num_units=num_units, unit_offset=base_size, speech_id=speech_id,
                   text_id=text_id, pad_id=pad_id, bos_id=tokenizer.bos_token_id)

    def save(self, folder: str | os.PathLike) -> None:
        """Save so that `AutoTokenizer.from_pretrained(folder)` gives the extended tokenizer."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        (folder / VOCAB_FILE).write_text(json.dumps({"num_units": self.num_units, "unit_offset": self.unit_offset,
                                                     "speech_id": self.speech_id, "text_id": self.text_id,
                                                     "pad_id": self.pad_id, "bos_id": self.bos_id}, indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Vocabulary":
        """Load a vocabulary saved by `save`."""
        from transformers import AutoTokenizer

        meta = storage.read_json(Path(folder) / VOCAB_FILE)
        return cls(tokenizer=AutoTokenizer.from_pretrained(str(folder)), **meta)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode_samples(self, strings: list[str]) -> list[list[int]]:
        """Token ids of whole samples written out as strings (markers and `<unit_i>` inline), with the special
        tokens the tokenizer adds itself (BOS for Llama-3, none for Qwen2.5 or SmolLM2).

        This is slamkit's own path (its tokeniser writes a sample as one string and tokenises it
        with `add_special_tokens=True`), and tokenising the whole string matters: a SentencePiece
        tokenizer gives the text after a marker other pieces than the same text alone.
        """
        return self.tokenizer(strings, add_special_tokens=True)["input_ids"] if strings else []

    def unit_string(self, units: np.ndarray) -> str:
        """Units written as their tokens, `<unit_3><unit_7>...`, for `encode_samples`."""
        return "".join(f"<unit_{int(unit)}>" for unit in units)

    def is_unit(self, token_ids: np.ndarray) -> np.ndarray:
        return (token_ids >= self.unit_offset) & (token_ids < self.unit_offset + self.num_units)

    def mismatch(self, other: "Vocabulary") -> str | None:
        """How this vocabulary differs from `other`, a speech LM's own (None when they are one): the same tokens at
        the same ids, the units and markers in the same places."""
        layout = ("num_units", "unit_offset", "speech_id", "text_id", "pad_id")
        if differing := [name for name in layout if getattr(self, name) != getattr(other, name)]:
            return ", ".join(f"{name} {getattr(other, name)}, the data's {getattr(self, name)}" for name in differing)
        ours = self.tokenizer.get_vocab()
        moved = [token for token, token_id in other.tokenizer.get_vocab().items() if ours.get(token) != token_id]
        return f"{len(moved)} token(s) with other ids (e.g. {moved[0]!r})" if moved else None

    def base_mismatch(self, base_tokenizer) -> str | None:
        """How this vocabulary's text part differs from `base_tokenizer` (None when it extends exactly that one).

        Every token of the base must keep its id, the units must start right after it, and the
        special ids must agree: otherwise a TWIST model would read its pretrained rows as other
        tokens (a text LM's marker rows as units, say) without any error.
        """
        if len(base_tokenizer) != self.unit_offset:
            return f"{len(base_tokenizer)} tokens, but the data's text tokens are {self.unit_offset}"
        ours = self.tokenizer.get_vocab()
        moved = [token for token, token_id in base_tokenizer.get_vocab().items() if ours.get(token) != token_id]
        if moved:
            return f"{len(moved)} token(s) with other ids (e.g. {moved[0]!r})"
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(base_tokenizer, name) != getattr(self.tokenizer, name):
                return f"{name} {getattr(base_tokenizer, name)}, the data's is {getattr(self.tokenizer, name)}"
        return None


def speech_vocabulary(folder: str | os.PathLike) -> "Vocabulary | None":
    """The vocabulary of a speech LM's folder (one with units: a run's model/, a slamkit conversion), or None (a
    text LM's, whose vocabulary a `simslm textlm` member records with no units, or no vocabulary at all)."""
    path = Path(folder)
    if not (path / VOCAB_FILE).is_file() or not storage.read_json(path / VOCAB_FILE).get("num_units"):
        return None
    return Vocabulary.load(path)


def load_base_tokenizer(base: str):
    """An HF tokenizer from a folder or hub id, a SentencePiece .model or .gguf file, or an asset holding one."""
    from transformers import AutoTokenizer, LlamaTokenizer

    path = Path(base)
    if assets.missing_local_path(base):
        raise ValueError(f"{base}: no such tokenizer file or folder")
    if complaint := assets.run_folder_in_place_of_model(base) or assets.hub_model_problem(base, "tokenizer_config.json"):
        raise ValueError(complaint)
    if not path.exists() and base in assets.REGISTRY:
        path = assets.file_with_suffix(base, ".model")
    if path.is_file() and path.suffix == ".model":
        # transformers reads a SentencePiece model as a Llama tokenizer from a folder
        # holding it as tokenizer.model (same pieces and ids as sentencepiece itself).
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(path, Path(folder) / "tokenizer.model")
            return LlamaTokenizer.from_pretrained(folder)
    try:
        if path.is_file() and path.suffix == ".gguf":  # the tokenizer a GGUF checkpoint carries
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError, struct.error) as error:  # struct: a GGUF cut short
        raise ValueError(f"cannot load tokenizer '{base}' ({error})") from None
