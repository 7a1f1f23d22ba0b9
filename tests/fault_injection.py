"""Test-only epoch hooks (`acol.distributed.train.EpochStart`): kill the rank-0 worker once, to test the resume.

Passed to `fit(epoch_hook=...)` in-process, or by import path for a ``ray job submit``:
``ACOL_EPOCH_HOOK=tests.fault_injection:kill_rank0_at_epoch_2`` (the job's working dir holds tests/).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from acol.distributed.train import EpochStart

__all__ = ["FAULT_MARKER", "HOOK_PATH", "kill_rank0_at_epoch_2", "kill_rank0_once"]

log = logging.getLogger(__name__)

FAULT_MARKER = "acol_fault_injected"  # written in the run folder before the kill: the retry runs through
HOOK_PATH = f"{__name__}:kill_rank0_at_epoch_2"


def kill_rank0_once(start: EpochStart, fail_at_epoch: int) -> None:
    """At the start of `fail_at_epoch` (1-based), rank 0 exits its process (``os._exit(1)``), unless the marker
    file ``<run_dir>/acol_fault_injected`` exists; it writes the marker first. Needs a local run folder."""
    marker = Path(start.run_dir) / FAULT_MARKER
    if start.rank != 0 or start.epoch != fail_at_epoch or marker.exists():
        return
    import ray.train

    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"fault injected at epoch {start.epoch}\n")
    # Reports reach the controller by polling: wait until the last checkpoint is registered, so the retry
    # resumes from it (a real crash may lose the last report and resume one epoch earlier).
    ray.train.get_all_reported_checkpoints(timeout_s=60)
    log.warning("epoch %d: killing rank 0 to test fault tolerance", start.epoch)
    os._exit(1)


def kill_rank0_at_epoch_2(start: EpochStart) -> None:
    """`kill_rank0_once` at epoch 2: an import path needs a function without arguments to fill in."""
    kill_rank0_once(start, 2)
