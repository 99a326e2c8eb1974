import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.units.helpers import _DYING_EXTRACTION, _manifest_records


def test_codebook_sidecar_records_encoder_rate_and_corpus(extracted):
    config, _, _ = extracted
    meta = json.loads(open(config.codebook.replace(".npy", ".json")).read())
    assert meta["encoder"]["name"] == "logmel" and meta["frame_rate_hz"] == 25.0 and meta["k"] == 32
    assert len(meta["corpus_hash"]) == 16 and meta["num_utterances"] == 4


def test_a_codebook_from_too_few_frames_is_refused(synthetic_corpus, tmp_path):
    from simslm.units.fit import FitConfig, fit_codebook

    with pytest.raises(ValueError, match="at least 50000 are needed"):
        fit_codebook(FitConfig(manifest=str(synthetic_corpus), out=str(tmp_path / "km"), num_units=5000,
                               num_workers=1))
    assert not (tmp_path / "km.npy").exists()


def test_a_codebook_does_not_depend_on_the_order_its_workers_finish_in(synthetic_corpus, tmp_path, monkeypatch):
    from simslm import jobs
    from simslm.units import kmeans
    from simslm.units.fit import FitConfig, fit_codebook

    config = FitConfig(manifest=str(synthetic_corpus), out=str(tmp_path / "in-order"), num_units=16, num_workers=1)
    in_order = kmeans.Codebook.load(fit_codebook(config)).centroids
    assert np.array_equal(in_order, kmeans.Codebook.load(fit_codebook(config)).centroids)  # k-means itself repeats
    in_process = jobs.parallel_map

    def last_first(function, tasks, **options):  # as workers finishing in another order would yield them
        yield from reversed(list(in_process(function, tasks, **options)))

    monkeypatch.setattr(jobs, "parallel_map", last_first)
    finished_otherwise = fit_codebook(dataclasses.replace(config, out=str(tmp_path / "reversed")))
    assert np.array_equal(in_order, kmeans.Codebook.load(finished_otherwise).centroids)


_DYING_FIT = _DYING_EXTRACTION.replace(
    "extract import ExtractConfig, extract_units", "fit import FitConfig, fit_codebook").replace(
    "extract_units(ExtractConfig(**config))", "fit_codebook(FitConfig(**config))")


@pytest.mark.slow
def test_a_codebook_fit_skips_an_utterance_that_ended_the_process_encoding_it_twice(extracted, hubert_codebook,
                                                                                    tmp_path, capsys):
    """`units fit` is not resumable and draws the same seeded sample every time: a recording whose encoding gets
    the process killed (the OOM killer) ended every fit. Its task journal beside the codebook names it: after two
    such deaths the next fit skips it, and says so; and so does a fit after that (it would end two fits more)."""
    import subprocess
    import sys
    from dataclasses import asdict

    from simslm.speech import audio
    from simslm.units.fit import FitConfig, fit_codebook
    from simslm.units.journal import ENDED_THE_PROCESS

    config, _, _ = extracted
    model = json.loads(Path(hubert_codebook).with_suffix(".json").read_text())["encoder"]["model_path"]
    fit = FitConfig(manifest=config.manifest, out=str(tmp_path / "km"), encoder="mhubert-25hz", model_path=model,
                    layer=2, num_units=2, num_workers=1)
    lengths = {r["id"]: len(audio.load_audio(r["path"])) for r in _manifest_records(config.manifest)
               if Path(r["path"]).stat().st_size > 100}  # the empty and corrupt files aside
    longest = max(lengths, key=lengths.get)
    limit = sorted(lengths.values())[-2] + 2 * 40
    said = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _DYING_FIT, str(limit), json.dumps(asdict(fit))],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == -9, done.stderr
        said.append(done.stderr)
    assert f"an earlier run's process ended while running {longest}; running it again" in said[1]
    capsys.readouterr()
    for _ in range(2):  # this fit skips it, and a later one into the same codebook still does
        meta = json.loads(fit_codebook(fit).with_suffix(".json").read_text())
        assert f"skipping {longest}: it ended the process running it in 2 earlier runs" in capsys.readouterr().err
        assert meta["skipped_by_reason"][ENDED_THE_PROCESS] == 1
        assert meta["num_utterances"] == len(lengths) - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".km.fit.lock", ".km.fit.running", "km.json", "km.npy"]


def test_fitting_on_a_device_there_is_none_of_is_one_line(synthetic_corpus, tmp_path, capsys):
    import torch

    from simslm.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["units", "fit", "--manifest", str(synthetic_corpus), "--out", str(tmp_path / "km"),
                 "--device", "cuda"]) == 2
    assert "--device cuda: torch sees no CUDA device here" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_corpus_hash_survives_moving_the_corpus_and_the_manifest_is_recorded_portably(extracted, tmp_path):
    from simslm import storage
    from simslm.units.fit import corpus_hash

    records = [{"id": "b", "path": "/data/one/audio/b.flac"}, {"id": "a", "path": "/data/one/audio/a.flac"}]
    moved = [{**record, "path": record["path"].replace("/data/one", str(tmp_path / "two"))} for record in records]
    assert corpus_hash(records, "/data/one") == corpus_hash(moved, tmp_path / "two")
    assert corpus_hash(records, "/data/one") != corpus_hash(records[:1], "/data/one")
    # Relative to another folder the same files read as other paths: the root is part of what is hashed.
    assert corpus_hash(records, "/data/one") != corpus_hash(records, "/data")
    config, _, _ = extracted
    codebook = config.codebook.replace(".npy", ".json")
    recorded = json.loads(open(codebook).read())["manifest"]
    assert not recorded["relative"].startswith("/")
    assert storage.placed_path(recorded, os.path.dirname(codebook)).exists()


def test_faiss_is_a_dependency_so_the_kmeans_backend_does_not_depend_on_the_install():
    """`setup.sh` (no extras) once left faiss out, and `--backend auto` then fit the demo's codebook with
    scikit-learn: other units, other results than after `setup.sh --dev`."""
    from importlib.metadata import requires

    from simslm.units import kmeans

    unconditional = [r.split(";")[0].replace(" ", "") for r in requires("simslm") if "extra ==" not in r]
    assert any(r.startswith("faiss-cpu") for r in unconditional)
    assert kmeans.available_backend() == "faiss"

