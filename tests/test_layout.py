"""The architecture as rules: imports run one way, with no circle; the parameters module is a leaf; and every
stage's DVC deps list exactly the code it runs (none missing, none it does not import).

All read the source with `ast` (no import is executed), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import re
import sys
from graphlib import CycleError, TopologicalSorter
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_BELOW_DISTRIBUTED = {
    *("acol.io", "acol.cpu_isa", "acol.config", "acol.data", "acol.models", "acol.wsol"),
    *("acol.training", "acol.inference", "acol.tracking"),
}
# Which acol parts each part may import (itself always, and EVERY_PART_MAY_IMPORT). Read as the layer diagram of
# README "What is in here".
ALLOWED: dict[str, set[str]] = {
    "acol": set(),  # the package's own __init__ (its version)
    "acol.errors": set(),  # UserError, the base of every error a user can fix
    "acol.io": set(),
    "acol.cpu_isa": set(),  # the kernels' instruction set: set first thing in every process that runs torch
    # the synthetic generator reads its config (acol.config.SyntheticConfig, a params section)
    "acol.data": {"acol.io", "acol.config"},
    "acol.models": set(),
    # the parameters: a leaf (PARAMS_MODULE below); backbone and method names are literals there
    "acol.config": set(),
    "acol.presets": {"acol.config", "acol.published"},
    "acol.published": set(),  # the published numbers: data the presets, the report and the README read
    "acol.wsol": {"acol.io", "acol.data"},
    "acol.training": {"acol.config", "acol.models"},
    "acol.inference": {"acol.io", "acol.cpu_isa", "acol.config", "acol.data", "acol.models", "acol.wsol"},
    "acol.tracking": {
        "acol.io",
        "acol.cpu_isa",
        "acol.config",
        "acol.data",
        "acol.models",
        "acol.inference",
        "acol.wsol",
    },
    "acol.distributed": _BELOW_DISTRIBUTED,
    # stages: the rehearsal runs a preset ("acol.presets"); the report shows published numbers
    "acol.stages": _BELOW_DISTRIBUTED | {"acol.distributed", "acol.presets", "acol.published"},
    "acol.evaluate": {"acol.stages"},  # the documented `python -m acol.evaluate`, an alias
}
# Leaves that every part may import: the user error base class (so each part's errors can subclass it).
EVERY_PART_MAY_IMPORT = {"acol.errors"}
# Third-party packages a part must not import (the torch-free metrics core; no Ray or MLflow below the top).
FORBIDDEN: dict[str, set[str]] = {
    "acol.wsol": {"torch", "torchvision", "ray", "mlflow"},
    "acol.data": {"ray", "mlflow"},
    "acol.models": {"ray", "mlflow"},
    "acol.training": {"ray", "mlflow"},
    "acol.inference.mapstore": {"torch", "torchvision", "ray", "mlflow"},
    "acol.config": {"torch", "ray", "mlflow"},
    "acol.errors": {"torch", "ray", "mlflow", "numpy", "pydantic"},
    "acol.cpu_isa": {"torch", "ray", "mlflow", "numpy"},
}
NEVER = ("pipelines", "benchmarks", "tests", "studies")


def module_name(path: Path) -> str:
    """Dotted name of a file under ROOT (``acol/data/__init__.py`` -> ``acol.data``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, anywhere in it; ``from a import b`` gives ``a`` and ``a.b``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def part_of(module: str) -> str:
    """The ALLOWED key a module belongs to (``acol.stages.report`` -> ``acol.stages``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def rule_violations(module: str, imports: set[str]) -> list[str]:
    """Why each import of `module` breaks the rules (empty when it keeps them)."""
    own = part_of(module)
    if own not in ALLOWED:
        return [f"{module}: not in a known part of acol (add it to ALLOWED and README's layout)"]
    problems = []
    for name in sorted(imports):
        top = name.split(".")[0]
        if top in NEVER:
            problems.append(f"{module} imports {name}: nothing in acol imports {top}/")
        if top == "acol" and name.count(".") >= 1:
            other = part_of(name)
            if other in ALLOWED and other != own and other not in ALLOWED[own] | EVERY_PART_MAY_IMPORT:
                problems.append(f"{module} imports {name}: {own} may import only {sorted(ALLOWED[own])}")
        for scope, banned in FORBIDDEN.items():
            if (module == scope or module.startswith(scope + ".")) and top in banned:
                problems.append(f"{module} imports {name}: {scope} must not import {top}")
    return problems


def library_files() -> list[Path]:
    return sorted((ROOT / "acol").rglob("*.py"))


def test_imports_run_one_way() -> None:
    problems = [p for f in library_files() for p in rule_violations(module_name(f), imported_modules(f))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "imports", "expected"),
    [
        ("acol.wsol.localization_metrics", {"torch"}, "acol.wsol must not import torch"),
        ("acol.data.manifest", {"acol.models.factory"}, "acol.data may import only"),
        ("acol.models.heads", {"acol.stages.report"}, "acol.models may import only"),
        ("acol.stages.report", {"pipelines.report"}, "nothing in acol imports pipelines/"),
        ("acol.inference.mapstore", {"torch"}, "acol.inference.mapstore must not import torch"),
        ("acol.newpart.x", set(), "not in a known part"),
    ],
)
def test_rule_checker_catches_a_wrong_import(module: str, imports: set[str], expected: str) -> None:
    assert any(expected in p for p in rule_violations(module, imports))
    ok = {"acol.wsol.boxes", "acol.tracking.stage_runs", "mlflow"}
    assert rule_violations("acol.stages.report", ok) == []


# --- the parameters module is a leaf ---

PARAMS_MODULE = "acol.config"
# ParamsError subclasses acol.errors.UserError (the CLI's one-line exit 2): the one acol import it may have.
PARAMS_MAY_IMPORT = {"acol.errors"}


def params_module_violations(imports: set[str]) -> list[str]:
    """Why each acol import of the parameters module breaks its rule: loading params.yaml runs no other acol
    code (no data, no models), so every CLI, and every stage's DVC deps, start from it alone."""
    return [
        f"{PARAMS_MODULE} imports {name}: the parameters module may import only {sorted(PARAMS_MAY_IMPORT)} of acol"
        for name in sorted(imports)
        if name.split(".")[0] == "acol"
        and not any(name == ok or name.startswith(ok + ".") for ok in PARAMS_MAY_IMPORT)
    ]


def test_the_parameters_module_imports_nothing_else_of_acol() -> None:
    path = ROOT.joinpath(*PARAMS_MODULE.split(".")).with_suffix(".py")
    problems = params_module_violations(imported_modules(path))
    assert not problems, "\n".join(problems)


def test_params_rule_catches_an_import() -> None:
    assert params_module_violations({"acol.models", "acol.models.list_backbones"})  # the old lazy lookup
    assert params_module_violations({"acol.data.synthetic", "acol.data.synthetic.SyntheticConfig"})
    assert params_module_violations({"acol.errors", "acol.errors.UserError", "yaml", "pydantic"}) == []


# --- no import circle ---


def import_graph(files: list[Path]) -> dict[str, set[str]]:
    """Module -> the acol modules it imports (lazy imports too); ``from a import b`` counts ``a.b`` when that is
    a module. Packages Python runs on the way (``acol``, ``acol.data``) are not edges: only what is named."""
    graph: dict[str, set[str]] = {}
    for path in files:
        own = module_name(path)
        targets = (module_file(name) for name in imported_modules(path) if name.split(".")[0] == "acol")
        graph[own] = {module_name(t) for t in targets if t is not None} - {own}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of `graph` (``[a, b, a]``: a imports b imports a), or [] when there is none."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        return list(reversed(error.args[1]))  # graphlib lists it against the edges: a <- b <- a
    return []


def test_acol_has_no_import_circle() -> None:
    cycle = import_cycle(import_graph(library_files()))
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_cycle_check_catches_a_circle() -> None:
    graph = {  # the circle this rule was written against: private names one way, a lazy call back the other
        "acol.data.synthetic": {"acol.io", "acol.data.shadow_ilsvrc"},
        "acol.data.shadow_ilsvrc": {"acol.data.synthetic", "acol.io"},
        "acol.io": set(),
    }
    cycle = import_cycle(graph)
    assert cycle[0] == cycle[-1] and set(cycle) == {"acol.data.synthetic", "acol.data.shadow_ilsvrc"}
    assert all(b in graph[a] for a, b in pairwise(cycle))  # each step an import
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


# --- pipelines/: a parser and one call ---

SCRIPT_MAY_IMPORT = ("acol.stages.cli",)  # besides its own stage module and the standard library


def script_violations(stage: str, imports: set[str]) -> list[str]:
    """Why each import of ``pipelines/<stage>.py`` breaks the rule: the stage's work lives in
    ``acol.stages.<stage>``, so the script may import only that module, `acol.stages.cli` and the stdlib."""
    own = f"acol.stages.{stage}"
    allowed = (own, *SCRIPT_MAY_IMPORT)
    problems = []
    for name in sorted(imports):
        top = name.split(".")[0]
        if name == "acol.stages" or any(name == a or name.startswith(a + ".") for a in allowed):
            continue
        if top == "__future__" or (top != "acol" and top in sys.stdlib_module_names):
            continue
        problems.append(
            f"pipelines/{stage}.py imports {name}: a script imports only {own} and acol.stages.cli"
        )
    return problems


def test_scripts_import_only_their_stage() -> None:
    scripts = sorted((ROOT / "pipelines").glob("*.py"))
    assert scripts, "no pipelines/*.py found: the check is broken"
    problems = [p for f in scripts for p in script_violations(f.stem, imported_modules(f))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "imports",
    [{"mlflow"}, {"acol.io"}, {"acol.stages.evaluate", "acol.stages.evaluate.run"}, {"acol.models"}],
)
def test_script_rule_catches_a_foreign_import(imports: set[str]) -> None:
    assert script_violations("train", imports)
    ok = {"__future__", "__future__.annotations", "sys", "pathlib", "pathlib.Path", "acol.stages"}
    ok |= {"acol.stages.train", "acol.stages.cli", "acol.stages.cli.run_stage"}
    assert script_violations("train", ok) == []


# --- DVC deps ---


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None (third party, or an attribute not a module)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_closure(script: Path) -> set[Path]:
    """Every project file that running `script` can import, with the packages Python imports on the way."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            if name.split(".")[0] != "acol":
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # acol, acol.data, acol.data.manifest: each runs
                found = module_file(".".join(parts[:depth]))
                if found is not None:
                    todo.append(found)
    return seen


def stage_commands_and_deps() -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (cmd, deps) as DVC itself resolves dvc.yaml (``foreach`` over ``vars``, one per item)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {
            stage.addressing: (stage.cmd, [dep.def_path for dep in stage.deps])
            for stage in repo.index.stages
            if stage.cmd
        }


def missing_deps(cmd: str, deps: list[str]) -> list[str]:
    """Project files the stage's script imports that no dep (a file, or a folder above it) covers."""
    missing = []
    for script in re.findall(r"pipelines/\w+\.py", cmd):
        for path in sorted(project_closure(ROOT / script)):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps):
                missing.append(rel)
    return missing


