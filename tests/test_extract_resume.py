"""Extraction resumes after a kill: the finished parts are kept, only the rest is computed, and the output is
byte-identical to an uninterrupted run's; changed inputs discard the partial work.

The kill is injected in-process: the part writer raises right after its N-th part is on disk (a kill can come
anywhere, but every part is written whole under a temp name and renamed, so what a kill leaves is whole parts
plus at most one hidden temp file, which the rerun removes; one is planted here). `tests/test_faults.py` kills a
real stage process with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import acol.distributed.extract as extract_module
from acol.config import load_params
from acol.data.manifest import manifest_classes, manifest_from_records, read_manifest, write_manifest
from acol.distributed.extract import ExtractionJob, extract, extract_plain
from acol.inference.mapstore import MAP_COLUMNS, read_maps
from acol.io import resume_dir_path
from acol.models import build_model

ROWS_PER_FILE = 3  # 17 rows: parts of 3, 3, 3, 3, 3, 2
BATCH = 2  # not a divisor of 3: a resume restarts inside a part and drops the rows it already has


class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "maps").iterdir())}


def _model(path: Path, classes: list[str], seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(build_model("small", len(classes), "acol", head_channels=8).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def setup(tiny_dataset: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny val split (16 images) plus one missing image (an error row); two models of other seeds."""
    work = tmp_path_factory.mktemp("resume")
    val = read_manifest(tiny_dataset["val"])
    classes = manifest_classes(val)
    missing = {**val.to_pylist()[0], "image_id": "val/zz_missing.JPEG", "mask_path": None}
    records = [*val.to_pylist(), missing]
    manifest = work / "val.parquet"
    write_manifest(manifest_from_records(records, classes, "synthetic"), manifest)
    card = {"method": "acol", "backbone": "small", "num_classes": 4, "classes": classes}
    card["model"] = {"head_channels": 8, "erase_threshold": 0.6}
    (work / "model_card.json").write_text(json.dumps(card))
    overrides = [
        "train.image_size=48",
        f"extract.batch_size={BATCH}",
        f"extract.rows_per_file={ROWS_PER_FILE}",
        "extract.num_actors=1",
    ]
    return {
        "work": work,
        "root": tiny_dataset["root"],
        "manifest": manifest,
        "records": records,
        "classes": classes,
        "model": _model(work / "model.pt", classes, 0),
        "other_model": _model(work / "other.pt", classes, 1),
        "card": work / "model_card.json",
        "params": load_params(work / "none.yaml", overrides),
        "n": len(records),
    }


def _job(s: dict, out: Path, manifest: Path | None = None, model: Path | None = None) -> ExtractionJob:
    return ExtractionJob(
        s["params"], "acol", manifest or s["manifest"], s["root"], model or s["model"], s["card"], out
    )


def _run(engine, s: dict, out: Path, manifest: Path | None = None, model: Path | None = None, **forward):
    return engine(_job(s, out, manifest, model), **forward)


def _kill_after_parts(monkeypatch: pytest.MonkeyPatch, parts: int) -> None:
    """The writer raises `Killed` right after its `parts`-th part is on disk (before it logs it)."""
    flush = extract_module._PartWriter._flush

    def flush_then_die(self, rows: int) -> None:
        flush(self, rows)
        if len(self.parts) >= parts:
            raise Killed(f"killed after {parts} parts")

    monkeypatch.setattr(extract_module._PartWriter, "_flush", flush_then_die)


def _count_predicted_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows each predictor call of the plain engine gets (the Ray engine predicts in actor processes)."""
    calls: list[int] = []
    predict = extract_module.MapPredictor.__call__

    def counting(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(batch["image_id"]))
        return predict(self, batch)

    monkeypatch.setattr(extract_module.MapPredictor, "__call__", counting)
    return calls


def _count_engine_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows the Ray engine is started on (its dataset's input table)."""
    starts: list[int] = []
    build = extract_module._ray_dataset

    def counting(inputs, *args, **kwargs):
        starts.append(inputs.num_rows)
        return build(inputs, *args, **kwargs)

    monkeypatch.setattr(extract_module, "_ray_dataset", counting)
    return starts


