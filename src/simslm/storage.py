"""Files that outlive a kill: atomic writes, JSON read and written, locks, paths that survive a move, digests.

Every file simslm writes for later (a run's result, a sweep's ledger, a shard) is written whole
beside its place and moved there (`atomic_path`), so a reader never sees half of one; a full
disk is said in one line naming the file (`naming_a_full_disk`). A folder records the paths it
depends on relative to itself and absolute (`portable_path`, read back by `placed_path`), so it
stays valid when moved. Work that two processes must not do at once holds an OS file lock
(`exclusive_lock`), which the OS releases when its holder dies.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator


def safe_file_name(value: Any) -> str:
    """A file name from a value found in data: nothing but letters, digits, '.', '_' and '-', and a hash of the
    value, so an id such as '/etc/x' or '../../x' names a file inside its folder and two ids never share one."""
    import hashlib
    import re

    text = str(value)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', text).strip('.')[:80]}-{digest}"


# Above this size a file's digest reads samples of it (`content_digest`).
DIGEST_WHOLE_BYTES = 64 * 2 ** 20


DIGEST_SAMPLE_BYTES = 4 * 2 ** 20


def read_tail(path: str | os.PathLike, size: int = 4096) -> str:
    """The last `size` bytes of a file as text (a log or metrics file of millions of lines is not read whole);
    raises OSError as `open` does."""
    with open(path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
        return handle.read().decode("utf-8", errors="replace")


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's or a folder's contents: each file's name relative to `path`, its size and its bytes, in
    name order. A file above 64 MiB contributes its size and its first, middle and last 4 MiB only: weights trained
    again differ throughout, and reading all of a 7B model's 15 GB would take a minute on every check."""
    import hashlib

    root, digest = Path(path), hashlib.sha256()
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root) if file != root else file.name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            if size <= DIGEST_WHOLE_BYTES:
                digest.update(handle.read())
                continue
            for offset in (0, (size - DIGEST_SAMPLE_BYTES) // 2, size - DIGEST_SAMPLE_BYTES):
                handle.seek(offset)
                digest.update(handle.read(DIGEST_SAMPLE_BYTES))
    return digest.hexdigest()


def located_path(path: str | os.PathLike) -> Path:
    """`path` made absolute with the links among its folders followed, but not a link that is the file itself.

    A corpus of links into a store (a Hugging Face cache's snapshots into its blobs, git-annex) is then recorded
    by its own names, which carry the stem and extension a layout reads, and goes on pointing into the corpus
    when the corpus moves; the folders' links are followed, so a path relative to another resolved folder leads
    where it should."""
    absolute = Path(path).absolute()
    if absolute.name in ("", ".", ".."):
        return absolute.resolve()
    return absolute.parent.resolve() / absolute.name


def undecodable_name(path: str | os.PathLike) -> bool:
    """Whether a path's bytes are not UTF-8 (a Latin-1 name from an old archive): Python keeps them as lone
    surrogates, which JSON cannot write and soundfile cannot open ("surrogates not allowed")."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown_path(path: str | os.PathLike) -> str:
    """A path as it can be printed whatever its bytes: those that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def portable_path(path: str | os.PathLike, folder: str | os.PathLike) -> dict[str, str]:
    """How a file written into `folder` records `path`: relative to `folder`, so both can move together, and
    absolute, so a copy of `folder` alone still finds it (`placed_path` reads it back)."""
    absolute = located_path(path)
    return {"relative": os.path.relpath(absolute, Path(folder).resolve()), "absolute": str(absolute)}


def placed_path(recorded: str | dict[str, str], folder: str | os.PathLike) -> Path:
    """A path recorded by `portable_path` in a file in `folder`: the relative one when it exists, else the
    absolute one. A plain string (what older folders stored) is taken as it is."""
    if isinstance(recorded, str):
        return Path(recorded)
    relative = Path(folder) / recorded["relative"]
    return relative if relative.exists() else Path(recorded["absolute"])


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a ValueError naming the file when it is not UTF-8 JSON (FileNotFoundError as usual)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a JSON file") from None


BINARY_SNIFF_BYTES = 8192


def text_lines(path: str | os.PathLike) -> Iterator[tuple[str | None, str]]:
    """Each line of a text file and its problem (''): a line that is not UTF-8 comes as None with the problem,
    so that a long job can skip and count it, and an error can name its line. (Decoding in text mode fails on
    the block being read, before any of its lines is seen: the line number would be that of the block's first.)
    Line ends are the file's, with \r\n read as \n; a byte-order mark that opens the file (Windows editors and
    Excel write one) is not part of its first line. A file with a NUL byte in its first 8 KiB is refused whole as
    binary (a FLAC or .npy given as a manifest or corpus: some of its "lines" decode, and were read as text)."""
    with open(path, "rb") as handle:
        if (at := handle.read(BINARY_SNIFF_BYTES).find(b"\0")) >= 0:
            raise ValueError(f"{path}: binary data, not UTF-8 text (a NUL byte at byte {at + 1}; UTF-16 text must be "
                             f"converted to UTF-8)")
        handle.seek(0)
        for number, raw in enumerate(handle):
            if number == 0:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield None, f"not UTF-8 text (byte {error.start + 1} of the line)"
                continue
            yield (line[:-2] + "\n" if line.endswith("\r\n") else line), ""


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file without the byte-order mark that may open it; a ValueError naming the file when it is not
    UTF-8 or not a file."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a file") from None


