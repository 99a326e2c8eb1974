import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simslm import storage


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    storage.write_json(path, {"good": True})
    with pytest.raises(RuntimeError), storage.atomic_path(path) as temporary:
        temporary.write_text('{"half": ')
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"good": True}
    assert os.listdir(tmp_path) == ["result.json"]


def test_writing_a_file_where_a_folder_is_names_the_folder(tmp_path):
    # The rename failed naming the temporary file (".x.123.tmp: is a directory"), which the user never chose.
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match=r"x: a folder, where a file is needed"):
        storage.write_json(tmp_path / "x", {})
    assert os.listdir(tmp_path) == ["x"]
    # The same from a file written through `atomic_path` (a manifest streamed out line by line).
    with pytest.raises(ValueError, match=r"x: a folder, where a file is needed"), storage.atomic_path(
            tmp_path / "x") as temporary:
        temporary.write_text("a line\n")
    assert os.listdir(tmp_path) == ["x"]


def test_a_folder_another_process_filled_meanwhile_is_not_replaced_unless_asked(tmp_path):
    """Two `sequences build` into one new --out: each found it empty, each said "built", and the later one's output
    silently replaced the earlier's."""
    out = tmp_path / "seq"
    with pytest.raises(ValueError, match="seq: another process filled it while this one was building"):
        with storage.atomic_path(out, replace=False) as building:
            building.mkdir()
            (building / "index.json").write_text("mine")
            out.mkdir()  # the other build, finished first
            (out / "index.json").write_text("theirs")
    assert (out / "index.json").read_text() == "theirs" and os.listdir(tmp_path) == ["seq"]
    (out / "index.json").unlink()  # an empty folder (made by the user beforehand) is taken
    with storage.atomic_path(out, replace=False) as building:
        building.mkdir()
        (building / "index.json").write_text("mine")
    assert (out / "index.json").read_text() == "mine"
    with storage.atomic_path(out) as building:  # asked to replace (--overwrite): replaced
        building.mkdir()
        (building / "index.json").write_text("again")
    assert (out / "index.json").read_text() == "again"


def test_a_line_that_is_not_utf8_comes_with_its_own_number_and_the_lines_after_it_are_read(tmp_path):
    # Text mode decodes a block at a time: the error surfaced before the block's first line was seen, so a bad
    # byte on line 3,000 was reported on line 1 (of a small file) or on some line before it.
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"".join(b"line %d\r\n" % n for n in range(1, 3000)) + b"caf\xe9\nlast\n")
    lines = list(storage.text_lines(path))
    assert len(lines) == 3001 and lines[0] == ("line 1\n", "") and lines[-1] == ("last\n", "")
    assert lines[2999] == (None, "not UTF-8 text (byte 4 of the line)")


def test_a_binary_file_read_as_text_is_refused_whole(tmp_path, capsys):
    """A FLAC or .npy given as a manifest or corpus: some of its "lines" decode, and `sequences build --text-corpus
    X.flac` built text samples of them; a manifest's error listed a problem for each of its 472 "lines"."""
    import soundfile

    from simslm.cli import main

    flac = tmp_path / "a.flac"
    soundfile.write(flac, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"a.flac: binary data, not UTF-8 text \(a NUL byte at byte \d+"):
        list(storage.text_lines(flac))
    (tmp_path / "utf16.txt").write_text("Once upon a time\n", encoding="utf-16")
    with pytest.raises(ValueError, match="UTF-16 text must be converted to UTF-8"):
        list(storage.text_lines(tmp_path / "utf16.txt"))
    assert main(["sequences", "build", "--out", str(tmp_path / "seq"), "--streams", "text", "--text-corpus", str(flac),
                 "--context-length", "64"]) == 2
    assert "a.flac: binary data" in capsys.readouterr().err and not (tmp_path / "seq").exists()


def _add_entries(path: str, tag: str, count: int) -> None:
    for index in range(count):
        storage.update_json(path, lambda value: {**value, f"{tag}-{index}": index})


