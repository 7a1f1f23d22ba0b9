"""What one extraction reads and where it writes: one object for the engines (`acol.distributed.extract`), the
stages that run them and the benchmarks, instead of seven arguments in a fixed order."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from acol.config import Params

__all__ = ["ExtractionJob"]


@dataclass(frozen=True)
class ExtractionJob:
    """One method's model over one manifest into one output folder.

    ``root`` is the folder the manifest's ``image_id`` paths are relative to; ``model`` the trained weights
    (``model.pt``); ``model_card`` its card, a JSON path or the card itself. Paths given as strings are kept
    as `Path`. ``params`` gives the batch, pool, rows per file, box threshold and input size.
    """

    params: Params
    method: str
    manifest: Path
    root: Path
    model: Path
    model_card: Path | dict[str, Any]
    out_dir: Path

    def __post_init__(self) -> None:
        for name in ("manifest", "root", "model", "out_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if isinstance(self.model_card, str | os.PathLike):
            object.__setattr__(self, "model_card", Path(self.model_card))

    def resolved(self) -> ExtractionJob:
        """The job with absolute ``root`` and ``model``: what Ray's workers get (every node must see them at
        these paths)."""
        return replace(self, root=self.root.resolve(), model=self.model.resolve())
