"""Atomic file and folder writes: a reader never sees a half-written output, even if the writer is killed."""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "readable_path",
    "recover_dir",
    "replace_dir",
    "replacing_dir",
    "resumable_dir",
    "resume_dir_path",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

log = logging.getLogger(__name__)


def _new_temp(parent: Path, prefix: str, suffix: str = "", *, folder: bool = False) -> Path:
    """Create a fresh, uniquely named file or folder in `parent` with the user's umask applied by the kernel.

    Why not `tempfile.mkstemp` / `mkdtemp`: they create 0600 / 0700 whatever the umask says, and a chmod after
    them would have to guess the umask (reading it means changing it, which races other threads).
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if folder:
                path.mkdir(0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temp name {prefix}*{suffix} in {parent}")


def _fsync_path(path: Path) -> None:
    """Flush `path` (a file, or a folder's entries) to disk.

    Folders that cannot be opened or synced (some network and FUSE filesystems refuse) are skipped: their
    renames are as durable as that filesystem makes them.
    """
    folder = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if folder else 0))
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not folder or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` (folders after their content), before `root` is renamed."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync_path(Path(folder, name))
        _fsync_path(Path(folder))


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer (pyarrow, torch.save...); rename it over `path` on success.

    On any error, or if the process dies, `path` keeps its old content and the temp file is removed (or left
    as a hidden `.name.*.tmp` that nothing reads). The file gets the permissions the umask gives new files.
    ``durable`` (default): the data is synced before the rename and the folder after it, so that a power cut
    leaves the old or the new content, never an empty file, and never loses a rename already reported done.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path.parent, f".{path.name}.", ".tmp")
    try:
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_path(path.parent)


def read_json_object(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> dict[str, Any]:
    """A JSON file that must hold an object; an unreadable or other file raises `error` naming the path."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise error(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path` (`atomic_path`).

    ``durable=False`` skips the fsyncs: still never half-written, but a power cut may lose the newest files;
    for bulk outputs that are regenerated deterministically (the synthetic images), where one fsync per file
    would dominate the run.
    """
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically (renameat2, Linux >= 3.15)
_AT_FDCWD = -100
_exchange_supported: bool | None = None  # learnt on first use; tests set False to exercise the fallback


def _temp_prefix(final_dir: Path) -> str:
    return f".{final_dir.name}.tmp-"


def _old_copy(final_dir: Path) -> Path:
    """Where the two-rename fallback parks the previous output while the new one moves in."""
    return final_dir.with_name(f".{final_dir.name}.old")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (``renameat2(RENAME_EXCHANGE)``); False where unsupported.

    Why: with an exchange there is no instant at which `b` is missing, so no reader and no kill can ever find
    the output folder absent. Filesystems or kernels without it make this return False (then the caller uses
    two renames and the `.old` copy that `recover_dir` and `readable_path` understand).
    """
    global _exchange_supported
    if _exchange_supported is False or sys.platform != "linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no libc symbol (musl before 1.2.5, old glibc)
        _exchange_supported = False
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        _exchange_supported = True
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        _exchange_supported = False
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def recover_dir(final_dir: str | os.PathLike[str], *, spare: Path | None = None) -> None:
    """Finish what an interrupted `replace_dir` left beside `final_dir`, before a new writer starts.

    - `final_dir` missing but its `.old` copy present (killed between the fallback's two renames): the old copy
      is the only complete output, so it is moved back, never deleted.
    - `final_dir` present: a `.old` copy and any `.<name>.tmp-*` folder are leftovers (a partial new output,
      or a previous output being deleted) and are removed, except `spare` (the caller's own temp folder).
    Not safe against a second writer into the same folder at the same time (`dvc repro` holds a lock for that).
    """
    final_dir = Path(final_dir)
    old = _old_copy(final_dir)
    if not final_dir.exists() and old.is_dir():
        log.warning("restoring %s from %s, left by an interrupted swap", final_dir, old)
        os.rename(old, final_dir)
    if old.exists():
        shutil.rmtree(old)
    if final_dir.parent.is_dir():
        for stale in final_dir.parent.glob(_temp_prefix(final_dir) + "*"):
            if spare is not None and stale.resolve() == spare.resolve():
                continue
            log.warning("removing %s, left by an interrupted write of %s", stale, final_dir)
            shutil.rmtree(stale, ignore_errors=True)


def readable_path(path: str | os.PathLike[str]) -> Path:
    """`path`, or where it is while a fallback swap (`replace_dir` without an exchange) is half done.

    Why: a reader of ``out/maps`` must find a complete output even in the instant between the fallback's two
    renames, when ``out`` is parked as ``.out.old``. Returns `path` unchanged when it exists or nothing applies.
    """
    path = Path(path)
    if path.exists():
        return path
    for folder in (path, *path.parents):
        old = _old_copy(folder) if folder.name else None
        if old is not None and not folder.exists() and old.is_dir():
            return old / path.relative_to(folder)
    return path


def replace_dir(
    tmp_dir: str | os.PathLike[str], final_dir: str | os.PathLike[str], *, keep: Sequence[str] = ()
) -> None:
    """Move the finished folder `tmp_dir` into place as `final_dir`, replacing any previous output.

    At every instant `final_dir` holds a complete old or new copy: the two folders are swapped atomically
    (`_exchange`), then the old one (now at `tmp_dir`) is deleted. Everything in `tmp_dir` is synced to disk
    before the swap and the parent folder after it (a power cut keeps a complete old or new copy). Without an exchange, the old folder is first
    renamed to ``.<name>.old`` and only deleted once the new one is in place; `recover_dir` (next writer) and
    `readable_path` (readers) understand that state. `keep` names entries of the old folder that the new one
    inherits when it lacks them (DVC's ``.gitignore`` in a stage's output folder).
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    recover_dir(final_dir, spare=tmp_dir)
    for name in keep:
        if (final_dir / name).is_file() and not (tmp_dir / name).exists():
            shutil.copy2(final_dir / name, tmp_dir / name)
    _fsync_tree(tmp_dir)  # the new content is on disk before any name points at it
    if not final_dir.exists():
        os.rename(tmp_dir, final_dir)  # nothing to replace: one atomic rename
        _fsync_path(final_dir.parent)
        return
    if _exchange(tmp_dir, final_dir):
        _fsync_path(final_dir.parent)
        shutil.rmtree(tmp_dir)  # the previous output; a kill here leaves a temp folder recover_dir removes
        return
    old = _old_copy(final_dir)
    os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    _fsync_path(final_dir.parent)
    shutil.rmtree(old)


@contextmanager
def replacing_dir(final_dir: str | os.PathLike[str], *, keep: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a fresh temp folder beside `final_dir` to write a whole output into; `replace_dir` it on success.

    Leftovers of an interrupted earlier write are cleaned first (`recover_dir`); on any error the temp folder
    is removed and `final_dir` keeps its previous content.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final_dir)
    tmp = _new_temp(final_dir.parent, _temp_prefix(final_dir), folder=True)  # permissions: the umask's
    try:
        yield tmp
        replace_dir(tmp, final_dir, keep=keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_FINGERPRINT_NAME = ".fingerprint.json"  # hidden: removed before the swap, never part of an output


def resume_dir_path(final_dir: str | os.PathLike[str]) -> Path:
    """The fixed-name temp folder of `resumable_dir`: ``.<name>.tmp-resume`` beside `final_dir`.

    Why a ``.tmp-`` name: what a kill leaves is then the same kind of dotted leftover as `replacing_dir`'s.
    """
    final_dir = Path(final_dir)
    return final_dir.with_name(_temp_prefix(final_dir) + "resume")


def _read_fingerprint(work: Path) -> Any:
    try:
        return json.loads((work / _FINGERPRINT_NAME).read_text())
    except (OSError, ValueError):
        return None


def _why_discarded(found: Any, expected: dict[str, Any]) -> str:
    """Why a partial output is not resumed, naming the fingerprint's keys that differ (e.g. a format change)."""
    if found is None:
        return "no fingerprint"
    if not isinstance(found, dict):
        return "its inputs differ"
    keys = sorted(k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k))
    return f"its inputs differ: {', '.join(keys)}"


