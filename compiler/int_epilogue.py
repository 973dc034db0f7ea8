"""The Requant after an integer convolution as a kernel's epilogue: its TE placeholders and
the arithmetic per element (:class:`Epilogue`), shared by the NCHW kernels of
:mod:`edgert.compiler.schedule_int_conv` and the NHWC ones of
:mod:`edgert.compiler.schedule_int_nhwc`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Epilogue:
    """A Requant after the convolution (TE placeholders; ``bias`` int32 [O] or None, ``m``
    int32/int64 and ``e`` int64 of [O] when ``per_channel``, else [1]). ``high_word``: every
    multiplier is int32 and every shift within [32, 62] (what :func:`epilogue_of` checks)."""

    bias: Any
    m: Any
    e: Any
    per_channel: bool
    lo: int
    hi: int
    to: str
    high_word: bool = False

    def value(self, q: Any, c: Any) -> Any:
        """TIR: the int32 ``q`` of output channel ``c`` plus the bias, requantized. The bias
        is added modulo 2**32 like the graph's int32 ``Add``, as an unsigned add: a signed
        one LLVM widens to ``sext(q) + sext(bias)``, a 33-bit value whose product with the
        multiplier takes a 64 x 64 multiply emulation (3 ``vpmuludq`` a vector on AVX2);
        the wrapped sum stays 32-bit and the product one ``vpmuldq``.

        With ``high_word``, ``(x >> e)`` of the rounded int64 product ``x`` is taken as
        ``(x >> 32) >> (e - 32)``, the second shift and the clamp on int32 lanes (AVX2 has
        ``vpsravd``, ``vpminsd``, ``vpmaxsd``; on int64 lanes it has no arithmetic shift nor
        min/max, and the narrowing from int64 costs shuffles): the same floor, exactly, since
        ``|x| < 2**62`` leaves ``x >> 32`` within int32."""
        from tvm import tirx

        from edgert.ops.requant.tvm import requant_value

        if self.bias is not None:
            q = tirx.reinterpret("int32", q.astype("uint32") + self.bias[c].astype("uint32"))
        k = c if self.per_channel else 0
        m, e = self.m[k], self.e[k]
        if not self.high_word:
            return requant_value(q, m, e, lo=self.lo, hi=self.hi, to=self.to)
        one = tirx.const(1, "int64")
        x = q.astype("int64") * m.astype("int64") + tirx.shift_left(one, e - 1)
        v = tirx.shift_right(tirx.shift_right(x, tirx.const(32, "int64")).astype("int32"),
                             (e - 32).astype("int32"))
        return tirx.max(tirx.min(v, tirx.const(self.hi, "int32")),
                        tirx.const(self.lo, "int32")).astype(self.to)


def epilogue_of(epilogue: tuple) -> tuple[Epilogue, list, list, tuple]:
    """The TE placeholders of ``epilogue`` (numpy bias or None, m, e; lo, hi, to): the
    :class:`Epilogue`, the placeholders and constants to pass, and a kernel key (what
    :func:`placeholders` builds them from)."""
    bias, m, e, lo, hi, to = epilogue
    high = m.dtype == np.int32 and e.size > 0 and 32 <= int(e.min()) and int(e.max()) <= 62
    key = (None if bias is None else bias.size, str(m.dtype), m.size, lo, hi, to, high)
    return (*placeholders(key), [v for v in (bias, m, e) if v is not None], key)


def placeholders(ep_key: tuple) -> tuple[Epilogue, list]:
    """The :class:`Epilogue` of a kernel key of :func:`epilogue_of` and its placeholders."""
    from tvm import te

    bias_size, m_dtype, m_size, lo, hi, to, high = ep_key
    b_ph = None if bias_size is None else te.placeholder((bias_size,), "int32", name="bias")
    m_ph = te.placeholder((m_size,), m_dtype, name="m")
    e_ph = te.placeholder((m_size,), "int64", name="e")
    return (Epilogue(b_ph, m_ph, e_ph, m_size != 1, lo, hi, to, high),
            [p for p in (b_ph, m_ph, e_ph) if p is not None])
