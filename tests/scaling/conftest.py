"""The sequences every sweep test plans its runs on."""

import pytest


@pytest.fixture(scope="module")
def data(speech_sequences):
    return speech_sequences

