"""The sequences every training test trains on."""

import pytest


@pytest.fixture(scope="module")
def data(speech_sequences):
    return speech_sequences

