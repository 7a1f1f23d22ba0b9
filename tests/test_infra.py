"""infra/ stays consistent with the code: manifests parse, names and paths resolve, commands are valid.

Most checks need no kubectl or kustomize: the YAML is read with PyYAML, and the overlays' JSON patches are applied
by the small `_apply_patch` below (replace/add only, which is all the overlays use), so a patch whose path no
longer exists in the base fails here rather than at `kubectl apply` time. The security checks (secrets, network
policies, exposure) read what `kubectl kustomize` renders when kubectl is installed, else the same `_render`.
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


# --- images: what each Dockerfile stage installs -----------------------------------------------------------------


def _dockerfile_stages() -> dict[str, str]:
    """Each ``FROM ... AS name`` stage of infra/docker/Dockerfile, with line continuations joined."""
    text = (INFRA / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        found = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if found:
            name = found.group(1)
            stages.setdefault(name or "", "")
        elif name and not line.lstrip().startswith("#"):
            stages[name] += line + "\n"
    return stages


def _apt_packages(stage: str) -> set[str]:
    found = re.search(r"apt-get install ([^&]*)", stage)
    return {t for t in found.group(1).split() if not t.startswith("-")} if found else set()


def _mlflow_image_requirements() -> list[str]:
    """What the `mlflow-server` stage's pip line installs: its pyproject filter, run here, plus its extra pins."""
    stage = _dockerfile_stages()["mlflow-server"]
    snippet = re.search(r'python -c "(.*?)" > /tmp/requirements\.txt', stage, re.S)
    assert snippet, "the mlflow-server stage no longer reads its pins from pyproject.toml"
    code = snippet.group(1).replace("/tmp/pyproject.toml", str(REPO / "pyproject.toml"))
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    extra = re.search(r"pip install -r /tmp/requirements\.txt([^&]*)", stage)
    assert extra, "the mlflow-server stage does not pip install its requirements file"
    return listed.split() + [t for t in extra.group(1).split() if not t.startswith("-")]


def test_mlflow_image_installs_the_driver_sqlalchemy_loads_for_postgresql() -> None:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3: an image with only psycopg2 dies at start."""
    from importlib.metadata import packages_distributions, version

    import sqlalchemy
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    driver = sqlalchemy.create_engine("postgresql://u:p@h/db").dialect.driver  # no connection is made
    (dist,) = {canonicalize_name(d) for d in packages_distributions()[driver]}
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r) for r in _mlflow_image_requirements()}
    assert dist in wanted, (
        f"the mlflow-server image lacks {dist}, which `postgresql://` loads: {sorted(wanted)}"
    )
    assert str(wanted[dist].specifier) == f"=={version(dist)}"  # the version tested here
    # python:slim has no libpq: the driver must bring its own (the binary extra) or the stage must install it
    stage = _dockerfile_stages()["mlflow-server"]
    assert "binary" in wanted[dist].extras or "libpq5" in _apt_packages(stage)
    assert {"mlflow", "boto3"} <= set(wanted)  # the server, and the S3 client of --artifacts-destination
    assert "psycopg2-binary" not in wanted and "psycopg2" not in wanted  # nothing loads it


def test_ray_image_has_what_kuberay_probes_run() -> None:
    """KubeRay's default readiness/liveness probes of Ray pods run ``wget`` in the container."""
    assert "wget" in _apt_packages(_dockerfile_stages()["base"])
    cluster = next(o for o in _render(BASE) if o["kind"] == "RayCluster")
    for pod in _pods(cluster):  # probes of our own, if any, use only what the image has
        for probe in ("readinessProbe", "livenessProbe"):
            command = " ".join(pod["containers"][0].get(probe, {}).get("exec", {}).get("command", []))
            assert "curl" not in command


# --- rendered objects: secrets and network exposure --------------------------------------------------------------


