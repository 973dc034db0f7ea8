"""``CompileOptions``: everything ``edgert compile`` can be asked, in one frozen value.

:func:`edgert.compiler.pipeline.compile_model` takes one (or the same fields as keywords).
:meth:`CompileOptions.check` validates the combinations before any file is read, with the
messages the CLI shows (``--io int8`` needs ``--int-only``, ``--lut`` needs ``--weight-bits``...).
This module imports nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from edgert.errors import InputError

IO_MODES = ("float", "int8")
"""Graph I/O of an integer-only compile: float32 at the boundary, or the integer tensors."""
Dims = tuple[int | None, ...]
"""An input's dims as ``--input-shape`` gives them: a positive integer, or None (``?``: the
dim the model declares, e.g. a dynamic batch kept dynamic)."""
LUT_MODES = ("auto", "always", "never")
"""``--lut``: per LutMatMul node, time both kernels, always table lookup, never (dequantize)."""


@dataclass(frozen=True)
class CompileOptions:
    """How to compile a model.

    Attributes:
        target: a target name from ``edgert targets`` (``host`` = this machine).
        threads: worker threads the kernels are built for (default: all cores).
        int_only: calibrate and rewrite the graph into the integer ONNX graph
            (``docs/integer-onnx.md``) before lowering; needs ``calib``.
        calib: calibration inputs (``.npz`` or a directory, see
            :func:`edgert.compiler.calibrate.load_samples`; from Python also an iterable
            of dicts input name -> array, see :mod:`edgert.compiler.calib_batches`).
        calib_method: ``minmax`` or ``percentile``.
        act_bits: activation dtype policy, ``auto``, ``linear8``, ``8`` or ``16`` (see
            :mod:`edgert.compiler.quantize`).
        io: with ``int_only``: ``"float"`` (float32 graph inputs/outputs, quantized and
            dequantized inside the graph) or ``"int8"`` (integer I/O: the graph's float inputs
            and outputs become the integer tensors themselves, int8/int16 in and
            int8/int16/int32 out; their dtypes and scales go to the manifest's
            ``quantization.io``, see :class:`edgert.compiler.quantize.QuantizeReport`).
        allow_float: with ``int_only``: keep nodes that have no integer form in float32
            (dequantized before, requantized after) instead of failing; the manifest's
            ``quantization.float_nodes`` names them.
        weight_bits: 1, 2, 3, 4 or "ternary": MatMul/Gemm nodes with constant float weights
            become ``edgert.LutMatMul`` (table lookup on packed low-bit weights, see
            :mod:`edgert.compiler.lowbit`); with ``int_only`` the integer variant (int8
            activations, the weight scale folded into the Requant). The manifest's ``lowbit``
            section lists the nodes, their layouts and the bytes saved.
        group_size: rows of K per weight scale: 32, 64, 128 or "K"/0 (one group over K).
            Default 128, and K with ``int_only`` (the only choice there, except for ternary).
        weight_zero_point: asymmetric low-bit codes (a zero point per group and column).
        lowbit_min_elements: weights with fewer elements (K * N) stay as they are (default
            :data:`edgert.compiler.lowbit.MIN_ELEMENTS`).
        keep_float: glob patterns (fnmatch) of MatMul/Gemm node names or weight names that
            keep their float weights under ``weight_bits``.
        lut: with ``weight_bits``: ``"auto"`` (default: per node, the faster of table lookup
            and dequantize-then-multiply, timed here), ``"always"`` (table lookup) or
            ``"never"`` (dequantize); see :mod:`edgert.compiler.kernel_choice`.
        tuning_db: a tuning database folder written by ``edgert tune``
            (:mod:`edgert.compiler.tune`): kernels it has faster schedules for (for this
            target, same shapes) use them; the manifest's ``tuning`` section lists them.
            ``"shipped"`` (``None``, the default): the records shipped with edgert for the
            target, if any; ``"none"``: no records. The tuning cache is never read on its own.
        input_shapes: input name -> dims (positive integers) that replace the dims the
            model declares for that input (``--input-shape NAME=D1,D2,...``, like
            onnxruntime's free-dimension overrides); given as a mapping, or as
            ``"NAME=D1,D2,..."`` strings. Inputs not named keep their dims, and so does a dim
            given as None (``?``): ``x=?,3,320,320`` keeps a dynamic batch dynamic. Stored
            as ``((name, dims), ...)``; :attr:`input_shape_map` reads it.
        lmul: ``"attention"`` or ``"all"``: float32 matmuls become ``edgert.LMulMatMul``
            (L-Mul products, integer additions instead of multiplies; the attention
            matmuls with two computed operands, or every MatMul and matrix-product Gemm),
            see :mod:`edgert.compiler.lmul`; the manifest's ``lmul`` section lists them.
        lmul_mantissa: with ``lmul``: operand mantissa bits, 2..5 (default 4).
        binary_attention: fp32 compiles: attention subgraphs (Q·Kᵀ, scale, mask, softmax, ·V)
            become binary codes and popcount scores (``edgert.HashCodes`` +
            ``edgert.BinaryAttention``), the hash fitted on ``calib`` (see
            :mod:`edgert.compiler.binary_attention`); the manifest's ``binary_attention``
            section lists them. With ``int_only``: ``edgert.IntBinaryAttention`` on the
            integer graph, both forms (:mod:`edgert.compiler.binary_attention_int`).
        hash_bits: with ``binary_attention``: code bits, 8, 16 or 32 (default 16).
        attention_form: with ``binary_attention``: ``"quadratic"`` (softmax on the scores,
            default) or ``"linear"`` (the associative kernel form, linear in the sequence).
        shift_linear: with ``int_only``: ``"mlp"`` (the two Linears of each MLP block),
            ``"all"`` (every Linear) or a name pattern (glob, or ``re:`` + a regular
            expression, on the fp32 Linear's node, weight, bias or output names): their int8
            weights are rounded to signed powers of two and the products become shifts
            (``edgert.ShiftMatMul``), see :mod:`edgert.compiler.shift_linear`; the manifest's
            ``shift_linear`` section lists them.
    """

    target: str = "host"
    threads: int | None = None
    int_only: bool = False
    calib: str | os.PathLike | Iterable[Mapping[str, Any]] | None = None
    calib_method: str = "minmax"
    act_bits: str = "auto"
    io: str = "float"
    allow_float: bool = False
    weight_bits: int | str | None = None
    group_size: int | str | None = None
    weight_zero_point: bool = False
    lowbit_min_elements: int | None = None
    keep_float: tuple[str, ...] = ()
    lut: str | None = None
    tuning_db: str | os.PathLike | None = None
    input_shapes: Mapping[str, Sequence[int | None]] | Iterable[str] | None = None
    lmul: str | None = None
    lmul_mantissa: int | None = None
    binary_attention: bool = False
    hash_bits: int | None = None
    attention_form: str | None = None
    shift_linear: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_float", tuple(self.keep_float or ()))
        object.__setattr__(self, "input_shapes", normalize_input_shapes(self.input_shapes))

    @classmethod
    def of(cls, options: CompileOptions | None = None, **changes: Any) -> CompileOptions:
        """``options`` (default: all defaults) with ``changes`` applied; an unknown field is a
        ``TypeError`` naming it, as for a function's keyword."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown compile option(s): {', '.join(unknown)}")
        base = options if options is not None else cls()
        return base if not changes else cls(**{**{n: getattr(base, n) for n in known}, **changes})

    @property
    def lowbit(self) -> bool:
        """Low-bit weights asked for (``--weight-bits``)."""
        return self.weight_bits is not None

    def check(self) -> None:
        """Raise :class:`InputError` for combinations that do not apply (checked before any
        file is read; the low-bit values themselves by :meth:`lowbit_config`)."""
        if self.io not in IO_MODES:
            raise InputError(f"io must be one of {', '.join(IO_MODES)}, got {self.io!r}")
        if not self.int_only and (self.io != "float" or self.allow_float):
            raise InputError("--io int8 and --allow-float apply to integer-only compilation: "
                             "add --int-only --calib DATA")
        lowbit_flags = (self.group_size is not None or self.weight_zero_point
                        or self.keep_float or self.lut is not None)
        if not self.lowbit and lowbit_flags:
            raise InputError("--group-size, --weight-zero-point, --keep-float and --lut apply "
                             "to low-bit weights: add --weight-bits {1,2,3,4,ternary}")
        if self.lmul is not None or self.lmul_mantissa is not None:
            self._check_lmul()
        if self.binary_attention or self.hash_bits is not None or self.attention_form is not None:
            self._check_binary_attention()
        if self.shift_linear is not None:
            self._check_shift_linear()

    def _check_lmul(self) -> None:
        """``--lmul`` / ``--lmul-mantissa``: values, and what they combine with."""
        from edgert.compiler.lmul import check_mode

        if self.lmul is None:
            raise InputError("--lmul-mantissa applies to L-Mul matmuls: add --lmul attention|all")
        check_mode(self.lmul, self.lmul_mantissa)
        if self.int_only:
            raise InputError("--lmul replaces float32 products and --int-only leaves none (its "
                             "matmuls multiply integers): use one or the other")
        if self.lmul == "all" and self.lowbit:
            raise InputError("--lmul all and --weight-bits both rewrite the constant-weight "
                             "matmuls: use --lmul attention with --weight-bits")

    def _check_shift_linear(self) -> None:
        """``--shift-linear``: the choice, and what it combines with."""
        from edgert.compiler.shift_linear import matcher

        matcher(self.shift_linear)
        if not self.int_only:
            raise InputError("--shift-linear rounds the int8 weights of an integer graph: add "
                             "--int-only --calib DATA")
        if self.lowbit:
            raise InputError("--shift-linear and --weight-bits both rewrite the Linear weights: "
                             "use one or the other")

    def _check_binary_attention(self) -> None:
        """``--binary-attention`` / ``--hash-bits`` / ``--attention-form``: values, and what
        they combine with."""
        from edgert.compiler.binary_attention import check_options

        if not self.binary_attention:
            raise InputError("--hash-bits and --attention-form apply to binary attention: add "
                             "--binary-attention --calib DATA")
        check_options(self.hash_bits, self.attention_form)
        if self.calib is None:
            raise InputError("--binary-attention needs calibration data (--calib samples.npz "
                             "or a directory): the hash of queries and keys is fitted on the "
                             "attention that typical inputs produce")

    def lowbit_config(self) -> Any:
        """The :class:`edgert.compiler.lowbit.LowbitConfig` of ``--weight-bits`` and its
        flags (None without low-bit weights), after checking them and ``--lut``; raises
        InputError."""
        if not self.lowbit:
            return None
        from edgert.compiler.lowbit import MIN_ELEMENTS, make_config

        config = make_config(self.weight_bits, self.group_size, zero_point=self.weight_zero_point,
                             integer=self.int_only,
                             min_elements=MIN_ELEMENTS if self.lowbit_min_elements is None
                             else self.lowbit_min_elements, keep=self.keep_float)
        check_lut_mode(self.lut_mode)
        return config

    @property
    def input_shape_map(self) -> dict[str, Dims]:
        """``input_shapes`` as input name -> dims."""
        return dict(self.input_shapes or ())

    @property
    def lut_mode(self) -> str:
        """``--lut`` with its default (``auto``)."""
        return "auto" if self.lut is None else self.lut


def check_lut_mode(mode: str) -> str:
    """Validate ``--lut``; raises InputError."""
    if mode not in LUT_MODES:
        raise InputError(f"--lut must be one of {', '.join(LUT_MODES)}, got {mode!r}")
    return mode


def _dim(d: Any) -> int | None:
    """One given dim: ``?``/None, or a positive integer (a float only when integral)."""
    if d is None or (isinstance(d, str) and d.strip() == "?"):
        return None
    if isinstance(d, float) and not d.is_integer():
        raise ValueError(d)
    value = int(d)
    if value < 1:
        raise ValueError(d)
    return value


def parse_input_shape(spec: str) -> tuple[str, Dims]:
    """``"NAME=D1,D2,..."`` (``--input-shape``) -> ``(NAME, (D1, D2, ...))``; the name is
    what comes before the last ``=``; a dim ``?`` keeps the model's (None). Raises
    InputError."""
    name, sep, dims = str(spec).rpartition("=")
    try:
        values = tuple(_dim(d) for d in dims.split(","))
    except ValueError:
        values = ()
    if not sep or not name or not values:
        raise InputError(f"--input-shape {spec!r}: expected NAME=D1,D2,... with positive "
                         f"integer dims (or ? to keep the model's), e.g. x=1,3,320,320")
    return name, values


def normalize_input_shapes(shapes: Mapping[str, Sequence[int | None]] | Iterable[str] | None
                           ) -> tuple[tuple[str, Dims], ...] | None:
    """``input_shapes`` as given (a mapping name -> dims, ``"NAME=D1,..."`` strings, or the
    stored pairs) -> ``((name, dims), ...)``, None when empty. Raises InputError for a
    malformed entry, a dim that is neither a positive integer nor ``?``/None, or an input
    named twice."""
    if not shapes:
        return None
    if isinstance(shapes, Mapping):
        items = list(shapes.items())
    elif isinstance(shapes, str):
        items = [parse_input_shape(shapes)]
    else:
        items = [parse_input_shape(s) if isinstance(s, str) else tuple(s) for s in shapes]
    out: dict[str, Dims] = {}
    for name, dims in items:
        try:
            values = tuple(_dim(d) for d in dims)
        except (TypeError, ValueError):
            values = ()
        if not values:
            raise InputError(f"input shape of {name!r}: expected positive integer dims (or "
                             f"None to keep the model's), got {dims!r}")
        if name in out:
            raise InputError(f"--input-shape names {name!r} twice")
        out[str(name)] = values
    return tuple(out.items())
