"""Extraction end to end on the tiny dataset: Ray Data output checked for schema, content, errors,
determinism, and against the plain DataLoader loop."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from acol.config import load_params
from acol.data.images import read_image
from acol.data.manifest import manifest_classes, manifest_from_records, read_manifest, write_manifest
from acol.data.transforms import eval_transform, to_float_tensor
from acol.distributed.extract import ExtractionJob, extract, extract_plain
from acol.inference.mapstore import (
    MAP_COLUMNS,
    MAPSTORE_SCHEMA,
    maps_array,
    ok_rows,
    read_maps,
    read_metadata,
)
from acol.inference.predict import _split_eval_transform, decode_batch
from acol.models import build_model
from acol.wsol.boxes import boxes_from_maps

pytestmark = pytest.mark.slow

BAD = {
    "val/aa_truncated.JPEG": "truncated",
    "val/zz_empty.JPEG": "empty file",
    "val/zz_missing.JPEG": "missing image",
}


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


@pytest.fixture(scope="module")
def setup(tiny_dataset, tmp_path_factory):
    """A copy of the tiny val split plus a truncated, an empty and a missing image; a saved ACoL model."""
    work = tmp_path_factory.mktemp("extract")
    root = work / "data"
    shutil.copytree(tiny_dataset["root"] / "val", root / "val")
    val = read_manifest(tiny_dataset["val"])
    records = val.to_pylist()
    good = records[0]["image_id"]
    data = (root / good).read_bytes()
    (root / "val/aa_truncated.JPEG").write_bytes(data[: len(data) // 2])
    (root / "val/zz_empty.JPEG").write_bytes(b"")
    for image_id in BAD:
        records.append({**records[0], "image_id": image_id, "mask_path": None})
    classes = manifest_classes(val)
    manifest = work / "val.parquet"
    write_manifest(manifest_from_records(records, classes, "synthetic"), manifest)
    torch.manual_seed(0)
    model = build_model("small", len(classes), "acol", head_channels=16)
    torch.save(model.state_dict(), work / "model.pt")
    card = {"method": "acol", "backbone": "small", "num_classes": 4, "classes": classes}
    card["model"] = {"head_channels": 16, "erase_threshold": 0.6}
    (work / "model_card.json").write_text(json.dumps(card))
    overrides = [
        "train.image_size=48",
        "extract.batch_size=4",
        "extract.rows_per_file=7",
        "extract.num_actors=1",
    ]
    params = load_params(work / "none.yaml", overrides)
    return {"work": work, "root": root, "manifest": manifest, "params": params, "n": len(records)}


def _job(s: dict, out: Path, manifest: Path | None = None, **changes) -> ExtractionJob:
    """The setup's acol job into ``out``; ``changes`` replace fields (params, method, model, model_card)."""
    work = s["work"]
    job = ExtractionJob(
        s["params"],
        "acol",
        manifest or s["manifest"],
        s["root"],
        work / "model.pt",
        work / "model_card.json",
        out,
    )
    return replace(job, **changes)


@pytest.fixture(scope="module")
def ray_out(setup, ray_session):
    out = setup["work"] / "out" / "acol"
    summary = extract(_job(setup, out))
    return {"out": out, "summary": summary, "hashes": _hashes(out / "maps"), "table": read_maps(out / "maps")}


def test_split_transform_equals_eval_transform():
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resize, normalize = _split_eval_transform(48)
    small = resize(image)
    assert small.dtype == torch.uint8 and small.shape == (3, 48, 48)  # what travels between steps
    torch.testing.assert_close(normalize(small), eval_transform(48)(image), rtol=0, atol=0)


def test_decode_batch_records_errors(setup):
    ids = np.array(
        ["val/aa_truncated.JPEG", "../outside.JPEG", read_manifest(setup["manifest"])[0][0].as_py()]
    )
    out = decode_batch({"image_id": ids}, str(setup["root"]), 48)
    assert out["error"][0].startswith("truncated") and out["error"][1].startswith("unsafe path")
    assert out["error"][2] == ""
    assert not out["image"][:2].any()  # placeholders
    want = _split_eval_transform(48)[0](to_float_tensor(read_image(setup["root"] / ids[2]))).numpy()
    np.testing.assert_array_equal(out["image"][2], want)