def _rendered(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k` would create (labels, namespace, generated secrets); `_render` without kubectl."""
    import shutil

    if shutil.which("kubectl") is None:
        return _render(folder)
    out = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _generated_secret(folder: Path, name: str) -> dict[str, str]:
    for entry in _kustomization(folder).get("secretGenerator", []):
        if entry["name"] == name:
            return dict(item.split("=", 1) for item in entry.get("literals", []))
    return {}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of args from the container's env."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_database_password_reaches_mlflow_from_the_secret_never_the_command_line(folder: Path) -> None:
    """The password was in ``--backend-store-uri`` (visible in ``ps``; '@', ':' or '/' in it broke the URI).
    Now libpq reads it from PGPASSWORD, a secretKeyRef; checked with libpq itself on a password with '@:/'."""
    import sqlalchemy
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    objects = _rendered(folder)
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}  # generated: mlflow-db-<hash>
    assert ref["key"] == "POSTGRES_PASSWORD"
    assert ref["name"] == "mlflow-db" or (ref["name"] in secrets and ref["name"].startswith("mlflow-db-"))
    generated = _generated_secret(folder, "mlflow-db")
    for arg in [*container.get("command", []), *container["args"]]:
        assert "POSTGRES_PASSWORD" not in arg and "PGPASSWORD" not in arg, arg
        assert not generated or generated["POSTGRES_PASSWORD"] not in arg, arg
    assert all("value" not in e or "PASSWORD" not in name for name, e in env.items())  # no literal in env

    secret = {"POSTGRES_USER": "mlflow", "POSTGRES_DB": "mlflow", "POSTGRES_PASSWORD": "p@ss:w/rd%41"}
    values = {name: e.get("value", "") for name, e in env.items()} | secret
    (uri,) = [
        _expand(a.split("=", 1)[1], values) for a in container["args"] if a.startswith("--backend-store-uri=")
    ]
    url = sqlalchemy.make_url(uri)
    assert url.password is None and url.get_backend_name() == "postgresql"
    engine = sqlalchemy.create_engine(url)
    assert engine.dialect.driver == "psycopg"
    args, kwargs = engine.dialect.create_connect_args(url)
    kwargs.pop("context", None)
    kwargs.update(host="127.0.0.1", port=1)  # a closed port: libpq resolves its settings without a server
    saved = os.environ.get("PGPASSWORD")
    os.environ["PGPASSWORD"] = secret["POSTGRES_PASSWORD"]  # as the container's env gives it
    try:
        conn = pq.PGconn.connect_start(make_conninfo(*args, **kwargs).encode())
        assert conn.password == secret["POSTGRES_PASSWORD"].encode() and conn.user == b"mlflow"
        conn.finish()
    finally:
        if saved is None:
            os.environ.pop("PGPASSWORD")
        else:
            os.environ["PGPASSWORD"] = saved


PART_OF = {"app.kubernetes.io/part-of": "acol"}
OPERATOR_NS = {"kubernetes.io/metadata.name": "kuberay-system"}
OPERATOR = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against `labels`."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _admits(
    objects, dst: dict[str, str], port: int, src: dict[str, str], src_ns: dict[str, str] | None
) -> bool:
    """NetworkPolicy semantics: may a pod labelled `src` (in the namespace labelled `src_ns`, None: the same
    namespace) open TCP `port` on a pod labelled `dst`? A pod no ingress policy selects admits everything."""
    policies = [
        o["spec"] for o in objects
        if o["kind"] == "NetworkPolicy" and "Ingress" in o["spec"].get("policyTypes", ["Ingress"])
        and _selects(o["spec"]["podSelector"], dst)
    ]  # fmt: skip
    if not policies:
        return True
    for spec in policies:
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            for p in ports or []:
                assert isinstance(p.get("port", 0), int), "named ports: this check compares numbers"
            if ports and not any(
                p.get("protocol", "TCP") == "TCP" and p.get("port", port) <= port <= p.get("endPort", p.get("port", port))
                for p in ports
            ):  # fmt: skip
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    return True  # an address range may hold anything
                if "namespaceSelector" in peer:
                    if not _selects(
                        peer["namespaceSelector"], src_ns or {"kubernetes.io/metadata.name": "same"}
                    ):
                        continue
                elif src_ns is not None:
                    continue
                if _selects(peer.get("podSelector", {}), src):
                    return True
    return False


def _template_labels(template: dict[str, Any]) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("labels") or {})


def _ray_pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The labels of the RayCluster's pods: the template's plus those KubeRay adds."""
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    name = cluster["metadata"]["name"]
    pods = {"head": _template_labels(cluster["spec"]["headGroupSpec"]["template"])
            | {"ray.io/cluster": name, "ray.io/node-type": "head", "ray.io/group": "headgroup"}}  # fmt: skip
    for group in cluster["spec"]["workerGroupSpecs"]:
        pods[group["groupName"]] = _template_labels(group["template"]) | {
            "ray.io/cluster": name, "ray.io/node-type": "worker", "ray.io/group": group["groupName"]
        }  # fmt: skip
    return pods


def _workload_pods(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    obj = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    return _template_labels(spec["template"])


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_only_the_projects_pods_reach_mlflow_and_ray(folder: Path) -> None:
    """MLflow and Ray's ports (the job API runs code) were open to every pod of the cluster."""
    objects = _rendered(folder)
    ray = _ray_pods(objects)
    head = ray["head"]
    mlflow = _workload_pods(objects, "Deployment", "mlflow")
    postgres = _workload_pods(objects, "StatefulSet", "postgres")
    minio = _workload_pods(objects, "Deployment", "minio")
    bucket_job = _workload_pods(objects, "Job", "minio-make-bucket")
    submitters = {
        job["metadata"]["name"]: _template_labels(job["spec"]["submitterPodTemplate"])
        for job in [o for o in objects if o["kind"] == "RayJob"] + _embedded_rayjobs(objects)
    }
    assert len(submitters) == 3
    # who must get in: every Ray pod and every RayJob submitter (`ray job submit` to the head's job API)
    clients = {**ray, **{f"submitter {n}": labels for n, labels in submitters.items()}}
    for who, labels in clients.items():
        assert _admits(objects, mlflow, 5000, labels, None), f"{who} cannot reach MLflow"
        for dst, port in [(head, 8265), (head, 6379), (head, 10001), (ray["cpu-workers"], 10002)]:
            assert _admits(objects, dst, port, labels, None), (
                f"{who} cannot reach {dst['ray.io/group']}:{port}"
            )
    assert _admits(objects, postgres, 5432, mlflow, None) and _admits(objects, minio, 9000, mlflow, None)
    assert _admits(objects, minio, 9000, bucket_job, None)
    # the KubeRay operator (another namespace) polls the job API only
    assert _admits(objects, head, 8265, OPERATOR, OPERATOR_NS)
    for port in (6379, 10001, 52365):
        assert not _admits(objects, head, port, OPERATOR, OPERATOR_NS)
    assert not _admits(objects, mlflow, 5000, OPERATOR, OPERATOR_NS)
    # who must not: any other pod, here or in another namespace, and project pods where they have no business
    strangers = [({"app": "intruder"}, None), ({"app": "intruder"}, {"kubernetes.io/metadata.name": "x"}),
                 (PART_OF, {"kubernetes.io/metadata.name": "x"}), (OPERATOR, None)]  # fmt: skip
    for labels, ns in strangers:
        assert not _admits(objects, mlflow, 5000, labels, ns), (labels, ns)
        for port in (8265, 6379, 10001, 52365):
            assert not _admits(objects, head, port, labels, ns) or (labels == OPERATOR and port == 8265)
        assert not _admits(objects, ray["cpu-workers"], 10002, labels, ns)
        assert not _admits(objects, postgres, 5432, labels, ns)
        assert not _admits(objects, minio, 9000, labels, ns)
    assert not _admits(objects, postgres, 5432, head, None)  # only MLflow talks to its database


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_nothing_is_exposed_beyond_the_cluster(folder: Path) -> None:
    objects = _rendered(folder)
    assert not [o for o in objects if o["kind"] in ("Ingress", "Gateway", "HTTPRoute", "Route")]
    for service in (o for o in objects if o["kind"] == "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
        assert "externalIPs" not in service["spec"]
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    for pod in _pods(cluster):
        assert not pod.get("hostNetwork") and all(
            "hostPort" not in p for c in pod["containers"] for p in c.get("ports", [])
        )


def test_the_reevaluation_submitter_runs_the_clusters_image() -> None:
    """The CronJob's RayJob template names its submitter image by a placeholder, filled from the RayCluster
    (the image an overlay set), as KubeRay's own default submitter does."""
    objects = _rendered(K8S / "overlays" / "cpu-dev")
    cron = next(o for o in objects if o["kind"] == "CronJob")
    script = " ".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"])
    (job,) = _embedded_rayjobs(objects)
    assert job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == "__IMAGE__"
    assert "__IMAGE__" in script and "headGroupSpec.template.spec.containers[0].image" in script
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "acol-reevaluate")
    assert any("rayclusters" in r["resources"] and "get" in r["verbs"] for r in role["rules"])


def test_the_gpu_overlay_feeds_training_from_ray_data_on_the_cpu_workers():
    """Issue 23: GPU training reads its images through Ray Data (`train.input=ray_data`), decoded on the CPU
    worker group, whose CPUs cover the GPUs at the measured Ray Data decode rate (benchmarks/results/input.json)
    and the overlay's assumed 1,600 images/s per GPU; the GPU pods keep only the workers' own CPUs."""
    import json

    objects = _render(K8S / "overlays" / "gpu")
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    train = next(o for o in objects if o["kind"] == "RayJob" and o["metadata"]["name"] == "acol-train")
    entry = train["spec"]["entrypoint"]
    assert "train.input=ray_data" in entry and "train.loader_workers=0" in entry
    workers = int(re.search(r"train\.num_workers=(\d+)", entry).group(1))
    per_worker = float(re.search(r"train\.cpus_per_worker=([\d.]+)", entry).group(1))
    rate = json.loads((REPO / "benchmarks/results/input.json").read_text())["ray_data"][
        "images_per_cpu_second"
    ]

    def cpus(group: dict) -> float:
        return float(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])

    cpu_group, gpu_group = groups["cpu-workers"], groups["gpu-workers"]
    assert cpu_group["replicas"] * cpus(cpu_group) >= workers * 1600 / rate
    assert cpu_group["replicas"] <= cpu_group["maxReplicas"]
    gpus = int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert cpus(gpu_group) >= gpus * per_worker  # the workers fit beside their GPUs
