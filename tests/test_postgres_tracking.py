"""The pipeline's tracking against an MLflow server on PostgreSQL, as a team runs it (README, "Tracking server").

The test starts its own PostgreSQL cluster on loopback (a fresh database), an ``mlflow server`` on it that
serves the artifacts itself (``--serve-artifacts``: clients upload through HTTP, no shared folder), and runs
what the stages do: stage runs under one parent with their datasets, a registered model without pickle,
promotion, and the re-evaluation's download of the model. CI installs Debian's ``postgresql``
(scripts/test.sh); without its programs the test is skipped and says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from acol.config import load_params
from acol.tracking import stage_runs as tracking
from tests.services import mlflow_server, postgres_bin, postgres_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        postgres_bin() is None, reason="PostgreSQL not installed (apt-get install postgresql)"
    ),
]


def test_stages_models_and_promotion_on_a_postgres_backed_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg
    from mlflow.tracking import MlflowClient

    from acol.models import build_model
    from acol.tracking.mlflow_model import load_version, log_model
    from acol.tracking.registry import record_and_promote

    with postgres_cluster() as database, mlflow_server(tmp_path, backend_uri=database) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "postgres-test")
        params = load_params(tmp_path / "absent.yaml", ["tracking.log_system_metrics=false"])
        assert tracking.check_tracking_server() == uri
        train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
        train.write_bytes(b"train rows")
        val.write_bytes(b"val rows")
        torch.manual_seed(0)
        model = build_model("small", 2, "cam", head_channels=4)
        card = {"method": "cam", "backbone": "small", "num_classes": 2, "classes": ["n1", "n2"],
                "model": {"head_channels": 4, "erase_threshold": 0.6}}  # fmt: skip
        example = torch.randn(1, 3, 16, 16)
        with tracking.stage_run("train", params, method="cam", data_paths=[train, val]) as run:
            version = log_model(model, "cam", params, example, card)
        with tracking.stage_run("evaluate", params, method="cam", data_paths=[val]):
            promotion = record_and_promote(
                tracking.registered_model_name(params, "cam"),
                version,
                {"maxboxacc_v2": 50.0},
                "maxboxacc_v2",
                key={"acol.backbone": "small", "acol.method": "cam"},
            )

        client = MlflowClient()
        logged = client.get_run(run.info.run_id)
        assert {d.dataset.name for d in logged.inputs.dataset_inputs} == {"train", "val"}
        parent = client.get_run(logged.data.tags["mlflow.parentRunId"]).info
        assert parent.status == "FINISHED" and parent.end_time >= logged.info.end_time
        assert promotion["champion"]
        rebuilt = load_version(tracking.registered_model_name(params, "cam"), version, tmp_path / "download")
        with torch.inference_mode():
            assert torch.equal(rebuilt(example).logits, model(example).logits)
        # the artifacts went through the server into its own store, not to a path the client wrote
        assert list((tmp_path / "artifacts").rglob("model.pt"))

        # and the runs really are in PostgreSQL
        with psycopg.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT name, status FROM runs ORDER BY start_time")
            rows = cursor.fetchall()
        assert [name for name, _ in rows] == ["pipeline-postgres-test", "train@cam", "evaluate@cam"]
        assert {status for _, status in rows} == {"FINISHED"}
