"""The package's layers: a module imports only from its own layer or lower ones, anywhere in the file.

Order (low to high): the base modules (params, io, checks, the method registry), then data and
freq, masker and models, evaluate and metrics, train and methods, attacks, and cli / pipeline.
Imports inside functions count too, so a cycle cannot hide behind a late import; so do lazy ones:
``importlib.import_module`` / ``__import__`` of a constant name, and a string that names a module
of the package (``"fmix.methods.none:NoProtection"``, a registry path). A registry's paths count
as imports of the loader that resolves them (:data:`DYNAMIC_LOADERS`), and an import of a computed
name anywhere else is refused: the test could not follow it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fmix_testing import REPO

LAYERS: dict[str, int] = {
    "fmix": 0,
    "fmix.checks": 0,
    "fmix.io": 0,
    "fmix._optional": 0,
    "fmix.device": 0,
    "fmix.progress": 0,
    "fmix.params": 0,
    "fmix.methods.registry": 0,
    "fmix.data": 1,
    "fmix.freq": 1,
    "fmix.onnx_export": 1,
    "fmix.masker": 2,
    "fmix.models": 2,
    "fmix.release": 3,
    "fmix.evaluate": 3,
    "fmix.metrics": 3,
    "fmix.train": 4,
    "fmix.methods": 4,
    "fmix.attacks": 5,
    "fmix.cli": 6,
    "fmix.pipeline": 6,
    "fmix.docs_cli": 6,
    "fmix.__main__": 6,
}


def layer_of(module: str, layers: dict[str, int]) -> int:
    """The layer of the most specific entry of ``layers`` that is ``module`` or a package above it.

    Raises:
        KeyError: no entry covers the module (every module must be placed).
    """
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in layers and (end == len(parts) or name != parts[0]):
            return layers[name]
    raise KeyError(f"module {module} is in no layer; add it to LAYERS")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Modules that import a computed name, and the registry module whose paths they resolve (None:
# they load third-party modules only, named by their callers).
DYNAMIC_LOADERS: dict[str, str | None] = {"fmix.methods": "fmix.methods.registry", "fmix._optional": None}
DYNAMIC_IMPORTS = ("import_module", "__import__")


def _called_name(node: ast.Call) -> str:
    return (
        node.func.attr
        if isinstance(node.func, ast.Attribute)
        else node.func.id
        if isinstance(node.func, ast.Name)
        else ""
    )


def _module_path(value: object, package: str) -> str | None:
    """The module a string names (``pkg.a.b`` or ``pkg.a.b:attr``) when it is a known module of the package."""
    if not isinstance(value, str):
        return None
    module = value.partition(":")[0]
    return module if module.split(".")[0] == package and module in _KNOWN else None


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import of ``package`` in the file, at any depth (functions included),
    lazy ones too: a dynamic import of a constant name, and a string naming a module (a registry path)."""
    found = []
    docstrings = {
        id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == package]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] == package
        ):
            found.append((node.lineno, node.module))
            # `from fmix import io`: the names may be modules themselves
            found += [
                (node.lineno, f"{node.module}.{alias.name}")
                for alias in node.names
                if f"{node.module}.{alias.name}" in _KNOWN
            ]
        elif isinstance(node, ast.Constant) and id(node) not in docstrings and _module_path(node.value, package):
            found.append((node.lineno, _module_path(node.value, package)))
    return found