def test_decoding_on_threads_gives_each_image_the_bytes_of_one_thread(setup):
    """The CPU inference actors decode a batch on their threads: every image (and every error) is what the
    one-thread loop gives, in the same row."""
    ids = np.array([row["image_id"] for row in read_manifest(setup["manifest"]).to_pylist()])
    one = decode_batch({"image_id": ids}, str(setup["root"]), 48)
    many = decode_batch({"image_id": ids}, str(setup["root"]), 48, threads=3)
    assert one["error"].tolist() == many["error"].tolist() and sum(e != "" for e in one["error"]) == 3
    np.testing.assert_array_equal(many["image"], one["image"])


def test_ray_output_layout_and_schema(setup, ray_out):
    table, summary = ray_out["table"], ray_out["summary"]
    assert sorted(p.name for p in (ray_out["out"] / "maps").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]  # 19 rows, 7 per file
    assert table.schema.equals(MAPSTORE_SCHEMA)
    assert table.num_rows == setup["n"] == summary.rows == 19
    for part in (ray_out["out"] / "maps").iterdir():  # float32 maps, BYTE_STREAM_SPLIT, no dictionary page
        row_group = pq.ParquetFile(part).metadata.row_group(0)
        for chunk in (row_group.column(i) for i in range(row_group.num_columns)):
            if chunk.path_in_schema.split(".")[0] in MAP_COLUMNS:
                assert chunk.physical_type == "FLOAT" and not chunk.has_dictionary_page, chunk.path_in_schema
                assert "BYTE_STREAM_SPLIT" in chunk.encodings, (chunk.path_in_schema, chunk.encodings)
    ids = table.column("image_id").to_pylist()
    manifest_ids = read_manifest(setup["manifest"]).column("image_id").to_pylist()
    assert ids == sorted(set(manifest_ids))  # every image once, sorted
    meta = read_metadata(ray_out["out"] / "maps")
    assert meta["method"] == "acol" and meta["box_threshold"] == 0.2 and len(meta["classes"]) == 4
    on_disk = json.loads((ray_out["out"] / "summary.json").read_text())
    assert on_disk["rows"] == 19 and on_disk["errors"] == 3 and on_disk["bytes_per_image"] > 0
    # start-up is split from throughput: the first batch comes after some time, the rest at a positive rate
    assert 0 < on_disk["first_batch_seconds"] < on_disk["seconds"] and on_disk["steady_images_per_s"] > 0


def test_errors_are_rows_and_counted(ray_out):
    table, summary = ray_out["table"], ray_out["summary"]
    failed = table.filter(pc.invert(pc.is_null(table.column("error")))).to_pylist()
    assert {r["image_id"] for r in failed} == set(BAD)
    for row in failed:
        assert row["error"].startswith(BAD[row["image_id"]]), row["error"]
        assert row["map_gt"] is None and row["pred_box"] is None and row["top5_classes"] is None
    assert summary.errors == 3 and {i for i, _ in summary.error_list} == set(BAD)