def test_processes_merging_into_one_json_file_keep_each_others_entries(tmp_path):
    # Two `simslm eval` of one run merge into its eval.json. Read and written without a lock, 25 of 200 entries
    # were lost this way (2 processes x 100 merges).
    import multiprocessing

    path = tmp_path / "eval.json"
    workers = [multiprocessing.get_context("fork").Process(target=_add_entries, args=(str(path), tag, 150))
               for tag in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert json.loads(path.read_text()) == {f"{tag}-{index}": index for tag in "ab" for index in range(150)}


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), storage.atomic_path(final) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with storage.atomic_path(final) as staging:
        staging.mkdir()
        (staging / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_folder_never_replaces_a_file_and_a_foreign_folder_is_refused_before_the_work(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ValueError, match="notes.txt: a file, where a folder is needed"), \
            storage.atomic_path(notes) as staging:
        staging.mkdir()
        (staging / "made.txt").write_text("made")
    assert notes.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]
    with pytest.raises(ValueError, match="notes.txt: a file, where a folder is needed; write elsewhere"):
        storage.check_replaceable(notes, "made.json", "a thing made", "write elsewhere")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "a.txt").write_text("theirs")
    with pytest.raises(ValueError, match=r"theirs: not empty, and not a thing made \(no made.json\); write elsewhere"):
        storage.check_replaceable(tmp_path / "theirs", "made.json", "a thing made", "write elsewhere")
    with pytest.raises(ValueError, match=r"theirs: not empty; write elsewhere"):
        storage.check_replaceable(tmp_path / "theirs", None, "", "write elsewhere")
    (tmp_path / "theirs" / "made.json").write_text("{}")
    storage.check_replaceable(tmp_path / "theirs", "made.json", "a thing made", "write elsewhere")  # ours to replace
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nowhere"):
        storage.check_replaceable(path, None, "", "write elsewhere")


def test_the_temporary_name_keeps_the_suffix_writers_check(tmp_path):
    import numpy as np

    with storage.atomic_path(tmp_path / "shard.npy") as temporary:
        assert temporary.suffix == ".npy" and temporary.parent == tmp_path
        np.save(temporary, np.arange(3))  # np.save would add .npy to a name without it
    assert np.load(tmp_path / "shard.npy").tolist() == [0, 1, 2]


def test_portable_paths_follow_their_folder_and_fall_back_to_where_they_were(tmp_path):
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "a" / "sweep").mkdir()
    recorded = storage.portable_path(tmp_path / "a" / "data", tmp_path / "a" / "sweep")
    assert recorded["relative"] == "../data"
    assert storage.placed_path(recorded, tmp_path / "elsewhere") == tmp_path / "a" / "data"  # copied alone
    (tmp_path / "a").rename(tmp_path / "b")
    assert storage.placed_path(recorded, tmp_path / "b" / "sweep") == tmp_path / "b" / "sweep" / ".." / "data"
    assert storage.placed_path("as/given", tmp_path) == Path("as/given")  # older files stored plain strings


def _lock_from_another_process(path) -> str:
    code = ("import sys\nfrom simslm import storage\ntry:\n    with storage.exclusive_lock(sys.argv[1], 'x'):\n"
            "        print('taken')\nexcept storage.Busy:\n    print('refused')")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_an_exclusive_lock_is_refused_to_another_process_at_once_and_taken_again_in_its_own(tmp_path,
                                                                                            lock_held_elsewhere):
    path = tmp_path / "run" / ".lock"
    pid, release = lock_held_elsewhere(path)
    with pytest.raises(storage.Busy, match=rf"^run is busy \(held by process {pid} on .+\)$"):
        with storage.exclusive_lock(path, "run is busy"):
            pass
    release()
    with storage.exclusive_lock(path, "run is busy"):
        with storage.exclusive_lock(tmp_path / "run" / ".." / "run" / ".lock", "run is busy"):  # a sweep, then train
            pass
        assert _lock_from_another_process(path) == "refused"  # the inner block did not release it
    assert _lock_from_another_process(path) == "taken"


def test_a_write_refused_by_the_folders_mode_names_the_file_asked_for(tmp_path):
    """`atomic_path` writes a temporary beside the file first: a folder one may not write into was named through
    that temporary name (".fit.12364.tmp.json: permission denied"), not the file the user asked for."""
    import subprocess
    import sys

    from tests.conftest import as_reader

    folder = tmp_path / "theirs"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        done = subprocess.run([*as_reader(), sys.executable, "-c", "import sys; from simslm import storage; "
                               "storage.write_text(sys.argv[1], 'x')", str(folder / "fit.json")],
                              capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"'{folder / 'fit.json'}'" in last and "PermissionError" in last and ".tmp" not in last

