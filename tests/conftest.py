"""Test set-up: assets come from the offline mirror (../shared/data), never the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SIMSLM_MIRROR", str(REPO.parent / "shared" / "data"))
os.environ["SIMSLM_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test writes its cache (downloads, checksum record) to a fresh folder."""
    monkeypatch.setenv("SIMSLM_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = Path(os.environ["SIMSLM_MIRROR"])
    assert path.is_dir(), f"offline mirror {path} is missing: set SIMSLM_MIRROR to shared/data"
    return path


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """Four TinyStories stories synthesised with the training voices (2 workers)."""
    from simslm.synth import SynthConfig, synthesize_corpus

    out_dir = tmp_path_factory.mktemp("synth")
    report = synthesize_corpus(SynthConfig(out_dir=str(out_dir), limit=4, num_workers=2))
    assert report.num_synthesized == 4, report
    return out_dir / "manifest.jsonl"
