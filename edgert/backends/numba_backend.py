"""Run an artifact's integer ONNX graph with a small interpreter over the ops' numba kernels.

No TVM, no onnxruntime: ``onnx`` parses ``model.onnx`` (and ``onnx.reference`` runs the float
nodes an ``--allow-float`` build keeps, see below). Everything
that does not depend on the inputs is done once at load (:class:`Plan`): initializers become
read-only numpy arrays, attributes are converted, one handler is picked per node, nodes whose
inputs are all constant are evaluated (constant folding), and the point after which each
intermediate tensor is dead is recorded so that ``run`` frees it early.

Ops (the contract is ``docs/integer-onnx.md``; shapes follow ONNX/numpy broadcasting):
    edgert domain: every op of :mod:`edgert.ops.registry`, on its folder's numba kernel
        (``ops/<name>/numba.py``) with the keyword arguments its ``node_kwargs`` makes of the
        node's attributes at load (e.g. ``Requant`` int8/16/32 -> int8/16/32, ``Shiftmax``,
        ``ShiftGELU``, ``ILayerNorm``, ``IntMatMul``; ``LutMatMul``'s layout attributes are
        checked at load, :class:`~edgert.errors.ArtifactError`).
    default domain (:mod:`edgert.backends.numba_standard_ops`):
    integer arithmetic: ``MatMulInteger`` (int8/uint8 -> int32, numpy matmul shapes, rank-1
        operands included) on ``intmatmul.numba_kernel``; ``ConvInteger`` (N-d, NCHW..., pads,
        strides, dilations, group, auto_pad) as numpy im2col + ``intmatmul.numba_kernel``;
        ``Add`` (numpy broadcasting, wrapping like int32 hardware); ``MaxPool`` (integer, one
        output; pads, strides, dilations, auto_pad, ceil_mode; padding never wins the max).
        Zero points, when present, must be constant scalars (the contract has none).
    boundary: ``QuantizeLinear`` (float32 ``x / scale``, round half to even, saturate to the
        zero point's int8/uint8/int16/uint16; per tensor or per ``axis``), ``DequantizeLinear``
        (``float32(q) * scale``, per tensor or per ``axis``).
    shape ops, numpy exactly as ONNX (opset >= 13) defines them: ``Reshape`` (0, -1,
        ``allowzero``), ``Transpose``, ``Squeeze`` / ``Unsqueeze`` (axes as an input),
        ``Flatten``, ``Slice`` (axes/steps optional, negative indices and steps, ONNX clamping),
        ``Gather`` (negative indices), ``Concat``, ``Expand``, ``Identity``, ``Shape``
        (start/end), ``Constant``, ``Cast`` (numeric types), ``Pad`` (constant mode,
        non-negative pads: an integer ConvTranspose's zero insertion).
    masks and indices built in the graph: ``Equal``, ``Less``, ``LessOrEqual``, ``Greater``,
        ``GreaterOrEqual``, ``Not``, ``And``, ``Or``, ``Xor``, ``Max``, ``Min``, ``Where``,
        ``Range``, ``ConstantOfShape`` (numpy, broadcasting), ``GatherND`` (``batch_dims``,
        negative indices).
    float nodes (``--allow-float``): ``Div`` of floats is IEEE float division; a default-domain
        op without a kernel here whose outputs the graph declares floating point (graph
        outputs or ``value_info``, which the quantizer writes for every tensor) runs on
        ``onnx.reference`` (numpy), one node at a time. Correctly rounded IEEE ops (``Sqrt``,
        arithmetic) give what TVM gives bit for bit; transcendental ones (``Exp``, ``Sin``,
        ``Sigmoid``...) may differ from TVM's in the last bit, which the next ``QuantizeLinear``
        can turn into one unit.
Any other op (or an unsupported attribute value) raises :class:`UnsupportedOpError` at load,
listing every such node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgert.artifact import MODEL_MEMBER, Artifact
from edgert.backends.numba_nodes import Factory, Handler, Node, Unsupported
from edgert.backends.numba_standard_ops import FACTORIES, FLOAT_TYPES, float_fallback
from edgert.errors import ArtifactError, InputError, ModelError, UnsupportedOpError
from edgert.onnx_graph import node_label
from edgert.ops import DOMAIN
from edgert.ops._common.op import Op, UnsupportedAttribute

MIN_OPSET = 13


class NumbaBackend:
    """The ``model.onnx`` of an artifact, run node by node on numpy and the ops' numba kernels.

    Needs neither a compiled library nor a target this machine can run: only the graph.

    Args:
        artifact: a verified artifact.
        threads: numba worker threads (clamped to ``numba.config.NUMBA_NUM_THREADS``);
            default: numba's (all of them).
    """

    name = "numba"

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        import numba

        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        self.threads = None if threads is None else min(threads, numba.config.NUMBA_NUM_THREADS)
        self._set_num_threads = numba.set_num_threads
        source = str(artifact.path)
        try:
            model = onnx.load_model_from_string(artifact.members[MODEL_MEMBER])
        except Exception as e:
            raise ModelError(f"{source}: {MODEL_MEMBER} is not a valid ONNX model ({e})") from None
        self.plan = Plan(model, source=source)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the graph; inputs and outputs in graph order."""
        if self.threads is not None:
            # numba's thread count belongs to the calling thread: set it on every call.
            self._set_num_threads(self.threads)
        return self.plan.run(inputs)


