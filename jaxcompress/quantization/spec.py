"""What a quantizer does: :class:`QuantSpec` and the integer grid it defines.

A spec fixes the *structure* of a quantizer (symmetric or not, granularity, axes,
rounding). The bit width is part of the spec but every function that builds the grid
also accepts ``bits`` as a traced array, so sweeping bits re-uses one compilation.

Values are stored as signed integers ``q`` in ``[qmin, qmax]`` and represent
``scale * (q - zero_point)``; symmetric specs have ``zero_point = 0``.

Granularity:

* ``"tensor"`` - one scale for the whole array;
* ``"channel"`` - one scale per index of ``axis`` (default ``-1``: the output axis of
  a Dense ``(in, out)`` or Conv ``(H, W, I, O)`` kernel);
* ``"group"`` - per channel and per block of ``group_size`` entries along
  ``contraction_axis`` (default ``-2``: the input axis of Dense and Conv kernels).

>>> s = QuantSpec(bits=4)
>>> [float(v) for v in qrange(s)]
[-8.0, 7.0]
>>> QuantSpec(bits=4, narrow_range=True).scale_shape((6, 3))
(1, 3)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

GRANULARITIES = ("tensor", "channel", "group")
ROUNDINGS = ("nearest", "stochastic")
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def check_bits(bits, name: str = "bits") -> None:
    """Raise ``ValueError`` unless ``bits`` is a Python int in ``SUPPORTED_BITS``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"{name} must be one of {SUPPORTED_BITS}, got {bits!r}")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Static description of a uniform quantizer (hashable; safe as a jit static arg).

    Attributes:
      bits: 2..8 or 16.
      symmetric: zero point fixed at 0 if True; otherwise an integer zero point.
      granularity: ``"tensor"``, ``"channel"`` or ``"group"``.
      axis: channel axis (``"channel"``/``"group"``).
      group_size: block size along ``contraction_axis`` (``"group"`` only).
      contraction_axis: the axis the groups split (``"group"`` only).
      narrow_range: symmetric grid ``[-(2^(b-1)-1), 2^(b-1)-1]`` (drops the lowest code).
      rounding: ``"nearest"`` or ``"stochastic"`` (needs a PRNG key).
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    axis: int = -1
    group_size: int | None = None
    contraction_axis: int = -2
    narrow_range: bool = False
    rounding: str = "nearest"

    def __post_init__(self):
        check_bits(self.bits)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size <= 0:
                raise ValueError(f"granularity='group' needs a positive int group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size={self.group_size} is only valid with granularity='group'")

    def replace(self, **kw) -> "QuantSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    # ---- shapes -------------------------------------------------------------------------
    def check_shape(self, shape: tuple[int, ...], name: str = "array") -> None:
        """Raise ``ValueError`` naming ``name`` if this spec cannot quantize ``shape``."""
        nd = len(shape)
        if self.granularity == "tensor":
            return
        if not -nd <= self.axis < nd:
            raise ValueError(f"{name}: quantization axis {self.axis} does not exist for shape {tuple(shape)}")
        if self.granularity == "group":
            c = self.contraction_axis
            if not -nd <= c < nd:
                raise ValueError(f"{name}: contraction_axis {c} does not exist for shape {tuple(shape)}")
            if c % nd == self.axis % nd:
                raise ValueError(f"{name}: contraction_axis and axis are both {self.axis % nd}")
            if shape[c] % self.group_size:
                raise ValueError(
                    f"{name}: group_size {self.group_size} does not divide axis {c % nd} of size {shape[c]} "
                    f"(shape {tuple(shape)})")

    def grouped_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the array is viewed in: the contraction axis split into (groups, group_size)."""
        self.check_shape(shape)
        if self.granularity != "group":
            return tuple(shape)
        c = self.contraction_axis % len(shape)
        return (*shape[:c], shape[c] // self.group_size, self.group_size, *shape[c + 1 :])

    def reduce_axes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Axes of the *grouped view* that one scale covers."""
        nd = len(shape)
        if self.granularity == "tensor":
            return tuple(range(nd))
        a = self.axis % nd
        if self.granularity == "channel":
            return tuple(i for i in range(nd) if i != a)
        c = self.contraction_axis % nd
        # grouped view has nd+1 axes: axis c -> (c: group index, c+1: within group)
        ga = a if a < c else a + 1
        return tuple(i for i in range(nd + 1) if i not in (ga, c))

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the scale / zero point (keepdims over the grouped view)."""
        g = self.grouped_shape(shape)
        red = set(self.reduce_axes(shape))
        return tuple(1 if i in red else n for i, n in enumerate(g))


def qrange(spec: QuantSpec, bits=None):
    """``(qmin, qmax)`` as float32 arrays; ``bits`` (optional, may be traced) overrides ``spec.bits``."""
    b = jnp.asarray(spec.bits if bits is None else bits, jnp.float32)
    half = jnp.round(jnp.exp2(b - 1.0))  # exp2 is not exact on every backend
    qmax = half - 1.0
    qmin = -qmax if spec.narrow_range else -half
    return qmin, qmax


def storage_dtype(bits: int):
    """The numpy-compatible integer dtype that holds ``bits``-bit signed codes."""
    check_bits(bits)
    return jnp.int16 if bits > 8 else jnp.int8