def script_closure(cmd: str) -> set[str]:
    """The project files (relative, posix) that the stage's scripts can import, the scripts included."""
    return {
        path.relative_to(ROOT).as_posix()
        for script in re.findall(r"pipelines/\w+\.py", cmd)
        for path in project_closure(ROOT / script)
    }


def unneeded_deps(cmd: str, deps: list[str]) -> list[str]:
    """Code deps (``acol/...``, ``pipelines/...``) naming Python files the stage's scripts never import.

    A file dep must be in the closure. A folder dep must hold nothing but files of the closure (then it is
    exactly the code the stage runs, listed short); a folder where some module is not imported must be listed
    file by file, or every edit there would rerun the stage for nothing. A folder or file with no Python in it
    (``acol/stages/templates``) is data the code reads, not imported code: left alone.
    """
    closure = script_closure(cmd)
    problems = []
    for dep in deps:
        if not dep.startswith(("acol/", "pipelines/")):
            continue
        path = ROOT / dep
        if path.is_dir():
            python = {p.relative_to(ROOT).as_posix() for p in path.rglob("*.py")}
            for rel in sorted(python - closure):
                problems.append(f"{dep} (a folder) holds {rel}, which the stage does not import: list files")
        elif not path.exists():
            problems.append(f"{dep} does not exist")
        elif path.suffix == ".py" and dep not in closure:
            problems.append(f"{dep}, which the stage does not import")
    return problems


