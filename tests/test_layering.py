"""Imports go one way through the package, and the lite install's code never imports torch.

Read with ``ast`` (nothing is imported), so a cycle or a torch import shows here, not on a Raspberry Pi.

The pipeline is data -> models -> engine -> export -> app: a stage may import an earlier one, never a
later one. ``runtime`` is not one stage of it but two parts:

- its torch-free core (image loading, letterbox, decoding + NMS, counting, scaling, the ONNX/TFLite
  predictors) sits below ``data``: training, evaluation and export calibration reuse it on purpose,
  so what is scored and calibrated is exactly what is deployed;
- its torch adapters (``torch_predictor``, and ``loader``, which loads .pt files through ``models``)
  sit after ``models`` and before ``engine``, which validates through them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from bloodcell.errors import EXTRAS

SRC = Path(__file__).resolve().parents[1] / "src"

#: First to last: a module may import its own layer and earlier ones, never a later one.
ORDER = ("shared", "runtime", "data", "models", "runtime torch adapters", "engine", "export", "app", "cli")
#: Top-level modules every layer may use (they import only each other).
SHARED = {
    "bloodcell",
    "bloodcell.errors",
    "bloodcell.types",
    "bloodcell.boxes",
    "bloodcell.atomic",
    "bloodcell.digest",
    "bloodcell.config",
    "bloodcell.palette",
    "bloodcell.weights",
    "bloodcell.assets",
}
TORCH_ADAPTERS = {"bloodcell.runtime.torch_predictor", "bloodcell.runtime.loader"}
STAGES = {"runtime", "data", "models", "engine", "export", "app"}
#: What `pip install bloodcell[lite]` runs (README, "On a Raspberry Pi"): `bloodcell predict` on an
#: exported model. These modules, and all they import when imported, must not import torch; loader
#: reaches torch only inside the .pt branch.
LITE = {"bloodcell.cli", "bloodcell.__main__", "bloodcell.app.predict_job", "bloodcell.app.archive.job"}
#: Packages only the torch and export extras install (the CLI's install hints name the same ones).
TORCH_SIDE = {module for module, extra in EXTRAS.items() if extra in ("torch", "export")}


def layer_of(module: str) -> str | None:
    if module in SHARED:
        return "shared"
    if module == "bloodcell.__main__" or module == "bloodcell.cli" or module.startswith("bloodcell.cli."):
        return "cli"
    if module in TORCH_ADAPTERS:
        return "runtime torch adapters"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def modules(src: Path) -> dict[str, Path]:
    """Every module of the ``bloodcell`` package under ``src``, by dotted name."""
    found = {}
    for path in sorted((src / "bloodcell").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time(statements: list) -> Iterator[ast.stmt]:
    """The statements that run on import: top level, inside if/try/with/for and class bodies;
    not function bodies, nor ``if TYPE_CHECKING:`` blocks."""
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _import_time(getattr(node, field, None) or [])


def imported_names(module: str, path: Path, import_time_only: bool = False) -> set[str]:
    """Dotted names ``module`` imports: ``import a.b`` gives a.b; ``from a import b`` gives a and a.b
    (b may be a module); relative imports are resolved. All imports, including lazy ones in functions
    and type-only ones, unless ``import_time_only``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = _import_time(tree.body) if import_time_only else ast.walk(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def layering_violations(src: Path) -> list[str]:
    """'a (layer) imports b (later layer)' for every import against ORDER."""
    known = modules(src)
    problems = []
    for module, path in known.items():
        mine = layer_of(module)
        # the package's own names load lazily from every layer (its purpose): what it imports on import counts
        facade = module == "bloodcell"
        for name in sorted(imported_names(module, path, import_time_only=facade) & set(known)):
            theirs = layer_of(name)
            if mine and theirs and ORDER.index(theirs) > ORDER.index(mine):
                problems.append(f"{module} ({mine}) imports {name} ({theirs})")
    return problems


def torch_on_import(src: Path, module: str) -> dict[str, list[str]]:
    """Torch-side packages importing ``module`` brings in, each with the chain of modules that imports it."""
    known = modules(src)
    chains = {module: [module]}
    queue, found = [module], {}
    while queue:
        current = queue.pop()
        for name in imported_names(current, known[current], import_time_only=True):
            top = name.split(".")[0]
            if top != "bloodcell":
                if top in TORCH_SIDE:
                    found.setdefault(top, chains[current])
                continue
            parts = name.split(".")  # importing a.b.c runs a, a.b and a.b.c
            for n in range(1, len(parts) + 1):
                dotted = ".".join(parts[:n])
                if dotted in known and dotted not in chains:
                    chains[dotted] = [*chains[current], dotted]
                    queue.append(dotted)
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in modules(SRC) if layer_of(m) is None]
    assert unplaced == [], "place these in tests/test_layering.py's layers"


def test_no_module_imports_a_later_layer():
    assert layering_violations(SRC) == []


def lite_modules() -> list[str]:
    runtime = [m for m in modules(SRC) if layer_of(m) == "runtime" or m == "bloodcell.runtime.loader"]
    return sorted({*runtime, *LITE})


@pytest.mark.parametrize("module", lite_modules())
def test_lite_install_modules_import_no_torch(module):
    assert torch_on_import(SRC, module) == {}


def test_the_checks_see_what_they_rule_on(tmp_path):
    """A package with one import of each kind against the order, and one torch import, is caught."""
    files = {
        "bloodcell/__init__.py": "",
        "bloodcell/data/__init__.py": "",
        "bloodcell/data/voc.py": "from bloodcell.runtime import images\n",  # earlier layer: fine
        "bloodcell/data/direct.py": "import bloodcell.engine.train\n",
        "bloodcell/data/relative.py": "from ..engine import train\n",
        "bloodcell/data/lazy.py": "def f():\n    from bloodcell.export.exporter import export_model\n",
        "bloodcell/data/typed.py": "import typing\nif typing.TYPE_CHECKING:\n    from bloodcell.app import sinks\n",
        "bloodcell/engine/__init__.py": "",
        "bloodcell/engine/train.py": "",
        "bloodcell/export/__init__.py": "",
        "bloodcell/export/exporter.py": "",
        "bloodcell/app/__init__.py": "",
        "bloodcell/app/sinks.py": "",
        "bloodcell/runtime/__init__.py": "",
        "bloodcell/runtime/images.py": "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n",
        "bloodcell/runtime/predict.py": "from bloodcell.runtime.scaling import x\n",
        "bloodcell/runtime/scaling.py": "class A:\n    import torchvision\n",
        "bloodcell/runtime/loader.py": "def load():\n    import torch\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert layering_violations(tmp_path) == [
        "bloodcell.data.direct (data) imports bloodcell.engine.train (engine)",
        "bloodcell.data.lazy (data) imports bloodcell.export.exporter (export)",
        "bloodcell.data.relative (data) imports bloodcell.engine (engine)",
        "bloodcell.data.relative (data) imports bloodcell.engine.train (engine)",
        "bloodcell.data.typed (data) imports bloodcell.app (app)",
        "bloodcell.data.typed (data) imports bloodcell.app.sinks (app)",
    ]
    chain = ["bloodcell.runtime.predict", "bloodcell.runtime.scaling"]
    assert torch_on_import(tmp_path, "bloodcell.runtime.predict") == {"torchvision": chain}
    assert torch_on_import(tmp_path, "bloodcell.runtime.loader") == {}  # only inside a function
