"""infra/ stays consistent with the code: manifests parse, names and paths resolve, commands are valid.

No kubectl or kustomize here: the YAML is read with PyYAML, and the overlays' JSON patches are applied by the
small `_apply_patch` below (replace/add only, which is all the overlays use), so a patch whose path no longer
exists in the base fails here rather than at `kubectl apply` time.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from acol.config import load_params

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
DOCS = REPO / "README.md"  # its "Running on a cluster" section
# `python pipelines/X.py` (or /app/pipelines/X.py) and its arguments up to the end of the line
COMMAND = re.compile(r"python[ \t]+(?:/app/)?(pipelines/[\w-]+\.py)((?:[ \t]+(?:--[\w-]+|[^\s-]\S*))*)")


def _yaml_files() -> list[Path]:
    return sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def _render(folder: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization: its resources (recursively), then its patches applied."""
    kust = _kustomization(folder)
    objects: list[dict[str, Any]] = []
    for resource in kust.get("resources", []):
        path = folder / resource
        objects += _render(path) if path.is_dir() else copy.deepcopy(_docs(path))
    for entry in kust.get("patches", []):
        target = entry["target"]
        matches = [
            o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        assert matches, f"{folder}: patch target {target} matches no resource"
        for obj in matches:
            for op in yaml.safe_load(entry["patch"]):
                _apply_patch(obj, op, f"{folder.name}: {target['kind']}/{target['name']}")
    return objects


def _apply_patch(obj: Any, op: dict[str, Any], where: str) -> None:
    """RFC 6902 ``replace`` / ``add`` on dicts and lists; ``replace`` of a missing path fails, as kustomize does."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    node = obj
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if op["op"] == "replace":
        present = int(last) < len(node) if isinstance(node, list) else last in node
        assert present, f"{where}: replace of missing path {op['path']}"
    elif op["op"] != "add":
        raise AssertionError(f"{where}: unsupported patch op {op['op']}")
    if isinstance(node, list):
        node[int(last)] = op["value"]
    else:
        node[last] = op["value"]


def _strings(node: Any) -> list[str]:
    """Every string in a parsed document; multi-line strings that are YAML themselves (patches, embedded
    RayJobs, runtimeEnvYAML) are parsed and searched instead, so folded commands come out whole."""
    if isinstance(node, str):
        if "\n" in node.strip():
            try:
                inner = yaml.safe_load(node)
            except yaml.YAMLError:
                inner = None
            if isinstance(inner, dict | list):
                return _strings(inner)
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _all_text() -> str:
    """Every string in infra's YAML (patch values included) and the docs: where commands are written."""
    texts = [s for path in _yaml_files() for d in _docs(path) for s in _strings(d)]
    texts.append((INFRA / "docker" / "Dockerfile").read_text())
    if DOCS.exists():
        texts.append(DOCS.read_text())
    return "\n".join(texts).replace("\\\n", " ")  # shell line continuations join their lines


def _commands() -> list[tuple[str, list[str]]]:
    found = [(m.group(1), shlex.split(m.group(2))) for m in COMMAND.finditer(_all_text())]
    assert len(found) >= 6, found  # train, extract, reevaluate in the base, the gpu overlay and the docs
    return found


def _embedded_rayjobs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RayJob templates kept as text in ConfigMaps (the CronJob's), parsed."""
    out = []
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            for value in obj.get("data", {}).values():
                out += [
                    d for d in yaml.safe_load_all(value) if isinstance(d, dict) and d.get("kind") == "RayJob"
                ]
    return out


def test_every_manifest_parses_with_kind_and_name():
    assert len(_yaml_files()) >= 10
    for path in _yaml_files():
        docs = _docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            assert "apiVersion" in doc and "kind" in doc, f"{path}: a document without apiVersion/kind"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_kustomization_resources_exist_and_patches_apply(folder):
    for resource in _kustomization(folder).get("resources", []):
        path = folder / resource
        assert path.is_file() or (path / "kustomization.yaml").is_file(), (
            f"{folder}: {resource} does not exist"
        )
    listed = {r for r in _kustomization(BASE)["resources"]}
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, "a base manifest is not listed in base/kustomization.yaml (or the reverse)"
    _render(folder)  # every patch applies


def test_entrypoints_name_existing_scripts_and_options():
    for script, args in _commands():
        path = REPO / script
        assert path.is_file(), f"{script} is named in infra/docs but does not exist"
        source = path.read_text() + (REPO / "acol" / "stages" / "cli.py").read_text()
        for flag in (a for a in args if a.startswith("--")):
            assert f'"{flag}"' in source, f"{script} has no option {flag}"


def test_every_set_override_is_a_valid_params_key():
    for _script, args in _commands():
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        load_params(REPO / "params.yaml", overrides)  # raises ParamsError naming the key otherwise
    with pytest.raises(ValueError, match=r"train\.no_such_key"):  # the check itself can fail
        load_params(REPO / "params.yaml", ["train.no_such_key=1"])


def _service_uri(objects: list[dict[str, Any]], name: str) -> str:
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == name)
    return f"http://{name}:{service['spec']['ports'][0]['port']}"


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_mlflow_uri_matches_the_service_everywhere(folder):
    objects = _render(folder)
    uri = _service_uri(objects, "mlflow")
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "acol-env")
    assert config["data"]["MLFLOW_TRACKING_URI"] == uri
    rayjobs = [o for o in objects if o["kind"] == "RayJob"] + _embedded_rayjobs(objects)
    assert len(rayjobs) == 3  # train, extract, the CronJob's reevaluate
    for job in rayjobs:
        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
        assert env["MLFLOW_TRACKING_URI"] == uri, job["metadata"]["name"]
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "acol"
    # the server listens where the Service sends traffic
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "mlflow")
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert f"--port={service['spec']['ports'][0]['targetPort']}" in container["args"]
    assert "--serve-artifacts" in container["args"]
    assert any(a.startswith("--backend-store-uri=postgresql://") for a in container["args"])


