import pytest

from simslm.model import build_family_model
from simslm.sequences.vocabulary import Vocabulary


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.build("stories260K", num_units=32)


@pytest.fixture(scope="module")
def tiny_model(vocabulary):
    return build_family_model(2, len(vocabulary), seed=3, context_length=128)
