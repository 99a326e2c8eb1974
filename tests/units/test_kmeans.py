import json
import pickle

import numpy as np
import pytest

from simslm.units import kmeans


def _blobs(seed=0, k=4, per_cluster=300, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(k, dim))
    points = np.concatenate([c + rng.normal(size=(per_cluster, dim)) for c in centres])
    return centres, points.astype(np.float32)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_fit_recovers_well_separated_clusters(backend):
    centres, points = _blobs()
    centroids = kmeans.fit(points, 4, backend=backend, seed=1)
    nearest = np.linalg.norm(centroids[:, None] - centres[None], axis=2).min(axis=1)
    assert nearest.max() < 0.5


def test_assign_matches_brute_force():
    rng = np.random.default_rng(0)
    codebook = kmeans.Codebook(rng.normal(size=(50, 16)).astype(np.float32))
    features = rng.normal(size=(1000, 16)).astype(np.float32)
    brute = np.linalg.norm(features[:, None] - codebook.centroids[None], axis=2).argmin(axis=1)
    assert np.array_equal(codebook.assign(features, chunk_frames=128), brute)
    with pytest.raises(ValueError, match="do not match"):
        codebook.assign(features[:, :8])


def test_save_load_round_trip_with_sidecar(tmp_path):
    codebook = kmeans.Codebook(np.arange(12, dtype=np.float32).reshape(3, 4), {"encoder": {"name": "logmel"}})
    path = codebook.save(tmp_path / "km")
    loaded = kmeans.Codebook.load(path)
    assert np.array_equal(loaded.centroids, codebook.centroids)
    assert loaded.meta == {"encoder": {"name": "logmel"}, "k": 3, "dim": 4, "codebook_sha256": codebook.sha256}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["km.json", "km.npy"]


def test_a_codebook_is_named_with_or_without_its_ending_and_dots_stay_in_its_name(tmp_path):
    """`--out codebooks/hubert.L11.k500` wrote hubert.L11.npy and hubert.L11.json: the name's last dotted part was
    taken for a suffix and replaced."""
    assert kmeans.codebook_path("a/km") == kmeans.codebook_path("a/km.npy") == kmeans.codebook_path("a/km.json")
    assert str(kmeans.codebook_path("a/km")) == "a/km.npy"
    codebook = kmeans.Codebook(np.ones((2, 3), dtype=np.float32))
    assert codebook.save(tmp_path / "hubert.L11.k500") == tmp_path / "hubert.L11.k500.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hubert.L11.k500.json", "hubert.L11.k500.npy"]
    for name in ("hubert.L11.k500", "hubert.L11.k500.npy", "hubert.L11.k500.json"):
        assert kmeans.Codebook.load(tmp_path / name).k == 2


def test_centroids_and_a_sidecar_written_for_others_are_refused(tmp_path, monkeypatch):
    """Each file is written atomically, but not the pair: a fit into an existing codebook stopped between them left
    the new centroids beside the old sidecar (another encoder, corpus, k), and both loaded as one codebook."""
    old = kmeans.Codebook(np.zeros((3, 4), dtype=np.float32), {"encoder": {"name": "logmel"}})
    path = old.save(tmp_path / "km")
    new = kmeans.Codebook(np.ones((3, 4), dtype=np.float32), {"encoder": {"name": "mhubert-25hz"}})
    monkeypatch.setattr(kmeans.storage, "write_json", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    with pytest.raises(ValueError, match="km.npy: not the centroids km.json describes"):
        kmeans.Codebook.load(path)
    monkeypatch.undo()
    new.save(path)
    assert kmeans.Codebook.load(path).meta["encoder"] == {"name": "mhubert-25hz"}
    # A sidecar written before it held the digest is read as it was.
    sidecar = json.loads(path.with_suffix(".json").read_text())
    del sidecar["codebook_sha256"]
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    assert np.array_equal(kmeans.Codebook.load(path).centroids, new.centroids)


def test_a_pickled_array_is_never_loaded(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain .npy"):
        kmeans.Codebook.load(tmp_path / "evil.npy")


def test_published_pickles_convert_only_with_explicit_trust(tmp_path):
    from sklearn.cluster import KMeans

    _, points = _blobs()
    model = KMeans(n_clusters=4, n_init=1, random_state=0).fit(points)
    (tmp_path / "km500.bin").write_bytes(pickle.dumps(model))
    with pytest.raises(ValueError, match="a pickle, and loading a pickle can run arbitrary code.*--trust-pickle"):
        kmeans.convert_pickled(tmp_path / "km500.bin", tmp_path / "out")
    path = kmeans.convert_pickled(tmp_path / "km500.bin", tmp_path / "out", trust_pickle=True)
    assert np.allclose(kmeans.Codebook.load(path).centroids, model.cluster_centers_)


def test_too_few_frames_is_an_error():
    with pytest.raises(ValueError, match="needs at least 10 frames"):
        kmeans.fit(np.zeros((5, 2), np.float32), 10)
