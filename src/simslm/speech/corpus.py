"""Text corpora: JSONL or plain text files, or named assets, optionally sliced as name[start:stop]."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

from simslm import assets, storage


def split_corpus_spec(spec: str) -> tuple[str, int, int | None]:
    """`name[start:stop]` -> (name, start, stop): a slice of a corpus's lines, e.g. a held-out tail.

    Line indices keep counting from the corpus's first line, so ids made from them (and a
    check that a benchmark shares no story with training) stay valid across slices.
    """
    match = re.fullmatch(r"(.+?)\[(\d*):(\d*)\]", spec)
    if not match:
        return spec, 0, None
    name, start, stop = match.groups()
    return name, int(start or 0), int(stop) if stop else None


def portable_corpus(spec: str, folder: str | os.PathLike) -> dict[str, str] | None:
    """How a file written into `folder` records a corpus spec that names a file or folder (`name[start:stop]`):
    `storage.portable_path` of it with its slice; None for an asset's name (the same from anywhere)."""
    name = split_corpus_spec(spec)[0] if spec else None
    if not name or not Path(name).exists():
        return None
    return {**storage.portable_path(name, folder), "slice": spec[len(name):]}


def placed_corpus(recorded: dict[str, str], folder: str | os.PathLike) -> str:
    """A corpus spec recorded by `portable_corpus` in a file in `folder`, as one that reads from here."""
    return f"{storage.placed_path(recorded, folder)}{recorded.get('slice', '')}"


def read_corpus(spec: str, text_field: str = "text") -> Iterator[tuple[int, str | None, str]]:
    """`read_texts` over an asset or path, restricted to the slice a `name[start:stop]` spec names."""
    name, start, stop = split_corpus_spec(spec)
    for index, value, problem in read_texts(assets.resolve_file(name), text_field):
        if stop is not None and index >= stop:
            break
        if index >= start:
            yield index, value, problem


def read_texts(path: str | os.PathLike, text_field: str = "text") -> Iterator[tuple[int, str | None, str]]:
    """Yield (line index, text or None, problem) for each line of a .jsonl or .txt corpus."""
    path = Path(path)
    is_jsonl = path.suffix in (".jsonl", ".json")
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a text corpus (.txt or .jsonl)")
    for index, (line, problem) in enumerate(storage.text_lines(path)):
        if problem:
            yield index, None, problem  # skipped and counted, as a line that is not JSON is
            continue
        if not is_jsonl:
            yield index, line.rstrip("\n"), ""
            continue
        try:
            record = json.loads(line)
            value = record[text_field]
            if not isinstance(value, str):
                raise TypeError
            yield index, value, ""
        except json.JSONDecodeError:
            yield index, None, "line is not valid JSON"
        except (KeyError, TypeError):
            yield index, None, f"no string field '{text_field}'"