def update_json(path: str | os.PathLike, update: Callable[[Any], Any], default: Callable[[], Any] = dict) -> Any:
    """Read a JSON file (or `default()` when there is none), apply `update` to its value and write what it
    returns atomically, all under an exclusive lock (`.NAME.lock` beside it); returns the value written.

    Processes that merge into one file (two `simslm eval` of one run, each on its own benchmark) each keep what
    the others wrote: read and write unlocked, the later writer would drop the earlier one's entries."""
    import fcntl

    path = Path(path)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        value = update(read_json(path) if path.exists() else default())
        write_json(path, value)
    return value


_HELD_LOCKS: dict[Path, int] = {}


class Busy(ValueError):
    """Another process holds the lock asked for (`exclusive_lock`)."""


def lock_file(handle: Any, busy: str) -> None:
    """Lock an open file exclusively until it is closed, or raise `Busy(busy)` at once when another process holds
    it. Where the file system has no locks (ENOLCK, say, on an NFS mount without a lock daemon), warn and go on
    unlocked: refusing would stop every job there."""
    import errno
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy(busy) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        print(f"simslm: warning: {handle.name}: the file system does not lock files ({error.strerror}); nothing "
              f"stops a second process from writing here at the same time", file=sys.stderr)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created) for the block, or raise `Busy(f"{busy} ({holder})")` at
    once when another process holds it. The holder's host and pid are written into the file.

    Re-entrant within a process: a sweep holds its run folder's lock and then trains the run, which locks it too.
    Where the file system has no locks, the block runs unlocked after a warning (`lock_file`)."""
    import socket

    key = Path(path).resolve()
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    with open(key, "a+") as handle:
        try:
            lock_file(handle, busy)
        except Busy:
            handle.seek(0)
            holder = handle.read().strip()
            raise Busy(f"{busy} ({holder})" if holder else busy) from None
        handle.truncate(0)
        handle.write(f"held by process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            del _HELD_LOCKS[key]
            handle.truncate(0)  # the file stays (another process may be waiting to open it); its holder does not


@contextlib.contextmanager
def exclusive_lock_waiting(path: str | os.PathLike, waiting: str, poll_sec: float = 1.0) -> Iterator[None]:
    """`exclusive_lock`, waited for while another process holds it (`waiting` said once, on stderr): for work that
    one process does for all (a cache), the others then reading what it made."""
    said = False
    while True:
        held = contextlib.ExitStack()
        try:
            held.enter_context(exclusive_lock(path, waiting))
        except Busy as busy:
            if not said:
                print(f"simslm: {busy}", file=sys.stderr)
                said = True
            time.sleep(poll_sec)
            continue
        with held:
            yield
        return


def keep_settings(path: str | os.PathLike, settings: dict[str, Any], *, made: str, advice: str,
                  earlier_work: bool) -> None:
    """Record in `path` (JSON) the options that decide what a resumable folder holds, or raise ValueError when it
    records other values: a run taking up what was done before would keep it as it is, silently. `made` says how
    the folder was made ("cut", "spoken"), `advice` what to do instead. A folder with `earlier_work` and no record
    (made before simslm kept one) is taken as made with these settings, and a line says so."""
    from simslm.config import flag

    path = Path(path)
    if path.exists():
        recorded = read_json(path)
        if not isinstance(recorded, dict):
            raise ValueError(f"{path}: not a record of settings (a JSON object); remove it, or {advice}")
        changed = [f"{flag(name)} {recorded.get(name)} then, {value} now" for name, value in settings.items()
                   if recorded.get(name) != value]
        if changed:
            raise ValueError(f"{path.parent}: {made} with other settings ({'; '.join(changed)}); {advice}")
    elif earlier_work:
        print(f"simslm: {path.parent}: the settings it was {made} with are not recorded; what it holds is taken as "
              f"{made} with these", file=sys.stderr)
    write_json(path, settings)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temporary name, then rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically (temporary name, then rename); a ValueError naming `path` when it is a folder
    (`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def modes_as_umask_allows(folder: str | os.PathLike) -> None:
    """Give each `.safetensors` file in `folder` the mode its owner's umask gives any new file. safetensors 0.8
    writes through a temporary file of mode 0600 and renames it (its issue #782), so a run's weights were readable
    by their owner only: a colleague on a shared cluster could read a run's config but not evaluate its model."""
    mode = 0o666 & ~_umask()
    for file in Path(folder).rglob("*.safetensors"):
        if (file.stat().st_mode & 0o777) == 0o600 and mode != 0o600:
            file.chmod(mode)


def _umask() -> int:
    """This process's umask: Linux says it in /proc (since 4.7); elsewhere set and put back, the only way."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def naming_a_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Raises a failure to write `path` that a full disk (a quota, a file size limit) caused as the OSError it is,
    naming `path`.
    torch.save reports a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos 189120 vs 189008",
    safetensors as its own error, a plain write as an OSError without a file name. When the block fails, the disk
    is tried with a write of 1 MiB beside `path` (the failed write's bytes still hold their place)."""
    try:
        yield
    except Exception as error:
        if isinstance(error, OSError) and error.filename:
            raise
        full = _no_space(Path(path).parent)
        if full is None:
            raise
        raise OSError(full, os.strerror(full), str(path)) from error


def _no_space(folder: Path) -> int | None:
    """ENOSPC or EDQUOT when `folder` takes no more bytes, EFBIG when a file there may not reach 1 MiB (a process's
    RLIMIT_FSIZE; FAT32's 4 GiB per file is not seen by so small a probe), else None."""
    import errno

    probe = folder / f".space-probe.{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(bytes(1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error.errno if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write a file or a folder to; it becomes `path` only if the block succeeds.

    The rename is atomic for a file; a folder already at `path` is moved aside first and
    deleted after, so readers see the old or the new one, never a mix. A folder is never put
    in place of a file (a user's file named as an output folder would be deleted): a ValueError,
    and the commands that replace a folder whole say it before their work (`check_replaceable`).
    With `replace` false (a command that refuses an existing output unless told to replace it), a folder that
    another process filled while this one built is not replaced: a ValueError, and the other's output stays (two
    builds into one new folder each said "built", and the later one's silently replaced the earlier's).
    The temporary name keeps the suffix, for writers that add or check one (numpy, matplotlib,
    soundfile). A full disk is said as such (`naming_a_full_disk`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    _remove(temporary)
    try:
        with naming_a_full_disk(path):
            yield temporary
            if temporary.is_dir():
                if path.exists() and not path.is_dir():
                    raise ValueError(f"{path}: a file, where a folder is needed")
                if replace:
                    replace_folder(temporary, path)
                else:
                    try:  # onto nothing or an empty folder; a filled one refuses the rename (ENOTEMPTY)
                        os.rename(temporary, path)
                    except OSError as error:
                        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        raise ValueError(f"{path}: another process filled it while this one was building; this "
                                         f"build is not kept (pass --overwrite to replace it)") from None
            else:
                os.replace(temporary, path)
    except (PermissionError, IsADirectoryError) as error:
        if error.filename != str(temporary):
            raise
        # The temporary name is this function's own: the file the user asked for is `path`.
        if isinstance(error, IsADirectoryError):  # a file renamed onto a folder
            raise ValueError(f"{path}: a folder, where a file is needed") from None
        raise PermissionError(error.errno, f"cannot write it here ({error.strerror})", str(path)) from None
    finally:
        _remove(temporary)


def check_replaceable(path: str | os.PathLike, mark: str | None, what: str, advice: str) -> None:
    """Before the work of a command that builds a folder whole and puts it in place of `path` (`atomic_path`),
    which deletes what was there: a ValueError when `path` is a file, or a folder holding something other than
    what the command makes (`mark`, a file such a folder has, `what` its name: "a benchmark `simslm bench build`
    made"; no mark: only an empty folder may be replaced); `advice` says what to do instead."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: a file, where a folder is needed; {advice}")
    if path.is_dir() and any(path.iterdir()) and (mark is None or not (path / mark).is_file()):
        raise ValueError(f"{path}: not empty{f', and not {what} (no {mark})' if mark else ''}; {advice}")


def refuse_unwritable(path: str | os.PathLike, advice: str) -> None:
    """Raise ValueError naming `path` when this process may not write the folder it goes into (or the nearest one
    above it that exists): said before the work whose result it would hold (a fit's bootstrap, a report's plots),
    not after. `advice` says where else to write it."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():  # `report FILE`: not a folder one may not write
        raise ValueError(f"{folder}: a file, where a folder is needed")
    if not may_write(folder):
        raise ValueError(f"{path}: cannot write into {folder} (permission denied); {advice}")


def may_write(folder: str | os.PathLike) -> bool:
    """Whether this process may create files in `folder` (its effective ids and capabilities, as an open would)."""
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def replace_folder(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a complete folder into place, replacing (then deleting) whatever was there."""
    staging, final = Path(staging), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    previous = final.with_name(f".{final.name}.{os.getpid()}.old")
    if final.exists():
        os.replace(final, previous)
    os.replace(staging, final)
    _remove(previous)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

