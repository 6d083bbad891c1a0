"""The code each stage runs: the fmix modules its command imports, as files (the stage's code dependencies).

A stage's command ``fmix <command> [<sub>] ...`` runs one Typer command function (in
:mod:`fmix.cli.app` or a sub-app it adds). Its code is every module of the package that the
console script (``fmix.cli``) imports on the way, the modules that function imports, and,
transitively, every module those import, found with ``ast`` as ``tests/test_layers.py`` finds
them:

* ``import``/``from ... import`` anywhere in a file, inside functions too (a module imported
  by a module that runs is assumed to run whole), and a string naming a module of the package
  (``importlib.import_module("fmix.x")``);
* importing ``fmix.a.b`` runs ``fmix/__init__.py`` and ``fmix/a/__init__.py`` as well;
* a registry's ``"module:Class"`` paths (:data:`LOADERS`, as ``DYNAMIC_LOADERS`` in the layer
  test) count as imports of its loader, where a running module imports the loader itself
  (``from fmix.methods import build_method``: the command builds methods); being the package
  above the registry does not count;
* in a CLI module (one that registers Typer commands) a function counts only when it runs: the
  chosen command, the callbacks on its path, and what running code names (a helper such as
  ``_load``, a command calling another); the other commands and their helpers do not, nor do
  ``if TYPE_CHECKING:`` blocks anywhere;
* ``fmix launch ... -- <command> ...`` starts ``python -m fmix <command>`` (or torchrun ``-m
  fmix``): both commands count, and ``fmix/__main__.py``.

Shared modules (``fmix/cli/*``, ``fmix/params.py``, ``fmix/io.py`` ...) are in every stage's
list: editing them reruns everything, as it should. The lists are written into dvc.yaml and the
Snakemake rules, so an edited import changes what ``fmix pipeline generate`` writes.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

PACKAGE = "fmix"
CONSOLE_SCRIPT = "fmix.cli"  # pyproject.toml: fmix = "fmix.cli:app"
ROOT_APP = ("fmix.cli.app", "app")  # the module and variable of the root Typer app
MODULE_ENTRY = "fmix.__main__"  # `python -m fmix`, what `fmix launch` starts
ROOT_FLAGS = ("-v", "--verbose")  # options of `fmix` itself, before the command (fmix/cli/app.py's callback)
LAUNCH_SEPARATOR = "--"  # `fmix launch [options] -- <command>`: the command after it runs too
# Loader module -> the registry whose "module:Class" paths it resolves (tests/test_layers.py DYNAMIC_LOADERS).
LOADERS: dict[str, str] = {"fmix.methods": "fmix.methods.registry"}


class DepsError(ValueError):
    """A stage's command names no command of the CLI."""


