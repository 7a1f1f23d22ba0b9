"""Safe joining of dataset-relative paths taken from annotation files.

Annotation files name images by paths relative to a dataset root. A corrupt or hostile entry
(``/etc/passwd``, ``../../secret``) must not make a reader or the dataset open a file outside that root, so
every such entry goes through `resolve_inside`. The check is lexical: symbolic links inside the root are
followed as usual (a root whose ``train/`` links to another disk is common), only the written path must stay
inside.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from acol.data.errors import DataError

__all__ = ["UnsafePathError", "entry_names", "resolve_inside"]


class UnsafePathError(DataError):
    """A dataset entry that is absolute, empty or escapes the root with ``..``."""


def resolve_inside(root: str | os.PathLike[str], relative: str) -> Path:
    """Return ``root / relative`` after checking that ``relative`` stays inside ``root``.

    ``relative`` uses ``/`` separators (the WSOL id convention); backslashes and NUL bytes are refused, as are
    absolute paths (``/x``, ``C:x``) and any ``..`` that climbs above the root. Raises
    `UnsafePathError` naming the entry.
    """
    if not isinstance(relative, str) or relative == "":
        raise UnsafePathError(repr(relative), "unsafe path: empty or not a string")
    if "\x00" in relative or "\\" in relative:
        raise UnsafePathError(relative, "unsafe path: contains a NUL byte or a backslash")
    if relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafePathError(relative, "unsafe path: absolute path, expected a path relative to the root")
    normal = posixpath.normpath(relative)
    if normal == ".." or normal.startswith("../"):
        raise UnsafePathError(relative, "unsafe path: '..' escapes the dataset root")
    if normal == ".":
        raise UnsafePathError(relative, "unsafe path: names the root itself, not a file")
    return Path(root) / normal


def entry_names(folder: str | os.PathLike[str], *, folders: bool = False) -> list[str]:
    """The sorted names of the files (or, with `folders`, the subfolders) of `folder`, symbolic links followed.

    One ``os.scandir``: each entry's type comes with the listing, where ``Path.is_file`` costs a ``stat`` per
    entry (1.28 M for ILSVRC train, a round trip each on network storage).
    """
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if (e.is_dir() if folders else e.is_file()))
