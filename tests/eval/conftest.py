import pytest

from simslm.model import build_family_model
from simslm.sequences.vocabulary import Vocabulary


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.build("stories260K", num_units=32)


@pytest.fixture(scope="module")
def tiny_model(vocabulary):
    return build_family_model(2, len(vocabulary), seed=3, context_length=128)


@pytest.fixture
def nan_model(trained_run, tmp_path):
    """A copy of the trained run's model folder with one weight NaN (as a last update that overflowed leaves it)."""
    import shutil

    from safetensors.torch import load_file, save_file

    run, _ = trained_run
    folder = tmp_path / "nan-model"
    shutil.copytree(run / "model", folder)
    (folder / "eval.json").unlink(missing_ok=True)
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
