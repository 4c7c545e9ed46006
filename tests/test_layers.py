"""The layering, checked on the source: front doors (the studio, the CLI, the bench) reach the
engine only through its public face `webui.engine`, which loads neither torch nor diffusers;
modules every layer shares do not import the engine; nothing in the product imports the tests."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "webui"
ENGINE_MODULES = {path.stem for path in (PACKAGE / "engine").glob("*.py")} - {"__init__"}
FRONT_DOORS = sorted([*(PACKAGE / "ui").glob("*.py"), *(PACKAGE / "api").glob("*.py"),
                      *(PACKAGE / "bench").glob("*.py"), PACKAGE / "cli.py",
                      PACKAGE / "__main__.py", *PACKAGE.glob("xyplot.py")])
SHARED = [PACKAGE / name for name in ("params.py", "infotext.py", "images.py", "presets.py",
                                      "prompts.py", "errors.py", "files.py", "schedulers.py")]


def imported(path: Path, package: str | None = None) -> list[str]:
    """Every module `path` imports, as absolute dotted names (relative imports resolved against
    `package`, by default the package `path` lies in)."""
    package = package or ".".join(("webui", *path.relative_to(PACKAGE).parent.parts))
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.append(base)
            # `from ..engine import core` imports a submodule too.
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def engine_submodules(path: Path, package: str | None = None) -> list[str]:
    return [name for name in imported(path, package)
            if name.startswith("webui.engine.") and name.split(".")[2] in ENGINE_MODULES]


@pytest.mark.parametrize("path", FRONT_DOORS, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_front_doors_use_only_the_engines_public_face(path):
    assert engine_submodules(path) == []


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_shared_modules_do_not_import_the_engine(path):
    assert [name for name in imported(path) if name.startswith("webui.engine")] == []


def test_nothing_in_the_product_imports_the_tests():
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if any(name == "tests" or name.startswith("tests.")
                        for name in imported(path))]
    assert offenders == []


@pytest.mark.parametrize("module", ["webui.engine", "webui.ui", "webui.ui.app", "webui.cli",
                                    "webui.api"])
def test_importing_a_layer_loads_no_torch_or_diffusers(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_check_sees_a_submodule_import(tmp_path):
    # The checker itself: a UI module reaching into the engine is caught, in every form.
    sample = tmp_path / "sample.py"
    sample.write_text("from ..engine.core import Engine\nfrom ..engine import core\n"
                      "import webui.engine.models\nfrom ..engine import Engine\n")
    assert sorted(set(engine_submodules(sample, "webui.ui"))) == [
        "webui.engine.core", "webui.engine.core.Engine", "webui.engine.models"]


def test_one_pickle_rule():
    # Pickle files are refused by one function with one suffix list (engine/models.py); a list
    # of pickle suffixes anywhere else would drift from it.
    pickle_suffixes = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
    lists = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = {elt.value for elt in node.elts if isinstance(elt, ast.Constant)}
                if len(values & pickle_suffixes) >= 2:
                    lists.append((path.relative_to(PACKAGE).as_posix(), node.lineno))
    assert [where for where, _ in lists] == ["engine/models.py"], lists
