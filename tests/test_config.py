"""params.yaml parsing: defaults, overrides, and errors that name the key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from acol.config import Params, ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid_and_matches_the_synthetic_default() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.model.backbone == "small"
    assert params.data.synthetic.num_classes == 10


def test_missing_file_means_defaults() -> None:
    assert load_params("/nonexistent/params.yaml") == Params()


def test_overrides_are_parsed_as_yaml_and_nested() -> None:
    params = load_params(
        REPO / "params.yaml",
        ["train.epochs=3", "train.amp=true", "evaluate.iou_thresholds=[50]", "data.synthetic.image_size=96"],
    )
    assert params.train.epochs == 3 and params.train.amp is True
    assert params.evaluate.iou_thresholds == (50,)
    assert params.data.synthetic.image_size == 96


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=0", r"train\.epochs: Input should be greater than or equal to 1"),
        ("train.optimizer=rmsprop", r"train\.optimizer: Input should be 'sgd' or 'adam'"),
        ("train.lr=fast", r"train\.lr: .*valid number"),
        ("train.learning_rate=0.1", r"train\.learning_rate: unknown key; allowed: epochs, batch_size, lr, "),
        (
            "model.backbone=vgg19",
            r"model\.backbone: .*allowed: \['googlenet', 'inception_v3', 'resnet50', 'small', 'vgg16'\]",
        ),
        ("evaluate.iou_thresholds=[0, 50]", r"evaluate\.iou_thresholds: .*percentage"),
        ("data.synthetic.num_classes=1", r"data\.synthetic\.num_classes"),
        ("nosuchsection.x=1", r"nosuchsection: unknown key; allowed: methods, data, model, train, .*, ray"),
        ("data.synthetic.seeed=1", r"data\.synthetic\.seeed: unknown key; allowed: .*\bseed\b"),
        ("ray.join_local=maybe", r"ray\.join_local: Input should be a valid boolean"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", [override])


def test_malformed_override_and_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"section\.key=value"):
        load_params(REPO / "params.yaml", ["train.epochs"])
    bad = tmp_path / "params.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)


def test_params_are_frozen() -> None:
    params = load_params(REPO / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 5  # type: ignore[misc]


def test_local_paths_are_made_absolute_once_where_params_are_loaded(tmp_path: Path) -> None:
    """Ray workers and jobs run in other folders: the CLI hands every stage absolute paths (URIs and the
    paths documented as relative to data.root stay as they are)."""
    import argparse

    from acol.config import resolve_paths
    from acol.stages.cli import params_from_args

    sets = ["model.backbone_weights=weights/vgg16.pth", "data.fullsup_metadata=meta/val", "data.root=d",
            "train.storage_path=s3://bucket/ray", "data.synsets=LOC_synset_mapping.txt"]  # fmt: skip
    params = resolve_paths(load_params(tmp_path / "absent.yaml", sets), tmp_path)
    assert params.model.backbone_weights == str(tmp_path / "weights" / "vgg16.pth")
    assert params.data.fullsup_metadata == str(tmp_path / "meta" / "val")
    assert params.data.root == str(tmp_path / "d")
    assert params.train.storage_path == "s3://bucket/ray"  # an object store, not a local folder
    assert params.data.synsets == "LOC_synset_mapping.txt"  # relative to data.root by definition
    assert resolve_paths(params, "/elsewhere") == params  # absolute paths stay

    args = argparse.Namespace(params=str(tmp_path / "absent.yaml"), overrides=sets[:1])
    assert Path(params_from_args(args).model.backbone_weights or "").is_absolute()
    assert params_from_args(args).model.backbone_weights == str(Path.cwd() / "weights" / "vgg16.pth")


@pytest.mark.parametrize("methods", ["[]", "[acol,acol]", "[acol,nope]"])
def test_methods_is_a_list_of_distinct_known_methods(methods: str) -> None:
    with pytest.raises(ParamsError, match=r"methods: .*allowed: \['acol', 'cam'"):
        load_params("absent.yaml", [f"methods={methods}"])
    assert load_params("absent.yaml", ["methods=[cam]"]).methods == ("cam",)


def test_the_backbone_and_method_literals_are_the_model_table() -> None:
    """acol.config names them as literals (validating params imports no model code): they must not drift."""
    from acol.config import BACKBONES, METHODS
    from acol.models import METHODS as MODEL_METHODS
    from acol.models import list_backbones

    assert list(BACKBONES) == list_backbones()
    assert METHODS == MODEL_METHODS
