"""The stage table (``workflow/stages.yaml``): the one description of the pipeline's stages.

Each stage names its command, inputs, outputs (plain, metric or plot), extra paths, the params
sections it reads, its threads, whether it wants a GPU and its Snakemake priority. ``sweep: true`` stages run once per
entry of params.yaml's ``sweep`` section. Paths are templates: ``${data.KEY}`` is a value of
params.yaml's ``data`` section, ``{method}`` the sweep entry, a trailing ``/`` marks a folder.
In commands, ``{NAME}`` is the stage's input, output or path NAME, ``{method}`` the entry and
``{params_file}`` the params file.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

NAME = re.compile(r"[a-z][a-z0-9_]*")
PLACEHOLDER = re.compile(r"\{(\w+)\}")
DATA_KEY = re.compile(r"\$\{data\.(\w+)\}")
THREADS = re.compile(r"([a-z_]+)\.([a-z_]+)")
SWEEP_PARAMS = "sweep.{method}"


class TableError(ValueError):
    """The stage table is malformed."""


@dataclasses.dataclass(frozen=True)
class Output:
    """One output path: a plain output, a metric (JSON, not cached) or a plot (options for ``dvc plots``)."""

    path: str
    kind: str = "out"  # out | metric | plot
    plot: dict[str, Any] | None = None

    @property
    def is_dir(self) -> bool:
        return self.path.endswith("/")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the table."""

    name: str
    cmd: str
    inputs: dict[str, str]
    outputs: dict[str, Output]
    paths: dict[str, str]
    params: tuple[str, ...]
    sweep: bool = False
    threads: str | None = None
    gpu: bool | str = False  # true (one GPU) or SECTION.KEY (that many, at least one)
    nodes: str | None = None  # SECTION.KEY: nodes of a multi-node job
    priority: int = 0  # Snakemake starts ready jobs of higher priority first (DVC runs stages one by one)


@dataclasses.dataclass(frozen=True)
class Table:
    """The stages in order and the default targets (what ``snakemake`` with no target builds)."""

    stages: tuple[Stage, ...]
    targets: tuple[str, ...]

    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]


def load_table(path: str | Path) -> Table:
    """Read and check a stage table.

    Args:
        path: the YAML file (``workflow/stages.yaml``).

    Returns:
        The table.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"stage table not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise TableError(f"{path} must hold a non-empty 'stages' mapping")
    stages = tuple(_stage(name, spec) for name, spec in data["stages"].items())
    names = {stage.name for stage in stages}
    targets = tuple(data.get("targets") or ())
    unknown = [name for name in targets if name not in names]
    if not targets or unknown:
        raise TableError(f"'targets' must list stages of the table, got {list(targets)}")
    return Table(stages, targets)


def _stage(name: str, spec: Any) -> Stage:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise TableError(f"stage name {name!r} must be lower-case letters, digits and _")
    if not isinstance(spec, dict):
        raise TableError(f"stage {name}: must be a mapping")
    known = {"cmd", "inputs", "outputs", "paths", "params", "sweep", "threads", "gpu", "nodes", "priority"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise TableError(f"stage {name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not isinstance(spec.get("cmd"), str) or not spec["cmd"].startswith("fmix "):
        raise TableError(f"stage {name}: 'cmd' must be an fmix command")
    outputs = {key: _output(name, key, value) for key, value in (spec.get("outputs") or {}).items()}
    stage = Stage(
        name=name,
        cmd=spec["cmd"],
        inputs=dict(spec.get("inputs") or {}),
        outputs=outputs,
        paths=dict(spec.get("paths") or {}),
        params=tuple(spec.get("params") or ()),
        sweep=bool(spec.get("sweep", False)),
        threads=spec.get("threads"),
        gpu=spec.get("gpu", False),
        nodes=spec.get("nodes"),
        priority=spec.get("priority", 0),
    )
    _check(stage)
    return stage


def _output(stage: str, key: str, value: Any) -> Output:
    if isinstance(value, str):
        return Output(value)
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        if value.get("metric"):
            return Output(value["path"], "metric")
        if "plot" in value:
            return Output(value["path"], "plot", dict(value["plot"] or {}))
        return Output(value["path"])
    raise TableError(
        f"stage {stage}: output {key} must be a path or a mapping with 'path' (and 'metric: true' or 'plot')"
    )


def _check(stage: Stage) -> None:
    names = [*stage.inputs, *stage.outputs, *stage.paths]
    if len(names) != len(set(names)) or not stage.outputs:
        raise TableError(f"stage {stage.name}: input, output and path names must differ, and there must be an output")
    clash = set(stage.paths) & {section.split(".")[0] for section in stage.params}  # both become Snakemake params
    if clash or {"method", "params_file", "code"} & set(names):
        raise TableError(f"stage {stage.name}: names {sorted(clash) or ['method, params_file, code']} are reserved")
    for key, path in [*stage.inputs.items(), *((k, o.path) for k, o in stage.outputs.items()), *stage.paths.items()]:
        if "{method}" in path and not stage.sweep and key not in stage.inputs:
            raise TableError(f"stage {stage.name}: {key} uses {{method}} but the stage is not a sweep stage")
    for placeholder in PLACEHOLDER.findall(stage.cmd):
        if placeholder not in names and placeholder not in ("method", "params_file"):
            raise TableError(f"stage {stage.name}: command uses {{{placeholder}}}, which is no input, output or path")
        if placeholder in stage.inputs and "{method}" in stage.inputs[placeholder] and not stage.sweep:
            raise TableError(
                f"stage {stage.name}: {{{placeholder}}} stands for every sweep entry; name a folder in 'paths' for the command"
            )
    if "{params_file}" not in stage.cmd:
        raise TableError(f"stage {stage.name}: the command must read --params {{params_file}}")
    for section in stage.params:
        if section != SWEEP_PARAMS and not NAME.fullmatch(section):
            raise TableError(f"stage {stage.name}: params entry {section!r} must be a section name or {SWEEP_PARAMS}")
    for key in ("threads", "nodes"):
        value = getattr(stage, key)
        if value is not None and not THREADS.fullmatch(str(value)):
            raise TableError(f"stage {stage.name}: {key} must be SECTION.KEY, got {value!r}")
    if isinstance(stage.priority, bool) or not isinstance(stage.priority, int) or stage.priority < 0:
        raise TableError(f"stage {stage.name}: priority must be an int >= 0, got {stage.priority!r}")
    if not isinstance(stage.gpu, bool) and not THREADS.fullmatch(str(stage.gpu)):
        raise TableError(f"stage {stage.name}: gpu must be true, false or SECTION.KEY, got {stage.gpu!r}")
