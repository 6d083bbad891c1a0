"""An exported masker run by ONNX Runtime, checked against its metadata before any face goes through it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from fmix.device import onnx_providers
from fmix.masker.build import masker_from_metadata
from fmix.masker.metadata import policy_k_values, validate_masker_metadata
from fmix.masker.protection import MixingConfig, Protection


class OnnxMasker:
    """An exported masker on ONNX Runtime (CUDA when available, else CPU), with its metadata.

    The metadata is validated (:func:`~fmix.masker.metadata.validate_masker_metadata`: schema,
    finite numbers, the binding of the release settings) and the graph is run on a probe batch
    against the masking the metadata describes; either failing refuses the masker.

    Calls may come from several threads at once (ONNX Runtime sessions are thread-safe): ``fmix
    mask`` runs one shard per thread, a shard per call. On the CPU what a call computes does not
    depend on ``threads`` (ONNX Runtime's kernels split their work, never a sum).

    Args:
        path: the ``masker.onnx`` file.
        providers: ONNX Runtime providers (default: CUDA first if present, then CPU).
        threads: ONNX Runtime's intra-op threads per call (None: its default, one per physical core).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"masker not found: {path} (make one with `fmix export`)")
        if providers is None:
            providers = onnx_providers("auto")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"Expected threads >= 1, got {threads}")
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} is not a valid ONNX masker: {err}") from err
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.settings = validate_masker_metadata(self.metadata, str(path))
        self.input_size, self.upsample = self.settings["input_size"], self.settings["upsample"]
        self.protection = Protection(self, self.settings["mixing"], tuple(self.settings["k_values"]))
        shapes = {item.name: item.shape for item in self.session.get_inputs()}
        if shapes.get("images", [None])[1:] != [3, self.input_size, self.input_size] or "policy_noise" not in shapes:
            raise ValueError(
                f"{path} does not take faces of its metadata's input_size={self.input_size}: its inputs are {shapes}"
            )
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self._verify_graph(path)
        self.path, self._options, self._providers = path, options, providers
        self.per_face, self.transform_session, self.policy_session = False, None, None

    @property
    def mixing(self) -> MixingConfig:
        """How its samples are mixed: its protection's (the metadata's ``mixing``, or a release's own noise)."""
        return self.protection.mixing

    def _verify_graph(self, path: Path) -> None:
        """Refuse a graph that does not compute the masking its metadata describes.

        A probe batch goes through the graph and through the fused transform rebuilt from the
        metadata (channels, statistics, upsampling); a pass-through, re-weighted or zeroed graph
        gives other numbers. The k output must be one of the metadata's k values (its fixed k for
        a fixed policy).
        """
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(4, 3, self.input_size, self.input_size, generator=generator) * 255
        noise = torch.rand(4, generator=generator)
        try:
            masked, k = self(probe, noise)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} does not run as an fmix masker on a probe batch: {err}") from err
        with torch.no_grad():
            expected = masker_from_metadata(self.metadata).masked(probe.double())
        if tuple(masked.shape) != tuple(expected.shape):
            raise ValueError(
                f"{path}: its graph outputs {tuple(masked.shape)} where its metadata describes {tuple(expected.shape)}: refusing an altered masker"
            )
        error = ((masked.double() - expected).norm() / expected.norm()).item()
        if not error < 1e-4:
            raise ValueError(
                f"{path}: its graph does not compute the masking its metadata describes (relative error {error:.2g} on a probe batch): refusing an altered masker"
            )
        allowed = policy_k_values(self.settings)
        if not set(k.tolist()) <= set(allowed):
            raise ValueError(
                f"{path}: its graph draws k {sorted(set(k.tolist()))} outside its policy's {allowed}: refusing an altered masker"
            )

    def split_graph(self) -> None:
        """Set :attr:`per_face` and, for a strategy network, :attr:`transform_session` and :attr:`policy_session`.

        :meth:`run_into` computes a batch a few faces at a time into the caller's arrays, and a
        one-use release reads the k of the faces that start a group only (about one face in
        mean k; a strategy network's k costs far more than the masking): :attr:`transform_session`
        masks (``images -> masked``) and :attr:`policy_session` draws k from masked faces
        (``masked, policy_noise -> k``; ``images`` too, of which it reads the batch size only). Each is kept only where it gives, on the probe batch face
        by face, the numbers of the whole graph on the whole batch (the CPU's kernels never
        split a sum across faces, threads or batch sizes); callers run the whole graph on the
        whole batch otherwise (off the CPU, for one). Until this is called, they run it so.

        Raises:
            ValueError: the masker's file changed since it was loaded (its sha256 is not :attr:`sha256`).
        """
        self.per_face, self.transform_session, self.policy_session = False, None, None
        if self.session.get_providers() != ["CPUExecutionProvider"]:
            return
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ValueError(f"{self.path} changed since it was loaded: refusing to split another graph")
        generator = torch.Generator().manual_seed(1)
        size = self.input_size
        probe = torch.randint(0, 256, (4, size, size, 3), generator=generator, dtype=torch.uint8).numpy()
        noise = torch.rand(4, generator=generator).numpy()
        masked, k = self(torch.from_numpy(probe).permute(0, 3, 1, 2).float().contiguous(), torch.from_numpy(noise))
        masked, k = masked.numpy(), k.numpy()
        face_masked, face_k = np.empty_like(masked), np.empty_like(k)
        self.run_into(probe, noise, face_masked, face_k, chunk=3)  # three faces, then one
        self.per_face = np.array_equal(face_masked, masked) and np.array_equal(face_k, k)
        if not self.per_face or self.settings["policy"] != "strategy":
            return
        import onnxruntime as ort

        try:
            transform = subgraph(data, ["images"], ["masked"])
            policy = subgraph(data, ["images", "masked", "policy_noise"], ["k"])
            options, providers = self._options, self._providers
            self.transform_session = ort.InferenceSession(transform, options, providers=providers)
            self.policy_session = ort.InferenceSession(policy, options, providers=providers)
        except Exception:  # a graph subgraph() cannot cut, or onnxruntime's own errors: the whole graph runs then
            self.transform_session = self.policy_session = None
            return
        self.run_into(probe, None, face_masked, None, chunk=3)
        alone = [int(self.policy_k(probe[i : i + 1], masked[i : i + 1], noise[i : i + 1])[0]) for i in range(4)]
        if not (np.array_equal(face_masked, masked) and alone == k.tolist()):
            self.transform_session = self.policy_session = None

    def run_into(
        self,
        faces: np.ndarray,
        policy_noise: np.ndarray | None,
        masked: np.ndarray,
        k: np.ndarray | None,
        chunk: int = 16,
    ) -> None:
        """Mask ``faces`` ``chunk`` at a time into ``masked`` (and draw their ``k``), in place: no copy of the batch.

        Args:
            faces: aligned faces, uint8 RGB (converted to float chunk by chunk).
            policy_noise: the policy noise of every face (None with ``k`` None).
            masked: where the masked faces go.
            k: where their k go, or None to mask only (:attr:`transform_session`, which must exist).
            chunk: faces per call.

        Shape:
            - faces: :math:`(B, S, S, 3)`; policy_noise, k: :math:`(B,)` float32 and int64.
            - masked: :math:`(B, K, h, w)` float32, C-contiguous.
        """
        session = self.session if k is not None else self.transform_session
        if session is None:
            raise ValueError("this masker has no masking-only session: draw k with the faces")
        for start in range(0, len(faces), chunk):
            stop = min(start + chunk, len(faces))
            inputs = {"images": np.ascontiguousarray(faces[start:stop].transpose(0, 3, 1, 2), dtype=np.float32)}
            outputs = {"masked": masked[start:stop]}
            if k is not None:
                inputs["policy_noise"] = np.ascontiguousarray(policy_noise[start:stop], dtype=np.float32)
                outputs["k"] = k[start:stop]
            binding = session.io_binding()
            for name, array in inputs.items():
                binding.bind_cpu_input(name, array)
            for name, array in outputs.items():  # ONNX Runtime writes straight into them
                binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            session.run_with_iobinding(binding)

    def policy_k(self, faces: np.ndarray, masked: np.ndarray, policy_noise: np.ndarray) -> np.ndarray:
        """The k the policy draws for faces already masked (:attr:`policy_session`, which must exist).

        Args:
            faces: the faces, uint8 RGB (the graph reads their batch size).
            masked: their masking.
            policy_noise: their policy noise.

        Shape:
            - faces: :math:`(B, S, S, 3)`; masked: :math:`(B, K, h, w)` float32; policy_noise: :math:`(B,)`.
            - Output: :math:`(B,)` int64.
        """
        if self.policy_session is None:
            raise ValueError("this masker has no policy-only session: draw k with the faces")
        images = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)
        (k,) = self.policy_session.run(None, {"images": images, "masked": masked, "policy_noise": policy_noise})
        return k

    def __call__(self, images: torch.Tensor, policy_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            masked, k = self.session.run(None, {"images": images.numpy(), "policy_noise": policy_noise.numpy()})
        except InvalidArgument as err:  # inputs the model's graph does not accept
            raise ValueError(f"the masker refuses faces of shape {tuple(images.shape)}: {err}") from err
        return torch.from_numpy(masked), torch.from_numpy(k)

    @property
    def draws_k(self) -> list[int]:
        """The k this masker's policy can draw (its fixed k, or every k of its strategy network)."""
        return policy_k_values(self.settings)


# ---------------------------------------------------------------------- subgraphs, on the protobuf wire
# Field numbers of onnx.proto (ModelProto.graph; GraphProto node, initializer, input, output,
# value_info, sparse_initializer; NodeProto input, output, attribute; TensorProto and
# ValueInfoProto name; AttributeProto g, graphs). Cutting the bytes spares ``import onnx``, half
# a second of ``fmix mask`` (its ml_dtypes); tests/release/test_release_reproducible.py holds the
# result to onnx.utils.Extractor's.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO, _GRAPH_SPARSE = 1, 5, 11, 12, 13, 15
_NODE_INPUT, _NODE_OUTPUT, _NODE_ATTRIBUTE, _TENSOR_NAME, _VALUE_INFO_NAME = 1, 2, 5, 8, 1
_ATTRIBUTE_GRAPHS = (6, 11)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated protobuf message")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _fields(data: memoryview) -> list[tuple[int, memoryview | None, memoryview]]:
    """The fields of a protobuf message: (number, payload of a length-delimited field or None, its whole encoding), no copy."""
    fields, position = [], 0
    while position < len(data):
        start = position
        key, position = _varint(data, position)
        number, wire, payload = key >> 3, key & 7, None
        if wire == 0:
            _, position = _varint(data, position)
        elif wire == 1:
            position += 8
        elif wire == 2:
            length, position = _varint(data, position)
            payload, position = data[position : position + length], position + length
        elif wire == 5:
            position += 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not one of an ONNX model")
        fields.append((number, payload, data[start:position]))
    if position != len(data):
        raise ValueError("truncated protobuf message")
    return fields


def _strings(fields: list[tuple[int, memoryview | None, memoryview]], number: int) -> list[str]:
    return [bytes(payload).decode() for field, payload, _ in fields if field == number]


def subgraph(model: bytes, inputs: list[str], outputs: list[str]) -> bytes:
    """The ONNX model that computes ``outputs`` from ``inputs`` with the nodes of ``model`` they need.

    Like ``onnx.utils.Extractor(model).extract_model(inputs, outputs)`` (the same nodes, in the
    same order, the initializers they read), without importing ``onnx``: the model's protobuf is
    cut field by field. The metadata and every other field of the model are kept.

    Args:
        model: the serialised ONNX model (nodes topologically sorted, as ONNX requires).
        inputs: names of the subgraph's inputs (graph inputs or values inside the graph).
        outputs: names of its outputs.

    Returns:
        The serialised subgraph model.

    Raises:
        ValueError: not a model this can cut (a needed value no node, input or initializer gives;
            a node with a subgraph attribute; sparse initializers; no type for an input or output).
    """
    top = _fields(memoryview(model))
    graphs = [payload for number, payload, _ in top if number == _MODEL_GRAPH]
    if len(graphs) != 1:
        raise ValueError("not an ONNX model with one graph")
    graph = _fields(graphs[0])
    if any(number == _GRAPH_SPARSE for number, _, _ in graph):
        raise ValueError("sparse initializers are not cut")
    nodes = [(index, _fields(payload)) for index, (number, payload, _) in enumerate(graph) if number == _GRAPH_NODE]
    needed, kept = set(outputs), set()
    for index, node in reversed(nodes):
        if set(_strings(node, _NODE_OUTPUT)) & needed:
            kept.add(index)
            needed |= {name for name in _strings(node, _NODE_INPUT) if name and name not in inputs}
            for number, payload, _ in node:
                if number == _NODE_ATTRIBUTE and any(field in _ATTRIBUTE_GRAPHS for field, _, _ in _fields(payload)):
                    raise ValueError("a node with a subgraph attribute is not cut")
    initializers = {
        index: _strings(_fields(payload), _TENSOR_NAME)[0]
        for index, (number, payload, _) in enumerate(graph)
        if number == _GRAPH_INITIALIZER
    }
    typed = {}  # name -> ValueInfoProto encoding (graph inputs, outputs and value infos)
    for number, payload, _ in graph:
        if number in (_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO):
            typed.setdefault(_strings(_fields(payload), _VALUE_INFO_NAME)[0], payload)
    given = set(inputs) | set(initializers.values())
    produced = {name for index, node in nodes if index in kept for name in _strings(node, _NODE_OUTPUT)}
    missing = sorted((needed - given - produced) | {name for name in inputs + outputs if name not in typed})
    if missing:
        raise ValueError(f"cannot cut the model: no value or no type for {missing}")
    parts = []
    for index, (number, payload, encoded) in enumerate(graph):
        if number == _GRAPH_NODE and index not in kept:
            continue
        if number == _GRAPH_INITIALIZER and initializers[index] not in needed:
            continue
        if number in (_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO):
            continue
        parts.append(encoded)
    for number, names in ((_GRAPH_INPUT, inputs), (_GRAPH_OUTPUT, outputs)):
        for name in names:
            info = typed[name]
            parts.append(_encode_varint(number << 3 | 2) + _encode_varint(len(info)) + info)
    cut = b"".join(parts)
    rebuilt = [
        _encode_varint(_MODEL_GRAPH << 3 | 2) + _encode_varint(len(cut)) + cut if number == _MODEL_GRAPH else encoded
        for number, _, encoded in top
    ]
    return b"".join(rebuilt)
