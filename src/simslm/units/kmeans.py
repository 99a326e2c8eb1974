"""k-means codebooks for speech units: fit, assign, save/load, and conversion of published ones.

A codebook is stored as `<name>.npy` (float32 centroids, k x dim) with a JSON sidecar
`<name>.json` (encoder, layer, frame rate, k, the hash of the corpus it was fit on, ...).
Fitting uses faiss when it is installed and scikit-learn otherwise.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simslm import storage


def codebook_path(name: str | os.PathLike) -> Path:
    """The centroids' file a codebook's name stands for: `NAME.npy`, its sidecar being `NAME.json`. A name given
    with either ending is the same codebook; any other ending is part of the name (`hubert.L11.k500` is
    `hubert.L11.k500.npy`, where replacing the suffix would have written `hubert.L11.npy`)."""
    path = Path(name)
    return path.with_suffix(".npy") if path.suffix in (".npy", ".json") else path.with_name(f"{path.name}.npy")


def codebook_files(name: str | os.PathLike) -> list[Path]:
    """Both files a codebook's name stands for: the centroids and their sidecar."""
    return [codebook_path(name), codebook_path(name).with_suffix(".json")]


@dataclass(frozen=True)
class Codebook:
    """k-means centroids plus what they were fit on."""

    centroids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, features: np.ndarray, chunk_frames: int = 65536) -> np.ndarray:
        """Index of the nearest centroid (squared Euclidean distance) for every feature row."""
        if features.ndim != 2 or features.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"features of shape {features.shape} do not match centroids of dim "
                             f"{self.centroids.shape[1]}")
        centroids = self.centroids.astype(np.float32, copy=False)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every c, so drop it.
        squared_norms = (centroids ** 2).sum(axis=1)
        out = np.empty(len(features), dtype=np.int32)
        for start in range(0, len(features), chunk_frames):
            block = features[start:start + chunk_frames].astype(np.float32, copy=False)
            out[start:start + len(block)] = np.argmin(squared_norms - 2.0 * block @ centroids.T, axis=1)
        return out

    @property
    def sha256(self) -> str:
        """The digest of the float32 centroids (units.json's `codebook_sha256`)."""
        return hashlib.sha256(self.centroids.astype(np.float32, copy=False).tobytes()).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write `<path>.npy` and its JSON sidecar, each atomically; return the .npy path. The sidecar holds the
        centroids' digest: a process stopped between the two files (a fit again into the same codebook) leaves the
        new centroids beside the old sidecar, which `load` then refuses rather than describe them with it."""
        path = codebook_path(path)
        with storage.atomic_path(path) as temporary:
            np.save(temporary, self.centroids.astype(np.float32))
        storage.write_json(path.with_suffix(".json"), {**self.meta, "k": self.k, "dim": int(self.centroids.shape[1]),
                                                       "codebook_sha256": self.sha256})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Codebook":
        """Read a codebook saved by `save` (never unpickles: `allow_pickle=False`)."""
        if Path(path).is_dir():  # taken as the name `FOLDER.npy`, said as a missing file beside the folder
            found = sorted(p.name for p in Path(path).glob("*.npy") if p.with_suffix(".json").exists())
            raise ValueError(f"{path}: a folder, where a k-means codebook is needed (NAME.npy beside NAME.json)"
                             + (f"; it holds {', '.join(found[:3])}" if found else ""))
        path = codebook_path(path)
        if not path.exists():
            raise ValueError(f"{path}: no such k-means codebook")
        try:
            centroids = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{path}: not a plain .npy array of centroids ({error})") from None
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] < 1:
            raise ValueError(f"{path}: centroids must be a k x dim array with k, dim >= 1, found shape "
                             f"{centroids.shape}")
        if not np.issubdtype(centroids.dtype, np.number) or not np.isfinite(centroids).all():
            raise ValueError(f"{path}: centroids must be finite numbers (found NaN, inf or non-numbers)")
        sidecar = path.with_suffix(".json")
        meta = storage.read_json(sidecar) if sidecar.exists() else {}
        if meta.get("dim") not in (None, centroids.shape[1]):
            raise ValueError(f"{path}: centroids of dimension {centroids.shape[1]}, but {sidecar.name} says the "
                             f"encoder gives {meta['dim']}")
        codebook = cls(centroids=centroids.astype(np.float32), meta=meta)
        if meta.get("codebook_sha256") not in (None, codebook.sha256):  # sidecars before 2026-12-06 hold none
            raise ValueError(f"{path}: not the centroids {sidecar.name} describes (their digest differs): a fit or "
                             f"conversion into it was stopped between the two files, or one was replaced; write "
                             f"the codebook again")
        return codebook


def available_backend() -> str:
    """'faiss' when faiss-cpu is importable, else 'sklearn'."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "sklearn"
    return "faiss"


def fit(features: np.ndarray, k: int, *, seed: int = 0, backend: str = "auto", num_iterations: int = 50) -> np.ndarray:
    """Fit k-means centroids (k x dim, float32) on feature rows."""
    if len(features) < k:
        raise ValueError(f"k-means with k={k} needs at least {k} frames, got {len(features)}")
    backend = available_backend() if backend == "auto" else backend
    features = np.ascontiguousarray(features, dtype=np.float32)
    if backend == "faiss":
        import faiss

        model = faiss.Kmeans(features.shape[1], k, niter=num_iterations, seed=seed, verbose=False,
                             max_points_per_centroid=max(256, len(features) // k + 1))
        model.train(features)
        return np.asarray(model.centroids, dtype=np.float32)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, n_init=1, max_iter=num_iterations, random_state=seed)
        return model.fit(features).cluster_centers_.astype(np.float32)
    raise ValueError(f"unknown k-means backend '{backend}' (faiss, sklearn or auto)")


def convert_pickled(path: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False,
                    meta: dict[str, Any] | None = None) -> Path:
    """Convert a published pickled scikit-learn k-means (e.g. TWIST's km500.bin) to .npy + JSON.

    Unpickling runs code from the file, so it happens only with `trust_pickle=True`; the
    result is a plain array that later loads never unpickle.
    """
    if not trust_pickle:
        raise ValueError(f"{path}: a pickle, and loading a pickle can run arbitrary code; "
                         f"convert it once with --trust-pickle if you trust its source")
    import joblib

    model = joblib.load(path)
    centroids = getattr(model, "cluster_centers_", None)
    if centroids is None:
        raise ValueError(f"{path}: the pickled object has no cluster_centers_ (not a k-means model)")
    return Codebook(np.asarray(centroids, dtype=np.float32),
                    {**(meta or {}), "converted_from": str(path)}).save(out)
