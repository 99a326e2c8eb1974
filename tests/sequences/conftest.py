import numpy as np
import pytest

from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech.manifest import read_manifest
from simslm.units.folder import read_units


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.build("stories260K", 32)


@pytest.fixture(scope="module")
def corpus(extracted):
    config, _, _ = extracted
    units = {u.id: u for u in read_units(config.out)}
    utterances = [u for u in read_manifest(config.manifest) if u.words and u.id in units]
    return utterances, units


@pytest.fixture
def build(extracted, tmp_path):
    """Build sequences of the extracted corpus into tmp_path/seq with the given option changes."""
    def run(**changes):
        config, _, _ = extracted
        options = {"out": str(tmp_path / "seq"), "manifest": config.manifest, "units": config.out,
                   "text_corpus": "tinystories-sample", "context_length": 256, "num_epochs": 2, **changes}
        return build_sequences(BuildConfig(**options)), options["out"]
    return run


def epoch_documents(out, entry):
    """The documents of one epoch's rows (pieces of at most the context), as token tuples, sorted; `entry` is the
    epoch's record in index.json."""
    folder = f"{out}/epoch-{entry['epoch']:03d}"
    rows = np.concatenate([np.load(f"{folder}/{name}") for name in entry["shards"]])
    positions = np.concatenate([np.load(f"{folder}/{name}") for name in entry["position_shards"]])
    pad = Vocabulary.load(f"{out}/tokenizer").pad_id
    return sorted(tuple(row[a:b].tolist()) for row, position in zip(rows, positions)
                  for a, b in zip(np.flatnonzero(position == 0), [*np.flatnonzero(position == 0)[1:], len(row)])
                  if row[a] != pad)