def _module_name(path: Path, folder: Path) -> str:
    parts = list(path.relative_to(folder.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def _decorator_call(decorator: ast.expr) -> tuple[str, str] | None:
    """``(app variable, "command" | "callback")`` of a ``@app.command(...)``/``@app.callback(...)`` decorator."""
    call = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(call, ast.Attribute) and call.attr in ("command", "callback") and isinstance(call.value, ast.Name):
        return call.value.id, call.attr
    return None


def _command_name(decorator: ast.expr, function: ast.FunctionDef) -> str:
    """The name Typer gives a command: the decorator's first argument or ``name=``, else the function's with - for _."""
    if isinstance(decorator, ast.Call):
        if decorator.args and isinstance(decorator.args[0], ast.Constant):
            return str(decorator.args[0].value)
        for keyword in decorator.keywords:
            if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                return str(keyword.value.value)
    return function.name.lower().replace("_", "-")


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class Package:
    """The package's modules under a repository root, parsed on demand."""

    def __init__(self, root: str | Path):
        self.folder = Path(root) / PACKAGE
        if not (self.folder / "__init__.py").is_file():
            raise DepsError(f"no {PACKAGE} package under {root}")
        self.files = {
            _module_name(path, self.folder): path
            for path in sorted(self.folder.rglob("*.py"))
            if "__pycache__" not in path.parts
        }
        self._trees: dict[str, ast.Module] = {}

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            self._trees[module] = ast.parse(self.files[module].read_text(encoding="utf-8"))
        return self._trees[module]

    def path(self, module: str) -> str:
        """The module's file relative to the repository root (``fmix/cli/app.py``)."""
        return self.files[module].relative_to(self.folder.parent).as_posix()

    # --------------------------------------------------------------------------- imports

    def _nodes(self, module: str, skip: set[int]) -> list[ast.AST]:
        """Every node of the module that can run: not in skipped functions, not under ``if TYPE_CHECKING:``."""
        found, stack = [], [self.tree(module)]
        while stack:
            node = stack.pop()
            if id(node) in skip:
                continue
            found.append(node)
            if _is_type_checking(node):
                stack.extend(node.orelse)
                continue
            stack.extend(ast.iter_child_nodes(node))
        return found

    def imports(self, module: str, skip: set[int]) -> tuple[set[str], set[str]]:
        """``(modules imported by import statements, modules named by strings)`` of one module."""
        nodes = self._nodes(module, skip)
        docstrings = {
            id(node.value) for node in nodes if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        is_package = self.files[module].name == "__init__.py"
        imported, named = set(), set()
        for node in nodes:
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name in self.files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                if base in self.files:
                    imported.add(base)
                imported |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in self.files}
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                target = node.value.partition(":")[0]
                if target in self.files and target.split(".")[0] == PACKAGE:
                    named.add(target)
        return imported, named

    # -------------------------------------------------------------------------- commands

    def _functions(self, module: str) -> dict[str, ast.FunctionDef]:
        return {
            node.name: node
            for node in self.tree(module).body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }

    def typer_functions(self, module: str) -> list[ast.FunctionDef]:
        """The module's functions registered as Typer commands or callbacks (they run only when chosen)."""
        return [
            function
            for function in self._functions(module).values()
            if any(_decorator_call(d) for d in function.decorator_list)
        ]

    def idle_functions(self, module: str, chosen: set[str]) -> set[int]:
        """Functions of a CLI module (one that registers Typer commands) that do not run: ids of their nodes.

        A CLI module's function runs when it is a chosen command or callback, or when running code
        names it (a helper such as ``_load``, a command calling another); everything at module level
        runs, decorators and parameter defaults included. In other modules every function counts.
        """
        if not self.typer_functions(module):
            return set()
        functions = self._functions(module)
        running = set(chosen)

        def names(nodes) -> set[str]:
            return {
                node.id
                for root in nodes
                for node in ast.walk(root)
                if isinstance(node, ast.Name) and node.id in functions
            }

        # Evaluated at import: module-level statements, and each function's decorators and defaults.
        at_import = [
            node for node in self.tree(module).body if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        at_import += [part for f in functions.values() for part in (*f.decorator_list, f.args)]
        pending = names(at_import) | running
        while pending:
            name = pending.pop()
            running.add(name)
            pending |= names([functions[name]]) - running
        return {id(f) for name, f in functions.items() if name not in running}

    def _sub_apps(self, module: str, app: str) -> dict[str, tuple[str, str]]:
        """``name -> (module, variable)`` of the Typer apps added to ``app`` with ``app.add_typer(sub, name=...)``."""
        tree = self.tree(module)
        local = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        imported = {
            alias.asname or alias.name: (node.module, alias.name)
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module in self.files
            for alias in node.names
        }
        subs = {}
        for node in ast.walk(tree):
            call = node.value if isinstance(node, ast.Expr) else None
            if not (
                isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "add_typer"
            ):
                continue
            if not (
                isinstance(call.func.value, ast.Name)
                and call.func.value.id == app
                and call.args
                and isinstance(call.args[0], ast.Name)
            ):
                continue
            name = next(
                (k.value.value for k in call.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)), None
            )
            variable = call.args[0].id
            if name and variable in imported:
                subs[name] = imported[variable]
            elif name and variable in local:
                subs[name] = (module, variable)
        return subs

    def command(
        self, words: list[str], module: str = ROOT_APP[0], app: str = ROOT_APP[1]
    ) -> list[tuple[str, ast.FunctionDef]]:
        """The functions that run for ``fmix <words...>``: the callbacks on the way and the command itself.

        Args:
            words: the command line after ``fmix`` (arguments after the command are ignored).

        Raises:
            DepsError: no such command.
        """
        functions = self.typer_functions(module)
        chosen = [
            (module, f) for f in functions if any(_decorator_call(d) == (app, "callback") for d in f.decorator_list)
        ]
        if not words or words[0].startswith("-"):
            raise DepsError(f"`fmix` command line {' '.join(words)!r} names no command")
        for function in functions:
            for decorator in function.decorator_list:
                if _decorator_call(decorator) == (app, "command") and _command_name(decorator, function) == words[0]:
                    return [*chosen, (module, function)]
        subs = self._sub_apps(module, app)
        if words[0] in subs:
            return chosen + self.command(words[1:], *subs[words[0]])
        raise DepsError(f"no fmix command {words[0]!r} in {module}")


def command_words(cmd: str) -> list[list[str]]:
    """The fmix command lines a stage's command runs: ``fmix launch ... -- train ...`` gives two."""
    tokens = shlex.split(cmd)
    if not tokens or tokens[0] != PACKAGE:
        raise DepsError(f"not an fmix command: {cmd!r}")
    tokens = tokens[1:]
    while tokens and tokens[0] in ROOT_FLAGS:
        tokens = tokens[1:]
    if LAUNCH_SEPARATOR in tokens:
        at = tokens.index(LAUNCH_SEPARATOR)
        return [tokens[:at], tokens[at + 1 :]]
    return [tokens]


def command_label(cmd: str) -> str:
    """The commands a stage runs, without arguments: ``fmix report``, ``fmix launch -- train``."""
    lines = []
    for words in command_words(cmd):
        lead = []
        for word in words:
            if not word[:1].isalpha():
                break
            lead.append(word)
        lines.append(" ".join(lead))
    return f"{PACKAGE} " + " -- ".join(lines)


def code_files(root: str | Path, cmd: str, package: Package | None = None) -> list[str]:
    """The package files a stage's command runs, relative to ``root`` and sorted.

    Args:
        root: the repository root (holds ``fmix/``).
        cmd: the stage's command as the stage table writes it (``fmix report {results} ...``).
        package: the parsed package (shared between stages); read from ``root`` when None.

    Returns:
        Paths such as ``fmix/cli/app.py``, ``fmix/pipeline/report.py``.
    """
    package = package or Package(root)
    return sorted(package.path(module) for module in command_modules(package, cmd))


def command_modules(package: Package, cmd: str) -> dict[str, str]:
    """The modules a stage's command runs, each with the module that brought it in (``""``: an entry point).

    Args:
        package: the parsed package.
        cmd: the stage's command.

    Returns:
        Module -> the module whose import (or registry path, or being its package) added it first.
    """
    lines = command_words(cmd)
    chosen: dict[str, set[str]] = {}
    for words in lines:
        for module, function in package.command(words):
            chosen.setdefault(module, set()).add(function.name)
    skips: dict[str, set[int]] = {}

    def skipped(module: str) -> set[int]:
        if module not in skips:
            skips[module] = package.idle_functions(module, chosen.get(module, set()))
        return skips[module]

    start = [CONSOLE_SCRIPT, ROOT_APP[0]] + ([MODULE_ENTRY] if len(lines) > 1 else [])
    executed: dict[str, str] = {}
    explicit: set[str] = set()
    pending_modules = [(module, "") for module in start]
    registries = {registry: loader for loader, registry in LOADERS.items()}
    while pending_modules:
        while pending_modules:
            module, via = pending_modules.pop()
            if module in executed or module not in package.files:
                continue
            executed[module] = via
            imported, named = package.imports(module, skipped(module))
            explicit |= imported
            pending_modules += [(parent, module) for parent in _parents(module)] + [
                (m, module) for m in sorted(imported)
            ]
            if module not in registries:  # a registry's paths are its loader's imports
                pending_modules += [(m, module) for m in sorted(named)]
        for loader, registry in LOADERS.items():
            if loader in explicit and registry in package.files:
                pending_modules += [
                    (m, loader) for m in sorted(package.imports(registry, set())[1]) if m not in executed
                ]
    return executed