@contextmanager
def resumable_dir(
    final_dir: str | os.PathLike[str], fingerprint: dict[str, Any], *, keep: Sequence[str] = ()
) -> Iterator[tuple[Path, bool]]:
    """`replacing_dir` whose temp folder survives a kill or an error, so a rerun can keep what was finished.

    Yields ``(work, resumed)``: `work` is `resume_dir_path(final_dir)`; ``resumed`` is True when it was left by
    an earlier run with an equal `fingerprint` (a JSON-able description of the inputs), whose content the
    caller may keep. A folder with another or no fingerprint is discarded (logged). Hidden ``.*.tmp`` files of
    an interrupted `atomic_path` are removed. On success the fingerprint is removed and `work` is moved into
    place with `replace_dir` (atomic); on error `work` is left for the next run. The caller must write only
    complete files into `work` (`atomic_path`), since any file there may be kept.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    work = resume_dir_path(final_dir)
    recover_dir(final_dir, spare=work)
    expected = json.loads(json.dumps(fingerprint, sort_keys=True))
    resumed = False
    if work.is_dir():
        found = _read_fingerprint(work)
        if found == expected:
            resumed = True
            for stale in work.rglob(".*.tmp"):
                stale.unlink(missing_ok=True)
        else:
            log.warning("discarding the partial output %s (%s)", work, _why_discarded(found, expected))
            (work / _FINGERPRINT_NAME).unlink(missing_ok=True)  # first: a kill inside rmtree cannot resume it
            shutil.rmtree(work)
    elif work.exists():
        work.unlink()
    if not resumed:
        work.mkdir()  # permissions: the umask's
        write_json_atomic(work / _FINGERPRINT_NAME, expected)
    yield work, resumed
    (work / _FINGERPRINT_NAME).unlink(missing_ok=True)  # a kill from here on: the next run starts afresh
    replace_dir(work, final_dir, keep=keep)