def test_maps_boxes_and_scores_are_sane(setup, ray_out):
    good = ok_rows(ray_out["table"])
    assert good.num_rows == 16
    for column in ("map_gt", "map_top1", "map_a_gt", "map_b_gt"):
        maps = maps_array(good, column)
        assert maps.shape == (16, 12, 12) and maps.dtype == np.float32  # 48 px / stride 4
        assert maps.min() >= 0 and maps.max() <= 1 and np.allclose(maps.max(axis=(1, 2)), 1)
    np.testing.assert_array_equal(
        maps_array(good, "map_gt"), np.maximum(maps_array(good, "map_a_gt"), maps_array(good, "map_b_gt"))
    )
    scores = np.array(good.column("top5_scores").to_pylist())
    assert scores.shape == (16, 4) and np.allclose(scores.sum(1), 1, atol=1e-5)  # all 4 classes
    boxes = np.array(good.column("pred_box").to_pylist())
    assert ((boxes[:, :2] >= 0) & (boxes[:, :2] <= boxes[:, 2:]) & (boxes[:, 2:] <= 48)).all()
    # The stored box is reproducible from the stored top-1 map.
    redo = boxes_from_maps(maps_array(good, "map_top1"), np.full(16, 48), np.full(16, 48), 0.2)
    np.testing.assert_array_equal(boxes, redo)