def computed_imports(tree: ast.AST) -> list[int]:
    """Lines of dynamic imports whose name is not a constant (the test cannot tell what they load)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and _called_name(node) in DYNAMIC_IMPORTS
        and not (node.args and isinstance(node.args[0], ast.Constant))
    ]


_KNOWN: set[str] = set()


def layer_violations(root: Path, layers: dict[str, int], loaders: dict[str, str | None] | None = None) -> list[str]:
    """Every import of a higher layer by a lower one under the package folder ``root``.

    Args:
        root: the package folder (e.g. ``fmix/``).
        layers: module or package name -> layer (0 lowest).
        loaders: module -> the registry whose paths it resolves (:data:`DYNAMIC_LOADERS` for fmix;
            default: none); only these may import a computed name.

    Returns:
        One line per violation: ``file:line: module (layer a) imports other (layer b)``, or
        ``file:line: module imports a computed name ...``.
    """
    package, loaders = root.name, loaders or {}
    files = sorted(root.rglob("*.py"))
    _KNOWN.clear()
    _KNOWN.update(module_name(path, root) for path in files)
    registries = {registry: loader for loader, registry in loaders.items() if registry is not None}
    problems = []
    for path in files:
        module = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # A registry's paths are imported by its loader: judged at the loader's layer.
        importer = registries.get(module, module)
        own = layer_of(importer, layers)
        for line, imported in imported_modules(tree, package):
            if imported == package and own > 0:
                continue  # the root package (its __version__) is the lowest layer
            other = layer_of(imported, layers)
            if other > own:
                via = f" (through {module}, resolved by {importer})" if importer != module else ""
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {importer} (layer {own}) imports {imported} (layer {other}){via}"
                )
        if module not in loaders:
            problems += [
                f"{path.relative_to(root.parent)}:{line}: {module} imports a computed name; import a constant one or declare the loader"
                for line in computed_imports(tree)
            ]
    return problems


def test_fmix_respects_its_layers():
    """Also places every module: an unplaced one raises KeyError."""
    assert layer_violations(REPO / "fmix", LAYERS, DYNAMIC_LOADERS) == []


def _fake_package(tmp_path: Path, data_source: str) -> Path:
    root = tmp_path / "fake"
    for folder in ("data", "train"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "train" / "loop.py").write_text("from fake.data.faces import load\n")
    (root / "data" / "faces.py").write_text(data_source)
    return root


FAKE_LAYERS = {"fake": 0, "fake.data": 1, "fake.train": 4}


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path):
    root = _fake_package(
        tmp_path, "def load():\n    from fake.train.loop import step  # hidden in a function\n    return step\n"
    )
    assert layer_violations(root, FAKE_LAYERS) == [
        "fake/data/faces.py:2: fake.data.faces (layer 1) imports fake.train.loop (layer 4)"
    ]


def test_a_module_import_of_a_higher_layer_is_caught(tmp_path):
    root = _fake_package(tmp_path, "import fake.train.loop\nfrom fake import train\n")
    assert layer_violations(root, FAKE_LAYERS) == [
        "fake/data/faces.py:1: fake.data.faces (layer 1) imports fake.train.loop (layer 4)",
        "fake/data/faces.py:2: fake.data.faces (layer 1) imports fake.train (layer 4)",
    ]


def test_upward_imports_only_are_allowed(tmp_path):
    root = _fake_package(tmp_path, "import numpy\n")
    assert layer_violations(root, FAKE_LAYERS) == []


def test_an_unplaced_module_is_an_error(tmp_path):
    root = _fake_package(tmp_path, "")
    (root / "extra.py").write_text("")
    with pytest.raises(KeyError, match="module fake.extra is in no layer; add it to LAYERS"):
        layer_violations(root, FAKE_LAYERS)


def test_a_lazy_import_through_importlib_is_caught(tmp_path):
    root = _fake_package(
        tmp_path, "import importlib\n\ndef load():\n    return importlib.import_module('fake.train.loop')\n"
    )
    assert layer_violations(root, FAKE_LAYERS) == [
        "fake/data/faces.py:4: fake.data.faces (layer 1) imports fake.train.loop (layer 4)"
    ]


def test_a_registry_path_counts_as_an_import_of_its_loader(tmp_path):
    root = _fake_package(tmp_path, "")
    (root / "registry.py").write_text('"""Paths only."""\nREGISTRY = {"loop": "fake.train.loop:step"}\n')
    (root / "train" / "load.py").write_text(
        "import importlib\n\ndef load(path):\n    return importlib.import_module(path)\n"
    )
    layers = {**FAKE_LAYERS, "fake.registry": 0}
    assert layer_violations(root, layers, {"fake.train.load": "fake.registry"}) == []  # resolved in layer 4: fine
    (root / "data" / "load.py").write_text(
        "import importlib\n\ndef load(path):\n    return importlib.import_module(path)\n"
    )
    assert layer_violations(root, layers, {"fake.data.load": "fake.registry"}) == [
        "fake/registry.py:2: fake.data.load (layer 1) imports fake.train.loop (layer 4) (through fake.registry, resolved by fake.data.load)",
        "fake/train/load.py:4: fake.train.load imports a computed name; import a constant one or declare the loader",
    ]


def test_a_module_path_in_a_lower_layer_is_caught_and_a_computed_import_refused(tmp_path):
    root = _fake_package(tmp_path, 'PLUGIN = "fake.train.loop"\n\ndef load(name):\n    return __import__(name)\n')
    assert layer_violations(root, FAKE_LAYERS) == [
        "fake/data/faces.py:1: fake.data.faces (layer 1) imports fake.train.loop (layer 4)",
        "fake/data/faces.py:4: fake.data.faces imports a computed name; import a constant one or declare the loader",
    ]