def _pods(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [cluster["spec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]
    ]


def test_ray_pods_share_storage_and_env_and_match_the_ray_pin():
    objects = _render(BASE)
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    pvcs = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for pod in _pods(cluster):
        claims = {
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert claims <= pvcs and "acol-shared" in claims
        container = pod["containers"][0]
        assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
        assert {"configMapRef": {"name": "acol-env"}} in container["envFrom"]
    shared = next(
        o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "acol-shared"
    )
    assert shared["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]  # checkpoints written on one node, read on another
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(p for p in pins if p.startswith("ray[")).split("==")[1]
    assert cluster["spec"]["rayVersion"] == ray_pin
    train = next(o for o in objects if o["kind"] == "RayJob" and o["metadata"]["name"] == "acol-train")
    assert "train.placement_strategy=SPREAD" in train["spec"]["entrypoint"]
    assert "train.storage_path=/shared/" in train["spec"]["entrypoint"]


def test_gpu_worker_group_requests_gpus_and_the_gpu_overlay_scales_it():
    def gpu_group(objects):
        cluster = next(o for o in objects if o["kind"] == "RayCluster")
        return next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-workers")

    base = gpu_group(_render(BASE))
    resources = base["template"]["spec"]["containers"][0]["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1 and base["replicas"] == 0
    gpu_objects = _render(K8S / "overlays" / "gpu")
    gpu = gpu_group(gpu_objects)
    gpus = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert gpu["replicas"] >= 1 and gpus >= 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
    train = next(o for o in gpu_objects if o["kind"] == "RayJob" and o["metadata"]["name"] == "acol-train")
    entry = train["spec"]["entrypoint"]
    assert "train.use_gpu=true" in entry
    workers = int(re.search(r"train\.num_workers=(\d+)", entry).group(1))
    assert workers == gpu["replicas"] * gpus  # one Ray Train worker per GPU


def test_images_agree_with_the_dockerfile():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    built = set(re.findall(r"docker build .*-t (\S+)", dockerfile))
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in _kustomization(BASE)["images"]}
    assert set(images.values()) == built, (images, built)
    for folder in [BASE, *OVERLAYS]:
        for obj in _render(folder):
            for image in re.findall(r"'image': '([^']+)'", str(obj)):
                # short names are the project's own images (kustomize rewrites them); others are pinned
                assert image in images or re.search(r":[\w.-]+$", image), f"{image}: unknown or unpinned"
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in p for p in pins)  # the image installs exactly these (read from pyproject.toml)
    assert "pyproject.toml" in dockerfile


def test_cronjob_runs_the_reevaluation_rayjob():
    objects = _render(BASE)
    cron = next(o for o in objects if o["kind"] == "CronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    template = next(v for v in pod["volumes"] if "configMap" in v)["configMap"]["name"]
    (job,) = _embedded_rayjobs([o for o in objects if o["metadata"]["name"] == template])
    assert "pipelines/reevaluate.py" in job["spec"]["entrypoint"]
    role = next(
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == pod["serviceAccountName"]
    )
    assert {"create", "get"} <= set(role["rules"][0]["verbs"]) and role["rules"][0]["resources"] == [
        "rayjobs"
    ]


def _run_stage(path_dirs: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.pathsep.join(map(str, path_dirs)), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["/bin/sh", str(REPO / "scripts" / "run_stage.sh"), "pipelines/train.py", "--help"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_stage_without_the_venv_says_so(tmp_path: Path) -> None:
    """dvc.yaml runs every stage through scripts/run_stage.sh: a wrong or missing `python` gets a message
    that names the venv (before: an ImportError traceback, and DVC's "exited with 1")."""
    import shutil

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    cmds = [s.get("do", s)["cmd"] for s in stages.values()]
    assert all(cmd.startswith("sh scripts/run_stage.sh pipelines/") for cmd in cmds)

    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "dirname"):
        os.symlink(shutil.which(tool) or f"/bin/{tool}", bare / tool)
    missing = _run_stage([bare], tmp_path)  # no python at all
    assert missing.returncode == 2 and "python' is not on PATH" in missing.stderr
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system:  # a python without the project's packages
        os.symlink(system, bare / "python")
        wrong = _run_stage([bare], tmp_path)
        assert wrong.returncode == 2, wrong.stderr
        assert (
            "virtual environment, which is not active" in wrong.stderr
            and "source .venv/bin/activate" in wrong.stderr
        )
    venv = _run_stage(
        [Path(sys.executable).parent, bare.parent / "nothing", Path("/usr/bin"), Path("/bin")], tmp_path
    )
    assert venv.returncode == 0 and "--method" in venv.stdout, venv.stderr  # with the venv: the stage runs