def test_rerun_is_byte_identical_and_replaces_the_folder(setup, ray_out):
    out = ray_out["out"]
    extract(_job(setup, out))
    assert _hashes(out / "maps") == ray_out["hashes"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["acol"]  # no temp or old folders left


def test_ray_equals_plain_loop(setup, ray_out):
    s = setup
    threads = torch.get_num_threads()
    # as many threads as the Ray actor (extract.cpus_per_actor rounded up): other counts differ in the last bit
    torch.set_num_threads(math.ceil(s["params"].extract.cpus_per_actor))
    try:
        summary = extract_plain(_job(s, s["work"] / "plain"))
    finally:
        torch.set_num_threads(threads)
    assert summary.rows == 19 and summary.errors == 3 and summary.engine == "plain"
    assert _hashes(s["work"] / "plain" / "maps") == ray_out["hashes"]


def test_ray_decode_buffer_is_bounded_during_the_run_only(setup, ray_out, monkeypatch):
    """extract.buffer_batches sets Ray Data's object-store budget while the plan runs (decode cannot run
    ahead of inference unbounded), the smallest budget still finishes with the same bytes, and the
    process's DataContext gets its limits back."""
    import ray.data

    from acol.distributed import extract as module

    s = setup
    params = s["params"].model_copy(
        update={"extract": s["params"].extract.model_copy(update={"buffer_batches": 1})}
    )
    options = ray.data.DataContext.get_current().execution_options
    before = options.resource_limits
    seen = []
    plan = module._ray_dataset

    def spy(*args, **kwargs):
        seen.append(options.resource_limits.object_store_memory)
        return plan(*args, **kwargs)

    monkeypatch.setattr(module, "_ray_dataset", spy)
    extract(_job(s, s["work"] / "bounded", params=params))
    assert seen == [1 * 4 * 3 * 48 * 48]  # one batch of 4 decoded 3 x 48 x 48 uint8 images
    assert _hashes(s["work"] / "bounded" / "maps") == ray_out["hashes"]
    assert options.resource_limits == before


def test_cam_has_null_branch_b_and_card_is_checked(setup):
    s = setup
    torch.manual_seed(0)
    torch.save(build_model("small", 4, "cam", head_channels=8).state_dict(), s["work"] / "cam.pt")
    classes = manifest_classes(read_manifest(s["manifest"]))
    card = {
        "method": "cam",
        "backbone": "small",
        "num_classes": 4,
        "classes": classes,
        "model": {"head_channels": 8},
    }
    cam = _job(s, s["work"] / "cam", method="cam", model=s["work"] / "cam.pt", model_card=card)
    extract_plain(cam)
    table = ok_rows(read_maps(s["work"] / "cam" / "maps"))
    assert table.column("map_b_gt").null_count == table.num_rows == 16
    np.testing.assert_array_equal(maps_array(table, "map_gt"), maps_array(table, "map_a_gt"))
    with pytest.raises(ValueError, match="classes differ"):
        extract_plain(replace(cam, model_card={**card, "classes": classes[::-1]}, out_dir=s["work"] / "bad"))
    with pytest.raises(ValueError, match="for method 'acol'"):
        extract_plain(replace(cam, model_card={**card, "method": "acol"}, out_dir=s["work"] / "bad"))
    assert not (s["work"] / "bad").exists()


@pytest.mark.parametrize("engine", [extract, extract_plain])
def test_an_empty_manifest_gives_an_empty_readable_store(setup, engine):
    """No train-fullsup split (the synthetic default): a store with the schema and no rows, no engine start."""
    s = setup
    empty = s["work"] / "empty.parquet"
    write_manifest(
        manifest_from_records([], manifest_classes(read_manifest(s["manifest"])), "synthetic"), empty
    )
    out = s["work"] / "out-empty" / engine.__name__
    summary = engine(_job(s, out, empty))
    table = read_maps(out / "maps")
    assert (
        summary.rows == 0
        and table.num_rows == 0
        and table.schema.equals(MAPSTORE_SCHEMA, check_metadata=False)
    )
    assert read_metadata(out / "maps")["method"] == "acol"


def test_rerun_keeps_the_gitignore_dvc_wrote(setup, tmp_path):
    """DVC writes ``.gitignore`` (``/maps``) into the stage's folder; replacing the output keeps it."""
    out = tmp_path / "acol"
    extract_plain(_job(setup, out))
    (out / ".gitignore").write_text("/maps\n")
    extract_plain(_job(setup, out))
    assert (out / ".gitignore").read_text() == "/maps\n"
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "maps", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acol"]


def _with_driver_batches(params, k: int):
    return params.model_copy(update={"extract": params.extract.model_copy(update={"driver_batches": k})})


@pytest.mark.parametrize("driver_batches", [0, 100])  # 1 (the default) is the ray_out fixture
def test_driver_batches_split_the_rows_and_keep_the_bytes(setup, ray_out, monkeypatch, driver_batches):
    """The driver predicts the first extract.driver_batches batches while Ray starts, Ray the rest (from a
    batch boundary): the files are the same bytes whatever the split, and Ray is not started for no rows."""
    from acol.distributed import extract as module

    s = setup
    ray_rows, driver_rows = [], []
    plan, driver = module._ray_dataset, module._driver_predictions
    monkeypatch.setattr(
        module, "_ray_dataset", lambda inputs, *a: ray_rows.append(inputs.num_rows) or plan(inputs, *a)
    )
    monkeypatch.setattr(
        module,
        "_driver_predictions",
        lambda inputs, *a: driver_rows.append(inputs.num_rows) or driver(inputs, *a),
    )
    out = s["work"] / f"driver-{driver_batches}"
    summary = extract(_job(s, out, params=_with_driver_batches(s["params"], driver_batches)))
    head = min(s["n"], driver_batches * s["params"].extract.batch_size)
    assert driver_rows == ([head] if head else [])
    assert ray_rows == ([s["n"] - head] if head < s["n"] else [])
    assert summary.rows == s["n"] and summary.engine == "ray"
    assert _hashes(out / "maps") == ray_out["hashes"]


def _with_gpu(params):
    return params.model_copy(update={"extract": params.extract.model_copy(update={"use_gpu": True})})


def test_cpu_actors_decode_their_own_batches_and_gpu_actors_are_fed(setup, ray_session):
    """On CPUs the plan is one actor pool that decodes and predicts (a decode pool beside it took the cores
    the model's threads needed); with GPUs, a pool of decode actors feeds the GPU actors."""
    from acol.distributed import extract as module

    s = setup
    manifest = read_manifest(s["manifest"])
    inputs = manifest.select(module._INPUT_COLUMNS)
    card = module.load_model_card(s["work"] / "model_card.json")
    spec = module.spec_from_card(card, s["params"], "acol", manifest_classes(manifest))
    forward = module._forward_options(s["params"], "cpu", None, None)
    args = (spec, str(s["root"]), str(s["work"] / "model.pt"), forward)

    def plan_of(params) -> str:
        """The plan's operators, last to first."""
        names, op = [], module._ray_dataset(inputs, params, *args)._logical_plan.dag
        while op is not None:
            names.append(op.name)
            op = op.input_dependencies[0] if op.input_dependencies else None
        return " <- ".join(names)

    cpu, gpu = plan_of(s["params"]), plan_of(_with_gpu(s["params"]))
    assert "DecodingMapPredictor" in cpu and "BatchDecoder" not in cpu
    assert "BatchDecoder" in gpu and "DecodingMapPredictor" not in gpu
    assert module._ray_cpus(s["params"]) == s["params"].extract.cpus_per_actor
    gpu_params = _with_gpu(s["params"])
    assert module._ray_cpus(gpu_params) == gpu_params.extract.cpus_per_actor + gpu_params.extract.decode_cpus


def test_a_ray_failure_during_the_driver_batches_is_raised_and_nothing_left_running(setup, monkeypatch):
    """Ray fails in its background thread while the driver computes: the error reaches the caller, the thread
    ends, and no output is swapped into place."""
    import threading

    from acol.distributed import extract as module

    def broken(*args, **kwargs):
        raise RuntimeError("actor pool could not start")

    monkeypatch.setattr(module, "_ray_dataset", broken)
    out = setup["work"] / "ray-fails"
    with pytest.raises(RuntimeError, match="actor pool could not start"):
        extract(_job(setup, out))
    assert not out.exists()
    assert not [t for t in threading.enumerate() if t.name == "extract-ray"]


class _GatedCopy:
    """A Ray Data actor that, before each batch, waits (at most ``timeout`` s) until the driver has received every
    earlier batch this actor has computed (a file per batch the test writes on receipt); each row records whether
    it had. "Earlier" is by image_id (the plan's order): Ray Data may hand the actor its batches out of order."""

    def __init__(self, gate: str, timeout: float = 30.0) -> None:
        self.gate, self.timeout, self.computed = Path(gate), timeout, []

    def __call__(self, batch: dict) -> dict:
        first = str(batch["image_id"][0])
        earlier = [self.gate / _gate_name(done) for done in self.computed if done < first]
        deadline = time.monotonic() + self.timeout
        while not (received := all(p.exists() for p in earlier)) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.computed.append(first)
        rows = len(batch["image_id"])
        return {"image_id": batch["image_id"], "previous_received": np.full(rows, received)}


def _gate_name(image_id: str) -> str:
    return image_id.replace("/", "_")


def test_each_result_batch_reaches_the_driver_when_its_call_ends(setup, ray_session, monkeypatch, tmp_path):
    """The driver gets batch k as soon as the actor has computed it, not once batch k+1 is out too (Ray Data's
    prefetch held each one back by a call: at the start, dead time of one batch). The actor waits for the
    driver to have the batches before the one it computes, so a batch held back is one the driver never got."""
    from concurrent.futures import Future

    import ray
    import ray.cloudpickle

    from acol.distributed import extract as module

    s = setup
    inputs, _ = module._sorted_inputs(s["manifest"])
    inputs = inputs.slice(0, 3 * s["params"].extract.batch_size)

    def gated_plan(rows, params, *args):
        size = params.extract.batch_size
        blocks = [rows.slice(i, size) for i in range(0, rows.num_rows, size)]
        return ray.data.from_blocks(blocks).map_batches(
            _GatedCopy,
            fn_constructor_kwargs={"gate": str(tmp_path)},
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=size,
            batch_format="numpy",
        )

    monkeypatch.setattr(module, "_ray_dataset", gated_plan)
    started: Future[str] = Future()
    started.set_result("local")
    here = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(here)  # the worker cannot import this test module
    try:
        received = []
        for batch in module._ray_batches(started, inputs, s["params"], None, "", "", None):
            received.extend(batch["previous_received"].tolist())
            (tmp_path / _gate_name(str(batch["image_id"][0]))).touch()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(here)
    assert received == [True] * inputs.num_rows


def test_background_hands_items_over_in_order_and_stops_when_closed():
    from acol.distributed.extract import _Background

    assert list(_Background(lambda: iter(range(50)))) == list(range(50))
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    feed = _Background(endless, depth=2)
    first = [next(iter(feed)) for _ in range(3)]
    feed.close()
    assert first == [0, 1, 2] and len(produced) <= 3 + 2 + 2  # the queue and one item in hand, no more

    def failing():
        yield 1
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        list(_Background(failing))


def test_background_close_gives_up_on_a_producer_that_never_delivers():
    """A Ray plan that never yields (actors that cannot be placed) must not hang the stage's error exit."""
    import threading
    import time

    from acol.distributed.extract import _Background

    release = threading.Event()

    def stuck():
        release.wait(30)
        yield 1

    feed = _Background(stuck)
    start = time.monotonic()
    feed.close(timeout=0.5)
    assert time.monotonic() - start < 5
    release.set()


_BLOCK = (
    128 * 2**20
)  # above glibc's largest mmap threshold and a thread arena's heap: mapped afresh by default


def _refault_pages() -> int:
    """Minor page faults of this thread while it allocates, fills and frees `_BLOCK` bytes a second time.

    What every batch did to its large activations while glibc unmapped them at free(): a second identical
    cycle faulted every page in again (`_BLOCK` / 4096 faults); with the memory kept it faults none."""
    import ctypes
    import resource

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = 0
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(_BLOCK)
        ctypes.memset(block, 1, _BLOCK)
        libc.free(block)
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    return faults


class _InferenceActorProbe:
    """Stands in an actor started with the inference actor's options; counts faults from a non-main thread,
    where Ray Data calls an actor's batches (one arena per thread, by glibc's default)."""

    def refault_pages(self) -> int:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(_refault_pages).result()


def test_the_predictor_keeps_freed_memory_in_the_main_thread(setup):
    """The plain engine and the driver's first batches predict in the main thread: after a `MapPredictor` is
    built, a large block freed and taken again is not faulted in page by page (the system CPU of issue 23)."""
    from acol.inference.model_card import spec_from_card
    from acol.inference.predict import ForwardOptions, MapPredictor

    s = setup
    card = json.loads((s["work"] / "model_card.json").read_text())
    spec = spec_from_card(card, s["params"], "acol", card["classes"])
    MapPredictor(spec, str(s["work"] / "model.pt"), ForwardOptions(48, 0.2))
    assert _refault_pages() < _BLOCK // 4096 // 100


def test_the_inference_actor_keeps_freed_memory_in_its_batch_thread(setup, ray_session, monkeypatch):
    """An actor started with the options the Ray plan gives `MapPredictor` (its runtime env above all) does
    not fault a large block in again from a thread other than its main one."""
    import ray
    import ray.cloudpickle
    import ray.data

    from acol.distributed import extract as module
    from acol.inference.model_card import load_model_card, spec_from_card
    from acol.inference.predict import DecodingMapPredictor, ForwardOptions

    s = setup
    inputs, classes = module._sorted_inputs(s["manifest"])
    spec = spec_from_card(load_model_card(s["work"] / "model_card.json"), s["params"], "acol", classes)
    options = {}
    map_batches = ray.data.Dataset.map_batches

    def spy(self, fn, **kwargs):
        if fn is DecodingMapPredictor:  # the CPU plan's inference actor
            options.update(kwargs)
        return map_batches(self, fn, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", spy)
    forward = ForwardOptions(48, 0.2)
    module._ray_dataset(inputs, s["params"], spec, str(s["root"]), str(s["work"] / "model.pt"), forward)
    here = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(here)  # the worker cannot import this test module
    try:
        actor_class = ray.remote(num_cpus=options["num_cpus"], runtime_env=options["runtime_env"])(
            _InferenceActorProbe
        )
        actor = actor_class.remote()
        faults = ray.get(actor.refault_pages.remote(), timeout=120)
        ray.kill(actor)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(here)
    assert faults < _BLOCK // 4096 // 100, f"{faults} page faults for a block freed and taken again"
