import numpy as np

from simslm.sequences.loader import PackedLoader


def test_loader_resumes_at_exactly_the_next_batch(build):
    _, out = build(context_length=64, num_epochs=2)
    reference = PackedLoader(out, batch_size=3, seed=5)
    per_epoch = reference.batches_per_epoch()
    uninterrupted = [next(reference) for _ in range(2 * per_epoch + 4)]  # runs past two epochs
    first = PackedLoader(out, batch_size=3, seed=5)
    for _ in range(per_epoch + 2):
        next(first)
    state = first.state_dict()
    resumed = PackedLoader(out, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    for expected in uninterrupted[per_epoch + 2:]:
        batch = next(resumed)
        assert np.array_equal(batch.tokens, expected.tokens) and np.array_equal(batch.positions, expected.positions)
    assert not np.array_equal(uninterrupted[0].tokens, uninterrupted[per_epoch].tokens)  # a new order each epoch


def test_ranks_split_each_global_batch(build):
    _, out = build(context_length=64, num_epochs=1)
    ranks = [PackedLoader(out, batch_size=2, rank=r, world_size=2) for r in range(2)]
    seen = [np.concatenate([next(loader).tokens for _ in range(ranks[0].batches_per_epoch())]) for loader in ranks]
    rows = {tuple(row) for part in seen for row in part}
    assert len(rows) == sum(len(part) for part in seen)  # no chunk read twice


def test_a_state_saved_by_more_processes_resumes_where_they_all_stopped(build):
    _, out = build(context_length=64, num_epochs=1)
    single = PackedLoader(out, batch_size=2)
    uninterrupted = [next(single).tokens for _ in range(single.batches_per_epoch())]
    pair = [PackedLoader(out, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):  # 3 global batches of 2 x 2 rows: rows 0-11 of the epoch's order
        for loader in pair:
            next(loader)
    resumed = PackedLoader(out, batch_size=2)
    resumed.load_state_dict(pair[0].state_dict())
    assert np.array_equal(next(resumed).tokens, uninterrupted[6])  # the one process reads rows 12-13 next
    # On 5 processes, global batches are rows 0-9, 10-19, 20-29: the second holds rows 10-11, already read, so
    # they start at the third (none read twice), rank 0 at rows 20-21.
    assert len(uninterrupted) >= 11
    first_of_five = PackedLoader(out, batch_size=2, rank=0, world_size=5)
    first_of_five.load_state_dict(pair[1].state_dict())
    assert np.array_equal(next(first_of_five).tokens, uninterrupted[10])


def test_training_past_the_built_epochs_reads_them_again_in_a_new_order(build):
    # One epoch built and trained three times: slamkit's num_train_epochs over the samples prepare_tokens wrote once.
    _, out = build(context_length=64, num_epochs=1)
    loader = PackedLoader(out, batch_size=1, seed=2)
    per_epoch = loader.batches_per_epoch()
    epochs = [[tuple(next(loader).tokens[0]) for _ in range(per_epoch)] for _ in range(3)]
    built = [tuple(row) for row in loader.chunks(0)]
    assert all(sorted(epoch) == sorted(built) for epoch in epochs)  # every row once per epoch, all the same rows
    assert epochs[0] != epochs[1] != epochs[2]


def test_an_epoch_in_many_shard_files_reads_as_one_without_loading_them(build, tmp_path):
    from simslm.sequences.loader import ShardedRows

    _, whole = build(context_length=64, num_epochs=1)
    (tmp_path / "seq").rename(tmp_path / "whole")
    _, split = build(context_length=64, num_epochs=1, chunks_per_shard=3)  # the same rows in files of 3
    one, many = PackedLoader(tmp_path / "whole", batch_size=4, seed=1), PackedLoader(split, batch_size=4, seed=1)
    rows = many.chunks(0)
    assert isinstance(rows, ShardedRows) and len(rows.parts) > 2
    assert all(isinstance(part, np.memmap) for part in rows.parts)  # mapped, not read
    assert np.array_equal(np.asarray(rows), np.asarray(one.chunks(0)))
    assert np.array_equal(rows[len(rows) - 1], rows[-1]) and np.array_equal(rows[4], np.asarray(rows)[4])
    assert [tuple(row) for row in rows] == [tuple(row) for row in np.asarray(rows)]
    for _ in range(2 * one.batches_per_epoch() + 1):
        a, b = next(one), next(many)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.positions, b.positions)


_FEW_FILES = """
import resource, sys
from simslm.sequences.loader import PackedLoader
soft, hard = (int(n) for n in sys.argv[2:4])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
loader = PackedLoader(sys.argv[1], batch_size=2)
for _ in range(3 * loader.batches_per_epoch()):  # across the built epochs, and past them
    next(loader)
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_an_epoch_of_more_shard_files_than_ulimit_allows_raises_the_limit_or_says_so(build, tmp_path):
    """Each memory-mapped shard holds a file open, and every epoch read stayed open: an epoch of 10B tokens is
    2,400 files, past the soft limit of 1,024 many clusters' nodes set, and the run died of "Too many open files"
    at its first batch."""
    import subprocess
    import sys

    from simslm import machine, storage

    _, out = build(context_length=64, num_epochs=2, chunks_per_shard=1)
    counts = [len(epoch["shards"]) for epoch in storage.read_json(f"{out}/index.json")["epochs"]]
    files = counts[0]
    assert min(counts) >= 100
    script = tmp_path / "few.py"
    script.write_text(_FEW_FILES)
    # The soft limit too low: raised as far as needed, once an epoch at a time (two epochs held would need more).
    soft = 200
    raised = subprocess.run([sys.executable, str(script), out, str(soft), str(soft + 10 * files)],
                            capture_output=True, text=True)
    assert raised.returncode == 0, raised.stderr
    # The tokens and positions of one epoch, and what the interpreter holds (about 10 files).
    assert soft < int(raised.stdout) <= 2 * max(counts) + machine.SPARE_OPEN_FILES + 60
    # The hard limit too low: one line saying which folder needs how many, and what to do.
    refused = subprocess.run([sys.executable, str(script), out, "200", "200"], capture_output=True, text=True)
    assert refused.returncode != 0
    assert f"{out}: epoch 0 is {files} shard files" in refused.stderr
    assert "build it with a larger --chunks-per-shard, or raise `ulimit -n`" in refused.stderr


def test_a_folder_built_again_under_a_reader_is_refused_at_its_next_epoch(build):
    """The loader opens an epoch's shards when it comes to it: a build into the same folder meanwhile (`sequences
    build --overwrite` while a sweep's runs read it) had a run go on with the next epoch of other data."""
    import pytest

    _, out = build(context_length=64, num_epochs=2)
    loader = PackedLoader(out, batch_size=2)
    next(loader)
    build(context_length=64, num_epochs=2, seed=7, overwrite=True)
    with pytest.raises(ValueError, match="built again while it was being read"):
        for _ in range(2 * loader.batches_per_epoch()):
            next(loader)