def test_every_stage_lists_the_code_it_imports() -> None:
    stages = stage_commands_and_deps()
    assert {"train@acol", "train@cam", "evaluate@cam", "metrics", "report"} <= set(stages)  # vars resolved
    problems = [
        f"dvc.yaml stage {stage}: deps miss {rel}"
        for stage, (cmd, deps) in stages.items()
        for rel in missing_deps(cmd, deps)
    ]
    assert not problems, "\n".join(problems)


def test_deps_check_sees_a_missing_module_and_a_folder_dep() -> None:
    cmd = "sh scripts/run_stage.sh pipelines/evaluate.py --method acol"
    full = missing_deps(cmd, [])
    assert (
        "pipelines/evaluate.py" in full and "acol/wsol/contours.py" in full
    )  # reached through wsol.localization_metrics
    assert "acol/wsol/contours.py" not in missing_deps(cmd, ["acol/wsol"])


def test_no_stage_lists_code_it_does_not_import() -> None:
    problems = [
        f"dvc.yaml stage {stage}: deps list {problem}"
        for stage, (cmd, deps) in stage_commands_and_deps().items()
        for problem in unneeded_deps(cmd, deps)
    ]
    assert not problems, "\n".join(problems)


def test_over_listing_check_sees_an_unused_module_and_folder() -> None:
    cmd = "sh scripts/run_stage.sh pipelines/metrics.py --out metrics"
    assert unneeded_deps(cmd, ["acol/models"]) and unneeded_deps(cmd, ["acol/models/backbones.py"])
    partly = unneeded_deps(cmd, ["acol/tracking"])  # dvc_metrics is imported, stage_runs is not
    assert any("acol/tracking/stage_runs.py" in p for p in partly)
    assert not any("dvc_metrics" in p for p in partly)
    exact = [
        "pipelines/metrics.py",
        "acol/tracking/__init__.py",
        "acol/tracking/dvc_metrics.py",
        "outputs/train",
    ]
    assert (
        unneeded_deps(cmd, [*exact, "acol/stages/templates"]) == []
    )  # data and non-code deps are left alone


def test_model_code_reruns_only_the_stages_that_run_a_model() -> None:
    """From the computed closures: metrics and report import nothing of acol/models, and a backbone edit
    (acol/models/backbones.py) reruns none of synthesize, prepare and metrics. Each was dragged in before:
    acol.config's backbone check imported acol.models (every stage), and acol.tracking.runs.log_model pulled
    the model code into prepare and report (log_model is now in acol.tracking.mlflow_model)."""
    closure = {
        name: script_closure(f"pipelines/{name}.py")
        for name in ("synthesize", "prepare", "metrics", "report")
    }
    for name in ("metrics", "report"):
        assert not [rel for rel in closure[name] if rel.startswith("acol/models/")], name
    for name in ("synthesize", "prepare", "metrics"):
        assert "acol/models/backbones.py" not in closure[name], name
