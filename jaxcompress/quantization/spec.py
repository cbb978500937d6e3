"""What a quantizer does: :class:`QuantSpec` and the integer grid it defines.

A spec fixes the *structure* of a quantizer (symmetric or not, granularity, axes,
rounding). The bit width is part of the spec but every function that builds the grid
also accepts ``bits`` as a traced array, so sweeping bits re-uses one compilation.

Values are stored as signed integers ``q`` in ``[qmin, qmax]`` and represent
``scale * (q - zero_point)``; symmetric specs have ``zero_point = 0``.

Granularity:

* ``"tensor"`` - one scale for the whole array (axes are ignored);
* ``"channel"`` - one scale per *output position*: per index of every axis in ``axis``
  (an int or a tuple of ints);
* ``"group"`` - per output position and per block of ``group_size`` entries along
  ``contraction_axis`` (an input axis).

``axis=None`` and ``contraction_axis=None`` (the defaults) mean "from the leaf's weight
layout" (:mod:`jaxcompress.layout`): all of its ``outputs`` axes and its ``group_axis``.
:meth:`QuantSpec.resolve` turns them into concrete axes; without a layout a 2-D kernel is
flax's ``(in, out)`` (``axis=-1``, ``contraction_axis=-2``), and a leaf of ``ndim >= 3`` is
ambiguous (Conv ``(*window, in, out)`` or DenseGeneral ``(in, heads, head_dim)``): a
``ValueError`` asks for a layout or an explicit axis.

>>> s = QuantSpec(bits=4)
>>> [float(v) for v in qrange(s)]
[-8.0, 7.0]
>>> QuantSpec(bits=4, narrow_range=True).scale_shape((6, 3))
(1, 3)
>>> from jaxcompress.layout import WeightLayout
>>> lay = {"q/kernel": WeightLayout((0,), (1, 2), 0, "dot_general")}   # (in, heads, head_dim)
>>> s.resolve((8, 2, 4), "q/kernel", lay).scale_shape((8, 2, 4))
(1, 2, 4)
>>> QuantSpec(axis=(-2, -1)).scale_shape((8, 2, 4))
(1, 2, 4)
>>> s.resolve((8, 2, 4), "q/kernel")
Traceback (most recent call last):
...
ValueError: parameter 'q/kernel' has shape (8, 2, 4): which axes are inputs and outputs is ambiguous for ndim >= 3 (Conv (*window, in, out) or DenseGeneral (in, heads, head_dim)); pass layout=jaxcompress.layout.trace(model, x) or an explicit axis
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Static description of a uniform quantizer (hashable; safe as a jit static arg).

    Attributes:
      bits: 2..8 or 16.
      symmetric: zero point fixed at 0 if True; otherwise an integer zero point.
      granularity: ``"tensor"``, ``"channel"`` or ``"group"``.
      axis: the channel (output) axis or axes of ``"channel"`` / ``"group"``: an int, a tuple
        of ints (one scale per position over all of them), or ``None`` = the leaf's output
        axes from its layout (2-D without layout: ``-1``).
      group_size: block size along ``contraction_axis`` (``"group"`` only).
      contraction_axis: the input axis the groups split (``"group"`` only); ``None`` = the
        layout's ``group_axis`` (2-D without layout: ``-2``).
      narrow_range: symmetric grid ``[-(2^(b-1)-1), 2^(b-1)-1]`` (drops the lowest code).
      rounding: ``"nearest"`` or ``"stochastic"`` (needs a PRNG key).
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    axis: int | tuple[int, ...] | None = None
    group_size: int | None = None
    contraction_axis: int | None = None
    narrow_range: bool = False
    rounding: str = "nearest"

    def __post_init__(self):
        check_bits(self.bits)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.granularity == "group":
            if not _is_int(self.group_size) or self.group_size <= 0:
                raise ValueError(f"granularity='group' needs a positive int group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size={self.group_size} is only valid with granularity='group'")
        axis = self.axis
        if isinstance(axis, (list, tuple)):  # a list (e.g. read back from JSON) becomes a tuple: hashable
            axis = tuple(axis)
            if not axis or not all(_is_int(a) for a in axis):
                raise ValueError(f"axis must be an int, a non-empty tuple of ints or None, got {self.axis!r}")
            object.__setattr__(self, "axis", axis)
        elif axis is not None and not _is_int(axis):
            raise ValueError(f"axis must be an int, a non-empty tuple of ints or None, got {axis!r}")
        if self.contraction_axis is not None and not _is_int(self.contraction_axis):
            raise ValueError(f"contraction_axis must be an int or None, got {self.contraction_axis!r}")

    def replace(self, **kw) -> "QuantSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    # ---- axes ---------------------------------------------------------------------------
    def resolve(self, shape: tuple[int, ...], path: str = "array", layout: dict | None = None) -> "QuantSpec":
        """This spec with concrete axes for a leaf of ``shape`` at ``path`` (validated).

        ``axis=None`` becomes the leaf's output axes (``layout[path].outputs``; one axis is
        stored as an int, several as a tuple) and ``contraction_axis=None`` its ``group_axis``.
        Without a layout a 2-D leaf is ``(in, out)``: ``-1`` and ``-2``, exactly the axes of
        an explicit ``QuantSpec(axis=-1, contraction_axis=-2)``. Per-tensor specs come back
        unchanged.

        Raises:
          ValueError: naming ``path`` when an axis is needed and cannot be known (no layout,
            ``ndim >= 3``; or ``layout`` does not list ``path``), or when the axes do not fit
            ``shape`` (see :meth:`check_shape`).
        """
        if self.granularity == "tensor":
            return self
        axis, c = self.axis, self.contraction_axis
        need_c = self.granularity == "group" and c is None
        if axis is None or need_c:
            if layout is None and len(shape) == 2:
                axis = -1 if axis is None else axis
                c = -2 if c is None else c
            else:
                from jaxcompress import layout as layout_lib

                wl = layout_lib.axes_of(path, tuple(shape), layout)
                if axis is None:
                    axis = wl.outputs[0] if len(wl.outputs) == 1 else tuple(wl.outputs)
                if c is None:
                    c = wl.group_axis
        out = self.replace(axis=axis, contraction_axis=c)
        out.check_shape(shape, path)
        return out

    def channel_axes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The sorted non-negative channel axes for ``shape`` (``()`` for per-tensor)."""
        nd = len(shape)
        if self.granularity == "tensor":
            return ()
        axis = self.axis
        if axis is None:
            axis = self.resolve(shape).axis  # 2-D: -1; otherwise raises
        return tuple(sorted(a % nd for a in (axis if isinstance(axis, tuple) else (axis,))))

    def _contraction(self, shape: tuple[int, ...]) -> int:
        c = self.contraction_axis
        if c is None:
            c = self.resolve(shape).contraction_axis
        return c % len(shape)

    # ---- shapes -------------------------------------------------------------------------
    def check_shape(self, shape: tuple[int, ...], name: str = "array") -> None:
        """Raise ``ValueError`` naming ``name`` if this spec cannot quantize ``shape``.

        Checked: every channel axis exists and none repeats, the contraction axis exists, is
        not a channel axis, and ``group_size`` divides it. ``None`` axes are resolved as by
        :meth:`resolve` without a layout (so ``ndim >= 3`` needs explicit axes here).
        """
        nd = len(shape)
        if self.granularity == "tensor":
            return
        if self.axis is None or (self.granularity == "group" and self.contraction_axis is None):
            self.resolve(shape, name)  # resolves and checks (or raises naming ``name``)
            return
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        for a in axes:
            if not -nd <= a < nd:
                raise ValueError(f"{name}: quantization axis {a} does not exist for shape {tuple(shape)}")
        if len({a % nd for a in axes}) != len(axes):
            raise ValueError(f"{name}: quantization axis {self.axis} repeats an axis of shape {tuple(shape)}")
        if self.granularity == "group":
            c = self.contraction_axis
            if not -nd <= c < nd:
                raise ValueError(f"{name}: contraction_axis {c} does not exist for shape {tuple(shape)}")
            if c % nd in {a % nd for a in axes}:
                raise ValueError(f"{name}: contraction_axis and axis are both {c % nd} "
                                 f"(the groups must split an input axis, not a channel axis)")
            if shape[c] % self.group_size:
                raise ValueError(
                    f"{name}: group_size {self.group_size} does not divide axis {c % nd} of size {shape[c]} "
                    f"(shape {tuple(shape)})")

    def grouped_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the array is viewed in: the contraction axis split into (groups, group_size)."""
        self.check_shape(shape)
        if self.granularity != "group":
            return tuple(shape)
        c = self._contraction(shape)
        return (*shape[:c], shape[c] // self.group_size, self.group_size, *shape[c + 1 :])

    def reduce_axes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Axes of the *grouped view* that one scale covers."""
        nd = len(shape)
        if self.granularity == "tensor":
            return tuple(range(nd))
        keep = self.channel_axes(shape)
        if self.granularity == "channel":
            return tuple(i for i in range(nd) if i not in keep)
        c = self._contraction(shape)
        # grouped view has nd+1 axes: axis c -> (c: group index, c+1: within group)
        gkeep = {a if a < c else a + 1 for a in keep} | {c}
        return tuple(i for i in range(nd + 1) if i not in gkeep)

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
