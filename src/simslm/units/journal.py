"""A shard's journal: what a process was reading or encoding when it ended without a word.

An utterance that ends the process encoding it (the kernel's OOM killer under a job's memory
limit raises no Python error) would otherwise end every run of an extraction at the same
shard. The journal beside each shard says which group a dead process held; the next attempt
reads or encodes that group one at a time, and skips an utterance that ended the process
`DEATHS_TO_SKIP` times alone.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simslm import jobs

ENDED_THE_PROCESS = "ended the process encoding it"


# Deaths of the process encoding an utterance alone after which it is skipped, as for any task of a job's pool.
DEATHS_TO_SKIP = jobs.DEATHS_TO_SKIP


@dataclass(frozen=True)
class Deaths:
    """What earlier attempts at a shard say about its utterances: those to encode alone (in the group being
    encoded when a process died), those to read alone (`reading`: in the group being read), those to skip (alone
    when it died, reading or encoding, `DEATHS_TO_SKIP` times) with the count, and what the last death was on
    (`last`: "reading" or "encoding", and the group)."""

    suspects: frozenset[str] = frozenset()
    fatal: dict[str, int] = field(default_factory=dict)
    reading: frozenset[str] = frozenset()
    last: tuple[str, tuple[str, ...]] | None = None


class ShardJournal:
    """What a worker is encoding, beside the shard it writes (`shards/.shard-NNNNN.encoding`, JSON lines), so
    that an utterance that ends the process encoding it (the kernel's OOM killer under a cgroup's memory limit,
    where no Python error is raised: a SLURM job's memory, a recording of an hour) does not end every run of the
    extraction at the same shard. Each attempt begins with a line naming its process; each group of utterances
    is noted before it is read (`reading`: decoding a recording of ten hours takes gigabytes too) and before it
    is encoded; an attempt that fails or is stopped in Python says so. An attempt in a pool's
    worker died when the parent saw the pool break and found that worker ended by itself (`jobs.WorkerDied`: the
    parent notes it here); one in the command's own process died when it has no last word. Removed with the shard
    written."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: Any = None  # open for the attempt this process makes (one open, not one per group)

    @classmethod
    def of(cls, shard_path: Path) -> "ShardJournal":
        return cls(shard_path.with_name(f".{shard_path.name.removesuffix('.jsonl')}.encoding"))

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def attempts(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each attempt's header and the lines after it."""
        attempts: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for entry in self.entries():
            if isinstance(entry.get("attempt"), dict):
                attempts.append((entry["attempt"], []))
            elif attempts:
                attempts[-1][1].append(entry)
        return attempts

    def earlier_deaths(self) -> Deaths:
        suspects, reading, alone, last = set(), set(), collections.Counter(), None
        for header, lines in self.attempts():
            died = any("died" in line for line in lines) or (
                header.get("in_process") and not any("stopped" in line for line in lines))
            groups = [(kind, line[kind]) for line in lines for kind in ("reading", "encoding")
                      if isinstance(line.get(kind), list)]
            # Every attempt here ended unfinished (the journal goes with the shard written): its groups but the
            # last were done. One read is cleared of a death while reading; one encoded, of every earlier death.
            for kind, done in groups[:-1]:
                reading.difference_update(done)
                if kind == "encoding":
                    suspects.difference_update(done)
                    for identifier in done:
                        alone.pop(identifier, None)
            if died and groups:
                kind, group = groups[-1]
                (reading if kind == "reading" else suspects).update(group)
                if len(group) == 1:
                    alone[group[0]] += 1
                last = (kind, tuple(group))
        return Deaths(frozenset(suspects), {key: count for key, count in alone.items() if count >= DEATHS_TO_SKIP},
                      frozenset(reading), last)

    def begin(self, in_process: bool) -> None:
        import socket

        self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write("\n")  # a line torn by the attempt before (killed mid-write) does not swallow the header
        self.note({"attempt": {"pid": os.getpid(), "host": socket.gethostname(), "in_process": in_process}})

    def note(self, entry: dict[str, Any]) -> None:
        """One line, flushed: in the page cache, it outlives the process (not the machine)."""
        if self._handle is None:  # the parent's note of a dead worker, after a torn line it may have left
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n" + json.dumps(entry, ensure_ascii=False) + "\n")
            return
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._handle.flush()

    def end(self, finished: bool) -> None:
        """The attempt is over: the journal goes when its work is written, and stays with a last word when not."""
        if not finished:
            self.note({"stopped": True})
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if finished:
            self.path.unlink(missing_ok=True)


def with_what_was_encoded(error: jobs.WorkerDied, journals: Path, then: str) -> jobs.WorkerDied:
    """`error`, with the dead workers' attempts marked in the journals in `journals` and what they were encoding
    said (`_note_dead_workers`), and what a run after it does (`then`)."""
    encoding = _note_dead_workers(journals, error)
    if not encoding:
        return error
    return jobs.WorkerDied(error.description, error.ended, encoding, doing="encoding",
                           then=then)


def _note_dead_workers(shards_folder: Path, error: jobs.WorkerDied) -> list[str]:
    """Mark the attempts of the workers that `error` found ended by themselves as deaths (in the journals of the
    shards they were working on), and say what each was reading or encoding."""
    import socket

    host, said = socket.gethostname(), []
    for path in sorted(shards_folder.glob(".*.encoding")):
        journal = ShardJournal(path)
        attempts = journal.attempts()
        if not attempts:
            continue
        header, lines = attempts[-1]
        code = error.ended.get(header.get("pid"))
        if code is None or header.get("host") != host or any("died" in line or "stopped" in line for line in lines):
            continue
        journal.note({"died": code})
        groups = [(kind, line) for line in lines for kind in ("reading", "encoding") if isinstance(line.get(kind), list)]
        if groups:
            kind, last = groups[-1]
            names = ", ".join(last[kind][:3]) + (", ..." if len(last[kind]) > 3 else "")
            shard = f"{path.name[1:].removesuffix('.encoding')}: " if path.name.startswith(".shard-") else ""
            said.append(f"{shard}{names} ({last.get('seconds', '?')} s of audio{', being read' * (kind == 'reading')})")
    return said

