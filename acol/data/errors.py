"""Errors and problem records shared by the dataset readers.

Readers meet bad entries in real datasets (a missing file, a malformed XML, a box outside its image). A long
run should not die on the first one, so each reader records a `DataProblem`, drops the entry and goes on; with
``strict=True`` the first problem raises a `DataError` instead. Both name the file (or entry) and the reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from acol.errors import UserError

__all__ = ["DataError", "DataProblem", "ProblemLog", "count_problems"]


class DataError(UserError, ValueError):
    """Bad input data; ``path`` names the file or entry, ``reason`` says what is wrong."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Pickled by its two fields: Ray carries a worker's error to the driver by pickle, and the default
        # (the message as the only argument) cannot rebuild it, so the user got a deserialization error instead.
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class DataProblem:
    """One bad entry that a reader skipped; ``reason`` starts with a short kind (``"missing image: ..."``)."""

    path: str
    reason: str

    @property
    def kind(self) -> str:
        """The reason up to its first colon: what `count_problems` groups by."""
        return self.reason.split(":", 1)[0]


class ProblemLog:
    """Collects problems; raises on the first one when ``strict``."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.problems: list[DataProblem] = []

    def add(self, path: str, reason: str) -> None:
        """Record a problem (or raise `DataError` when strict)."""
        if self.strict:
            raise DataError(path, reason)
        self.problems.append(DataProblem(str(path), reason))

    def add_error(self, error: DataError) -> None:
        """Record a `DataError` raised by a helper (or re-raise it when strict)."""
        if self.strict:
            raise error
        self.problems.append(DataProblem(error.path, error.reason))

    def __len__(self) -> int:
        return len(self.problems)


def count_problems(problems: list[DataProblem]) -> dict[str, int]:
    """Count problems by kind (the reason before its first colon), most frequent first."""
    return dict(Counter(p.kind for p in problems).most_common())
