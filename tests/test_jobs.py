import json
import os

import pytest

from simslm import jobs


def test_journal_ignores_a_torn_last_line_and_appends_after_it(tmp_path):
    journal = jobs.Journal(tmp_path / "done.jsonl")
    journal.append({"id": "a", "value": 1})
    with open(journal.path, "a") as handle:
        handle.write('{"id": "b", "val')  # killed mid-write
    assert set(journal.read()) == {"a"}
    journal.append({"id": "c", "value": 3})
    assert set(journal.read()) == {"a", "c"}


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    jobs.write_json(path, {"good": True})
    with pytest.raises(RuntimeError), jobs.atomic_path(path) as temporary:
        temporary.write_text('{"half": ')
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"good": True}
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), jobs.atomic_path(final) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with jobs.atomic_path(final) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_the_temporary_name_keeps_the_suffix_writers_check(tmp_path):
    import numpy as np

    with jobs.atomic_path(tmp_path / "shard.npy") as temporary:
        assert temporary.suffix == ".npy" and temporary.parent == tmp_path
        np.save(temporary, np.arange(3))  # np.save would add .npy to a name without it
    assert np.load(tmp_path / "shard.npy").tolist() == [0, 1, 2]


def _square(x):
    return x * x


@pytest.mark.parametrize("num_workers", [1, 2])
def test_parallel_map_covers_every_task(num_workers):
    assert sorted(jobs.parallel_map(_square, range(6), num_workers=num_workers, total=6)) == [0, 1, 4, 9, 16, 25]
