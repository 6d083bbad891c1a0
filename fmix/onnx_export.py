"""Writing a torch module as an ONNX file: the masker (``fmix export``) and the FR embedder (``fmix export-fr``).

The dynamo exporter records, on every node, the Python stack that made it: absolute paths of the
checkout that exported (``pkg.torch.onnx.stack_trace``) and module names. A masker is handed to data
owners and a release names it, so those are dropped: the file says nothing of the exporter's machine,
and the same code and weights give the same bytes from any checkout.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fmix.io import atomic_write


def export_module(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict,
    opset: int,
    metadata: dict[str, str],
    what: str,
    opset_hint: str = "",
) -> bytes:
    """Export ``module`` with the dynamo exporter, without its source traces, with ``metadata``; checked, written atomically.

    Args:
        module: the module (eval mode).
        example: example inputs.
        path: destination ``.onnx`` file.
        input_names: names of the graph's inputs.
        output_names: names of the graph's outputs.
        dynamic_shapes: ``torch.onnx.export``'s dynamic shapes.
        opset: the ONNX opset to write.
        metadata: key -> string, stored as the model's ``metadata_props``.
        what: the file's name in the error (``the masker``).
        opset_hint: what the error then advises (after a ``;``), if anything.

    Returns:
        The bytes written.

    Raises:
        ValueError: the exporter fell back to another opset than ``opset``.
    """
    import onnx

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    model = program.model_proto
    exported = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if exported != [opset]:  # the exporter falls back to its own opset instead of failing
        raise ValueError(
            f"{what} could not be exported at opset {opset} (the exporter produced opset {exported})"
            + (f"; {opset_hint}" if opset_hint else "")
        )
    drop_source_traces(model)
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    with atomic_write(path, "wb") as out:
        out.write(data)
    return data


def drop_source_traces(model) -> None:
    """Remove the exporter's per-node metadata (stack traces with absolute paths, module names) from ``model``,
    its functions and its sub-graphs, in place."""
    graphs = [model.graph] + [function for function in model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
