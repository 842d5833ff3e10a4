"""The size of lib/: no function over complexity 12 (McCabe, counted by the pinned ruff) or 60 lines, no
module over 400 lines. What is over a limit today is listed here, to be split; the list must stay exact."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_COMPLEXITY = 12
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400

# Over the limit, to be split: (file, function) -> which limits it exceeds.
FUNCTIONS_OVER: dict[tuple[str, str], set[str]] = {}
# Over the limit, to be split: modules longer than MAX_MODULE_LINES.
MODULES_OVER: set[str] = set()


def _sources() -> list[Path]:
    return sorted((ROOT / "lib").glob("*.py")) + [ROOT / "setup_mesh.py"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args,
                           *(str(p.relative_to(ROOT)) for p in _sources())],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _too_complex() -> set[tuple[str, str]]:
    """Every function over the limit, ignoring the exceptions pyproject.toml grants."""
    result = _ruff("--isolated", "--select", "C901", "--config", f"lint.mccabe.max-complexity={MAX_COMPLEXITY}",
                   "--output-format", "json", "--exit-zero")
    assert result.returncode == 0, result.stderr
    found = set()
    for item in json.loads(result.stdout):
        name = re.match(r"`([^`]+)` is too complex", item["message"]).group(1)
        found.add((Path(item["filename"]).resolve().relative_to(ROOT).as_posix(), name))
    return found


def _too_long() -> set[tuple[str, str]]:
    found = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    found.add((path.relative_to(ROOT).as_posix(), node.name))
    return found


def test_ruff_passes_with_the_projects_configuration():
    result = _ruff()
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_functions_over_the_limits_are_exactly_the_listed_ones():
    found: dict[tuple[str, str], set[str]] = {}
    for key in _too_complex():
        found.setdefault(key, set()).add("complexity")
    for key in _too_long():
        found.setdefault(key, set()).add("lines")
    unlisted = {key: limits for key, limits in found.items() if not limits <= FUNCTIONS_OVER.get(key, set())}
    assert not unlisted, f"over the limits (complexity {MAX_COMPLEXITY}, {MAX_FUNCTION_LINES} lines): {unlisted}"
    assert found == FUNCTIONS_OVER, "brought under the limits: take them off FUNCTIONS_OVER (and pyproject.toml)"


def test_the_modules_over_the_limit_are_exactly_the_listed_ones():
    over = {p.relative_to(ROOT).as_posix() for p in _sources() if len(p.read_text().splitlines()) > MAX_MODULE_LINES}
    assert over - MODULES_OVER == set(), f"over {MAX_MODULE_LINES} lines: split them"
    assert over == MODULES_OVER, "under the limit now: take them off MODULES_OVER"


def test_no_module_imports_another_modules_private_names():
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def _lib_imports() -> dict[str, set[str]]:
    """lib module -> the lib modules it imports, at the top or inside a function."""
    graph = {}
    for path in sorted((ROOT / "lib").glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps
    return graph


def test_no_import_circle_in_lib():
    graph = _lib_imports()

    def reaches(start: str, node: str, seen: set[str]) -> bool:
        for dep in graph.get(node, ()):
            if dep == start or (dep not in seen and reaches(start, dep, seen | {dep})):
                return True
        return False

    circles = sorted(module for module in graph if reaches(module, module, {module}))
    assert not circles, f"modules on an import circle: {circles}"


def test_reading_clusters_imports_nothing_of_the_manifests():
    """What a cluster holds is read against the names in lib/names.py, never against the modules that
    build what apply installs."""
    graph = _lib_imports()
    for reader in ("kube", "workspace", "statusread"):
        assert graph[reader] & {"overlay", "desired", "plan", "ambient"} == set(), reader