@dataclass
class _Step:
    handler: Handler
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    label: str
    free: tuple[str, ...] = ()


class Plan:
    """An ONNX graph prepared for repeated runs (see the module docstring).

    Args:
        model: the integer graph (default-domain opset >= 13, ``edgert`` opset 1).
        source: what to call the model in error messages.

    Raises:
        UnsupportedOpError: nodes with ops (or attribute values) this interpreter lacks, all
            of them named at once.
        ModelError: an opset below 13, a graph that is not topologically sorted, or a node
            that fails while its constant inputs are folded.
    """

    def __init__(self, model: onnx.ModelProto, *, source: str = "model") -> None:
        opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        if opsets.get("", 0) < MIN_OPSET:
            raise ModelError(f"{source}: the numba backend needs default-domain opset >= "
                             f"{MIN_OPSET}, the model has {opsets.get('', 'none')}")
        graph = model.graph
        if len(graph.sparse_initializer):
            raise ModelError(f"{source}: sparse initializers are not supported")
        consts: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            try:
                consts[init.name] = _frozen(numpy_helper.to_array(init))
            except Exception as e:
                raise ModelError(f"{source}: initializer {init.name!r} cannot be read ({e})") from None
        self.input_names = [v.name for v in graph.input if v.name not in consts]
        self.output_names = [v.name for v in graph.output]
        declared = {v.name: v.type.tensor_type.elem_type
                    for v in [*graph.input, *graph.value_info, *graph.output]
                    if v.type.HasField("tensor_type")}
        defined = set(consts) | set(self.input_names)
        steps: list[_Step] = []
        unsupported: list[tuple[str, str]] = []
        for index, node in enumerate(graph.node):
            label = node_label(node, index)
            for name in node.input:
                if name and name not in defined:
                    raise ModelError(f"{source}: node {label} reads {name!r} before any node "
                                     "computes it (nodes must be in topological order)")
            defined.update(n for n in node.output if n)
            domain = "" if node.domain == "ai.onnx" else node.domain
            factory = factory_for(domain, node.op_type)
            op = node.op_type if not domain else f"{domain}.{node.op_type}"
            if factory is None and not domain and any(declared.get(o) in FLOAT_TYPES
                                                      for o in node.output if o):
                factory = float_fallback(opsets[""])
            if factory is None:
                unsupported.append((op, label))
                continue
            info = Node(node, label, [consts.get(n) if n else None for n in node.input])
            try:
                step = _Step(factory(info), tuple(node.input), tuple(node.output), label)
            except Unsupported as e:
                unsupported.append((f"{op} with {e}", label))
                continue
            except ModelError as e:
                raise ModelError(f"{source}: {e}") from None
            if all(not n or n in consts for n in node.input):
                _fold(step, consts, source)
            else:
                steps.append(step)
        if unsupported:
            raise UnsupportedOpError(unsupported, source=f"{source} (numba backend)")
        missing = [n for n in self.output_names if n not in defined]
        if missing:
            raise ModelError(f"{source}: graph output(s) {', '.join(missing)} are never computed")
        self.constants = consts
        self.steps = _with_frees(steps, set(self.output_names))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the graph on ``inputs`` (graph order) and return the outputs (graph order).

        Outputs are C-contiguous, writeable and never share memory with an input or a constant.
        """
        env: dict[str, Any] = dict(self.constants)
        env.update(zip(self.input_names, inputs))
        for step in self.steps:
            args = [env[n] if n else None for n in step.inputs]
            try:
                results = step.handler(*args)
            except Exception as e:
                if hasattr(e, "add_note"):                  # Python >= 3.11
                    e.add_note(f"in node {step.label} (numba backend)")
                raise
            for name, value in zip(step.outputs, results):
                if name:
                    env[name] = value
            for name in step.free:
                del env[name]
        outputs: list[np.ndarray] = []
        for name in self.output_names:
            outputs.append(_own(env[name], [*inputs, *outputs]))
        return outputs


def _fold(step: _Step, consts: dict[str, np.ndarray], source: str) -> None:
    """Evaluate a node whose inputs are all constants; its outputs become constants."""
    try:
        results = step.handler(*[consts[n] if n else None for n in step.inputs])
    except Exception as e:
        raise ModelError(f"{source}: node {step.label} fails on its constant inputs ({e})") from None
    for name, value in zip(step.outputs, results):
        if name:
            consts[name] = _frozen(np.array(value))


def _with_frees(steps: list[_Step], keep: set[str]) -> list[_Step]:
    """Record on each step the intermediates that no later step reads."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in (*step.inputs, *step.outputs):
            if name:
                last[name] = i
    produced = {n for s in steps for n in s.outputs if n}
    for i, step in enumerate(steps):
        step.free = tuple(sorted({n for n in (*step.inputs, *step.outputs)
                                  if n in produced and n not in keep and last[n] == i}))
    return steps


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _own(value: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """An output the caller may keep and modify: contiguous, writeable, sharing no memory with
    ``others`` (the inputs and the outputs before it) nor with a (read-only) constant."""
    value = np.asarray(value)
    if (not value.flags.writeable or not value.flags.c_contiguous
            or any(np.may_share_memory(value, x) for x in others)):
        return np.array(value, order="C")
    return value


# --- handler factories ---------------------------------------------------------------------------

def factory_for(domain: str, op_type: str) -> Factory | None:
    """The handler factory of an op (``domain`` "" for the default domain), or ``None``."""
    if domain == DOMAIN:
        from edgert.ops import registry

        op = registry.find(op_type)
        return None if op is None else _edgert_factory(op)
    return FACTORIES.get(op_type) if not domain else None


def supported_ops() -> list[str]:
    """The op types this backend runs (``domain.Op`` outside the default domain)."""
    from edgert.ops import registry

    return sorted([*FACTORIES, *(f"{DOMAIN}.{name}" for name in registry.names())])


def _edgert_factory(op: Op) -> Factory:
    """Handlers of ``op``'s nodes: its numba kernel with the node's keyword arguments, converted
    once at load."""

    def factory(node: Node) -> Handler:
        attrs = node.attributes()
        try:
            kwargs = op.node_kwargs(attrs)
        except UnsupportedAttribute as e:
            raise Unsupported(str(e)) from None
        except KeyError as e:
            raise ModelError(f"node {node.label} ({op.name}) lacks attribute {e}") from None
        except ArtifactError as e:
            raise ArtifactError(f"node {node.label}: {e}") from None
        kernel = op.numba_kernel
        return lambda *inputs: (kernel(*inputs, **kwargs),)

    return factory
