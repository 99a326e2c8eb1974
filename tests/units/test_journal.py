
import pytest


def test_a_pool_worker_that_died_is_told_from_those_the_pool_stopped(tmp_path):
    """When a worker dies, the pool stops the others (SIGTERM): only the one that ended by itself is reported, and
    only its shard's attempt is marked as a death, naming what it was encoding."""
    import socket
    import time

    from simslm import jobs
    from simslm.units.journal import ShardJournal, _note_dead_workers, with_what_was_encoded

    started = time.monotonic()
    with pytest.raises(jobs.WorkerDied, match="killed by SIGKILL: out of memory, most likely") as raised:
        list(jobs.parallel_map(_die_or_wait, [0, 1], num_workers=2))
    # Seen when it happens, not when the other worker's task ends 30 s later (Python 3.11's executor watched
    # only the processes it had started before the last wake-up of its manager thread).
    assert time.monotonic() - started < 20
    assert list(raised.value.ended.values()) == [-9]
    culprit, stopped = next(iter(raised.value.ended)), 999_999_999
    shards = tmp_path / "shards"
    shards.mkdir()
    for index, pid, ids in ((0, culprit, ["long"]), (1, stopped, ["short-a", "short-b"])):
        journal = ShardJournal.of(shards / f"shard-{index:05d}.jsonl")
        journal.note({"attempt": {"pid": pid, "host": socket.gethostname(), "in_process": False}})
        journal.note({"encoding": ids, "seconds": 3600.0})
    told = with_what_was_encoded(raised.value, shards, "those are encoded one at a time")
    assert isinstance(told, jobs.WorkerDied) and str(told) == (  # said by the command in one line, as a user's data
        "a parallel job: a worker process ended abruptly (killed by SIGKILL: out of memory, most likely) while "
        "encoding shard-00000: long (3600.0 s of audio); re-run (with fewer workers if memory is short): those are "
        "encoded one at a time")
    assert _note_dead_workers(shards, raised.value) == []  # marked once
    assert ShardJournal.of(shards / "shard-00000.jsonl").earlier_deaths().suspects == {"long"}
    assert ShardJournal.of(shards / "shard-00001.jsonl").earlier_deaths().suspects == set()


def test_what_a_shard_journal_holds_against_its_utterances(tmp_path):
    """Only deaths count (a stop in Python does not); a group that died goes one at a time next; two deaths alone
    skip an utterance; an utterance encoded whole by a later attempt is cleared of what was held against it."""
    from simslm.units.journal import ShardJournal

    journal = ShardJournal.of(tmp_path / "shard-00000.jsonl")
    attempts = [(False, [["a", "b", "c"]], {"died": -9}),  # a pool's worker killed on a batch
                (True, [["a"], ["b"], ["c"]], None),  # the command's own process killed: c alone
                (True, [["c"]], {"stopped": True}),  # Ctrl-C on c: not a death
                (True, [["c"]], None)]  # killed on c alone again
    for in_process, groups, last in attempts:
        journal.note({"attempt": {"pid": 1, "host": "h", "in_process": in_process}})
        for group in groups:
            journal.note({"encoding": group, "seconds": 1.0})
        if last:
            journal.note(last)
    deaths = journal.earlier_deaths()
    assert deaths.suspects == {"c"} and deaths.fatal == {"c": 2}
    journal.note({"attempt": {"pid": 2, "host": "h", "in_process": True}})
    for group in (["c"], ["d"]):  # c encoded whole this time (a node lost, twice, say): cleared; d killed
        journal.note({"encoding": group, "seconds": 1.0})
    deaths = journal.earlier_deaths()
    assert deaths.suspects == {"d"} and deaths.fatal == {}


def test_a_death_noted_after_a_torn_line_still_counts(tmp_path):
    """A worker killed while writing its line (the OOM killer strikes anywhere) leaves it torn; the parent's note of
    the death, appended to it, was one unreadable line with it: the death lost. It starts a line of its own now,
    as a new attempt's header does."""
    from simslm.units.journal import ShardJournal

    worker = ShardJournal.of(tmp_path / "shard-00000.jsonl")
    worker.begin(in_process=False)
    worker.note({"encoding": ["a", "b"], "seconds": 1.0})
    worker._handle.write('{"encoding": ["c"], "sec')  # killed mid-line
    worker._handle.close()
    ShardJournal.of(tmp_path / "shard-00000.jsonl").note({"died": -9})  # the parent, which saw it die
    assert ShardJournal.of(tmp_path / "shard-00000.jsonl").earlier_deaths().suspects == {"a", "b"}
    again = ShardJournal.of(tmp_path / "shard-00000.jsonl")
    with open(again.path, "a") as handle:
        handle.write('{"encod')  # torn again; the next attempt's header is kept
    again.begin(in_process=True)
    again._handle.close()
    assert len(again.attempts()) == 2 and again.attempts()[1][0]["in_process"]


def test_a_read_clears_a_death_while_reading_and_only_an_encoding_clears_the_rest(tmp_path):
    from simslm.units.journal import ShardJournal

    journal = ShardJournal.of(tmp_path / "shard-00000.jsonl")
    for groups in ([("encoding", ["x"])],  # killed encoding x alone
                   [("reading", ["x", "y", "z"])],  # killed reading the shard
                   [("reading", ["x"]), ("reading", ["y"])]):  # x read alone; killed reading y alone
        journal.note({"attempt": {"pid": 1, "host": "h", "in_process": True}})
        for kind, group in groups:
            journal.note({kind: group, "seconds": 1.0})
    deaths = journal.earlier_deaths()
    # x's read passed, which clears it of the shard's reading but not of its death encoding alone.
    assert deaths.reading == {"y", "z"} and deaths.suspects == {"x"} and deaths.last == ("reading", ("y",))
    assert deaths.fatal == {}  # x once alone (encoding), y once alone (reading)
    journal.note({"attempt": {"pid": 1, "host": "h", "in_process": True}})
    journal.note({"reading": ["x"], "seconds": 1.0})
    journal.note({"encoding": ["x"], "seconds": 1.0})  # killed encoding x alone again: the second time
    assert journal.earlier_deaths().fatal == {"x": 2}


def _die_or_wait(task: int) -> int:
    import os
    import signal
    import time

    time.sleep(0.5)
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)
    return task

