"""The direction of dependencies: config -> utils -> models -> training -> scripts.

Every import statement of every module counts, those inside functions included: a lazy import is
still a dependency, and hiding one in a function is how cycles crept in before.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("config", "utils", "models", "training", "scripts")
STAGES = {"training.collect", "training.train_vae", "training.train_mdnrnn", "training.train_controller",
          "training.ppo_baseline"}


def project_modules(root: Path) -> dict[str, Path]:
    """{dotted name: file} of config.py, the scripts and the packages utils/, models/, training/, tools/, benchmarks/."""
    files = [*root.glob("*.py"), *(path for package in ("utils", "models", "training", "tools", "benchmarks")
                                   for path in (root / package).glob("*.py"))]
    return {".".join(path.relative_to(root).with_suffix("").parts): path for path in files
            if path.name != "__init__.py"}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its body (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in candidates if name in modules)
    return found


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    return top if top in LAYERS else "scripts"  # train, evaluate, tools.*, benchmarks.*


def layering_violations(root: Path) -> list[str]:
    """Every import that points the wrong way, as 'importer -> imported: why'."""
    modules = project_modules(root)
    violations = []
    for module, path in sorted(modules.items()):
        for imported in sorted(imports_of(path, modules) - {module}):
            mine, theirs = LAYERS.index(layer_of(module)), LAYERS.index(layer_of(imported))
            if module == "config" and imported == "utils.errors":
                continue  # the one exception type every layer raises, config included
            if theirs > mine:
                violations.append(f"{module} -> {imported}: {layer_of(module)} may not import {layer_of(imported)}")
            elif module in STAGES and imported in STAGES:
                violations.append(f"{module} -> {imported}: a stage may not import another stage's script")
            elif layer_of(module) == layer_of(imported) == "scripts" and not imported.startswith("benchmarks.common"):
                violations.append(f"{module} -> {imported}: scripts do not import each other")
    return violations


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph (Tarjan)."""
    modules = project_modules(root)
    graph = {module: imports_of(path, modules) - {module} for module, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_imports_point_one_way():
    assert layering_violations(ROOT) == []


def test_no_import_cycles():
    assert import_cycles(ROOT) == []


def test_the_checks_catch_a_lazy_upward_import_a_stage_to_stage_import_and_a_cycle(tmp_path):
    for package in ("utils", "models", "training"):
        (tmp_path / package).mkdir()
    (tmp_path / "config.py").write_text("from utils.errors import WorldModelsError\n")
    (tmp_path / "utils" / "errors.py").write_text("")
    (tmp_path / "utils" / "files.py").write_text("def save():\n    from training.train_vae import step\n")
    (tmp_path / "models" / "vae.py").write_text("import utils.files\n")
    (tmp_path / "training" / "train_vae.py").write_text("from models import vae\nfrom utils import files\n")
    (tmp_path / "training" / "collect.py").write_text("from training.train_vae import step\n")
    assert layering_violations(tmp_path) == [
        "training.collect -> training.train_vae: a stage may not import another stage's script",
        "utils.files -> training.train_vae: utils may not import training",
    ]
    assert import_cycles(tmp_path) == [["models.vae", "training.train_vae", "utils.files"]]
