"""`read_wsol_localization`, the score-map evaluator's view of a WSOL metadata folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acol.data.readers.wsol_metadata import read_wsol_localization
from acol.stages.score_npy import read_wsol_metadata as old_reader
from tests.conftest_data import wsol_metadata_dir  # noqa: F401  (session fixture)


@pytest.mark.parametrize("name", ["ILSVRC/val", "ILSVRC/test", "CUB/test", "CUB/val"])
def test_same_as_the_hand_split_reader_on_the_real_metadata(wsol_metadata_dir: Path, name: str) -> None:  # noqa: F811
    old = old_reader(wsol_metadata_dir / name)
    new, problems = read_wsol_localization(wsol_metadata_dir / name)
    assert problems == []
    assert new.image_ids == old.image_ids
    assert new.sizes == {i: old.sizes[i] for i in old.image_ids}
    assert new.boxes.keys() == old.boxes.keys()
    for i in old.image_ids:
        assert new.boxes[i].dtype == old.boxes[i].dtype == np.int64
        np.testing.assert_array_equal(new.boxes[i], old.boxes[i])