@pytest.fixture(scope="module")
def reference(setup: dict) -> dict[str, str]:
    """An uninterrupted plain run: the bytes every resumed run must reproduce."""
    out = setup["work"] / "reference"
    summary = _run(extract_plain, setup, out)
    assert summary.rows == setup["n"] and summary.resumed_rows == 0 and summary.errors == 1
    return _hashes(out)


def _kill_half_way(engine, s: dict, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run until 3 of the 6 parts are written, then 'kill'; plant a half-written part's temp file."""
    with monkeypatch.context() as patch:
        _kill_after_parts(patch, 3)
        with pytest.raises(Killed):
            _run(engine, s, out)
    work = resume_dir_path(out)
    assert sorted(p.name for p in (work / "maps").iterdir()) == [f"part-0000{k}.parquet" for k in range(3)]
    (work / "maps" / ".part-00003.parquet.x1y2.tmp").write_bytes(b"PAR1 half a part")
    return work


def test_plain_resumes_only_the_missing_parts(setup, reference, tmp_path, monkeypatch, caplog):
    out = tmp_path / "acol"
    _kill_half_way(extract_plain, setup, out, monkeypatch)
    assert not out.exists()

    calls = _count_predicted_rows(monkeypatch)
    with caplog.at_level(logging.INFO, logger="acol.distributed.extract"):
        summary = _run(extract_plain, setup, out)
    # 9 rows kept; restarted at row 8 (the batch boundary before it): rows 8..16, 9 rows in 5 batches
    assert sum(calls) == 9 and calls == [2, 2, 2, 2, 1]
    assert "resuming" in caplog.text and "9 of 17 rows kept in 3 parts, restarting at row 8" in caplog.text
    assert _hashes(out) == reference  # byte-identical, file by file
    assert (summary.rows, summary.resumed_rows, summary.computed_rows, summary.errors) == (17, 9, 8, 1)
    assert summary.error_list == [("val/zz_missing.JPEG", summary.error_list[0][1])]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["resumed_rows"] == 9 and on_disk["rows"] == 17 and len(on_disk["parts"]) == 6
    assert on_disk["parquet_bytes"] == sum(p.stat().st_size for p in (out / "maps").iterdir())
    ids = read_maps(out / "maps").column("image_id").to_pylist()
    assert ids == sorted(r["image_id"] for r in setup["records"])  # every image exactly once
    assert sorted(p.name for p in out.iterdir()) == ["maps", "summary.json"]  # no fingerprint left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acol"]  # the work folder became the output

    calls.clear()
    assert _run(extract_plain, setup, out).resumed_rows == 0  # a finished run leaves nothing to resume
    assert sum(calls) == 17


def test_a_run_killed_after_its_last_part_only_swaps(setup, reference, tmp_path, monkeypatch):
    out = tmp_path / "acol"
    with monkeypatch.context() as patch:
        _kill_after_parts(patch, 6)
        with pytest.raises(Killed):
            _run(extract_plain, setup, out)
    calls = _count_predicted_rows(monkeypatch)
    summary = _run(extract_plain, setup, out)
    assert calls == [] and summary.resumed_rows == 17 and summary.errors == 1  # no model was even loaded
    assert _hashes(out) == reference


@pytest.mark.parametrize("change", ["weights", "manifest"])
def test_changed_inputs_discard_the_partial_work(setup, tmp_path, monkeypatch, caplog, change):
    out = tmp_path / "acol"
    _kill_half_way(extract_plain, setup, out, monkeypatch)
    manifest, model, n = None, None, setup["n"]
    if change == "weights":
        model = setup["other_model"]
    else:  # the same rows but one: parts 0-2 would even match by name and size
        manifest = tmp_path / "fewer.parquet"
        write_manifest(manifest_from_records(setup["records"][:-1], setup["classes"], "synthetic"), manifest)
        n -= 1
    calls = _count_predicted_rows(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="acol.io"):
        summary = _run(extract_plain, setup, out, manifest=manifest, model=model)
    assert "discarding the partial output" in caplog.text and "its inputs differ" in caplog.text
    assert sum(calls) == n and summary.resumed_rows == 0 and summary.rows == n
    fresh = tmp_path / "fresh"
    _run(extract_plain, setup, fresh, manifest=manifest, model=model)
    assert _hashes(out) == _hashes(fresh)


def _as_float16_store(work: Path, fingerprint: bool) -> None:
    """Turn a killed run's work folder into what the float16 code left: its parts' maps as list<float16> (written
    with that code's options) and, with ``fingerprint``, that code's fingerprint (version 1, no map_dtype)."""
    for part in sorted((work / "maps").glob("part-*.parquet")):
        table = pq.read_table(part)
        for name in MAP_COLUMNS:
            i = table.schema.get_field_index(name)
            rows = [None if m is None else np.asarray(m, np.float16) for m in table.column(name).to_pylist()]
            half = pa.array(rows, pa.list_(pa.float16()))
            table = table.set_column(i, pa.field(name, half.type), half)
        pq.write_table(table, part, compression="zstd", compression_level=3, write_statistics=False)
    if fingerprint:
        path = work / ".fingerprint.json"
        old = json.loads(path.read_text())
        old.pop("map_dtype")
        path.write_text(json.dumps({**old, "version": 1}))


@pytest.mark.parametrize("left_by", ["float16 code", "float16 parts only"])
def test_a_float16_partial_store_is_recomputed_not_mixed(
    setup, reference, tmp_path, monkeypatch, caplog, left_by
):
    """Partial work in the float16 format is never adopted into a float32 store: the old code's folder is
    discarded by its fingerprint; float16 parts under a current fingerprint are recomputed by the writer."""
    out = tmp_path / "acol"
    work = _kill_half_way(extract_plain, setup, out, monkeypatch)
    _as_float16_store(work, fingerprint=left_by == "float16 code")
    calls = _count_predicted_rows(monkeypatch)
    with caplog.at_level(logging.INFO):
        summary = _run(extract_plain, setup, out)
    if left_by == "float16 code":
        assert (
            "discarding the partial output" in caplog.text
            and "its inputs differ: map_dtype, version" in caplog.text
        )
    else:
        assert "part-00000.parquet: maps stored as float16" in caplog.text
    assert sum(calls) == setup["n"] and summary.resumed_rows == 0
    assert _hashes(out) == reference  # all parts float32, byte-identical to an uninterrupted run
    for part in (out / "maps").iterdir():
        schema = pq.read_schema(part)
        assert all(schema.field(name).type == pa.list_(pa.float32()) for name in MAP_COLUMNS), part.name


@pytest.mark.slow
def test_ray_resumes_only_the_missing_parts(setup, reference, tmp_path, monkeypatch, ray_session):
    """The Ray engine resumes the same way; its output equals an uninterrupted Ray run's byte for byte."""
    out = tmp_path / "acol"
    _kill_half_way(extract, setup, out, monkeypatch)
    starts = _count_engine_rows(monkeypatch)
    summary = _run(extract, setup, out)
    # the engine ran on rows 8..16 only: the driver's first batch (extract.driver_batches: 1), Ray the rest
    assert starts == [9 - setup["params"].extract.batch_size]
    assert (summary.rows, summary.resumed_rows, summary.errors, summary.engine) == (17, 9, 1, "ray")
    ray_full = tmp_path / "ray_full"
    _run(extract, setup, ray_full)
    assert _hashes(out) == _hashes(ray_full)


# What the code before `ExtractionJob` fingerprinted for `setup` (written by it; hashes and root filled in below).
# A partial folder resumes only on an equal fingerprint, so these keys and values must not change by accident.
_EARLIER_FINGERPRINT = {
    "version": 2,
    "map_dtype": "float32",
    "metadata": {
        "method": "acol",
        "classes": ["n90000000", "n90000001", "n90000002", "n90000003"],
        "box_threshold": 0.2,
        "image_size": 48,
        "backbone": "small",
    },
    "spec": {
        "backbone": "small",
        "method": "acol",
        "num_classes": 4,
        "head_channels": 8,
        "erase_threshold": 0.6,
        "large_feature_map": False,
    },
    "rows_per_file": ROWS_PER_FILE,
    "batch_size": BATCH,
}


@pytest.mark.parametrize(
    ("engine", "forward"),
    [(extract_plain, {}), (extract, {"channels_last": True}), (extract_plain, {"amp": True})],
    ids=["plain", "ray-nhwc", "plain-bf16"],
)
def test_the_fingerprint_is_the_one_earlier_code_wrote(setup, tmp_path, monkeypatch, engine, forward):
    """A partial folder of the code before `ExtractionJob` still resumes: the fingerprint the engines write
    equals the one that code wrote for the same inputs (killed before the first batch: no Ray start)."""

    def killed(*args, **kwargs):
        raise Killed("killed before the first batch")

    monkeypatch.setattr(extract_module, "_stream_into", killed)
    out = tmp_path / "acol"
    with pytest.raises(Killed):
        _run(engine, setup, out, **forward)
    written = json.loads((resume_dir_path(out) / ".fingerprint.json").read_text())
    expected = {
        **_EARLIER_FINGERPRINT,
        "engine": "ray" if engine is extract else "plain",
        "manifest_sha256": hashlib.sha256(setup["manifest"].read_bytes()).hexdigest(),
        "weights_sha256": hashlib.sha256(setup["model"].read_bytes()).hexdigest(),
        "root": str(Path(setup["root"]).resolve()),
        "options": {"device": "cpu", "amp": False, "channels_last": False, **forward},
    }
    assert written == expected


def test_resumable_dir_keeps_work_on_error_and_only_for_the_same_fingerprint(tmp_path):
    """`acol.io.resumable_dir` by itself: an error leaves the work folder; an equal fingerprint resumes it (its
    hidden temp files removed); another, or a missing one (killed during the swap), starts afresh."""
    from acol.io import resumable_dir

    out = tmp_path / "out"
    with pytest.raises(Killed), resumable_dir(out, {"a": 1}) as (work, resumed):
        assert not resumed
        (work / "done.txt").write_text("done")
        (work / ".half.txt.x.tmp").write_text("half")
        raise Killed
    with pytest.raises(Killed), resumable_dir(out, {"a": 1}) as (work, resumed):
        assert resumed and sorted(p.name for p in work.iterdir()) == [".fingerprint.json", "done.txt"]
        raise Killed
    with resumable_dir(out, {"a": 2}) as (work, resumed):  # other inputs
        assert not resumed and not (work / "done.txt").exists()
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and sorted(tmp_path.iterdir()) == [out]
    work = resume_dir_path(out)
    work.mkdir()
    (work / "new.txt").write_text("the old output, being deleted after an exchange")  # no fingerprint
    with resumable_dir(out, {"a": 2}) as (work, resumed):
        assert not resumed and list(work.iterdir()) == [work / ".fingerprint.json"]


def test_a_partial_store_of_the_model_kwargs_code_is_discarded(
    setup, reference, tmp_path, monkeypatch, caplog
):
    """The code before `ModelSpec` fingerprinted ``model_kwargs``; its partial work is recomputed, not mixed."""
    out = tmp_path / "acol"
    work = _kill_half_way(extract_plain, setup, out, monkeypatch)
    path = work / ".fingerprint.json"
    old = json.loads(path.read_text())
    spec = old.pop("spec")
    old["model_kwargs"] = {**spec, "name": spec.pop("backbone"), "large_feature_map": None}
    path.write_text(json.dumps(old))
    calls = _count_predicted_rows(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="acol.io"):
        summary = _run(extract_plain, setup, out)
    assert (
        "discarding the partial output" in caplog.text
        and "its inputs differ: model_kwargs, spec" in caplog.text
    )
    assert sum(calls) == setup["n"] and summary.resumed_rows == 0
    assert _hashes(out) == reference
