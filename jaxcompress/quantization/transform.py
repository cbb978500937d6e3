"""Weight quantization as a :class:`~jaxcompress.transform.Transform` (fake quant and LSQ).

``quantize_weights(spec, where=..., overrides=..., layout=...)`` fake-quantizes the selected
leaves in ``apply`` with a straight-through gradient; scales come from an observer on the
current weights (min/max by default). The bit width of every leaf lives in the transform
state as a float32 array, so :func:`set_bits` changes the grid without recompiling.

``overrides`` maps a path regex to a :class:`QuantSpec`, an int bit width, or ``None``
(keep float), first match wins - e.g. ``{"Dense_0|Dense_2": 8}`` for 8-bit first/last layers.

``layout`` (:func:`jaxcompress.layout.trace`) says which leaves are weights and which of
their axes are outputs: with it the default selection is the layout's weight operands
(never biases, norms, embeddings) and "per channel" means one scale per output position
(a DenseGeneral ``(in, heads, head_dim)`` kernel gets scales of shape ``(1, heads, head_dim)``).
Without it, 2-D kernels are ``(in, out)`` and a per-channel spec on a kernel of
``ndim >= 3`` (a Conv) raises unless its ``axis`` is explicit. :func:`resolve_specs` is the
one place specs get concrete axes.

>>> import jax.numpy as jnp
>>> params = {"Dense_0": {"kernel": jnp.array([[0.1, -0.5], [0.25, 1.0]]), "bias": jnp.ones(2)}}
>>> t = quantize_weights(QuantSpec(bits=2))
>>> st = t.init(params)
>>> t.apply(params, st)["Dense_0"]["kernel"].tolist()
[[0.0, 0.0], [0.25, 1.0]]
>>> import jax, flax.linen as nn
>>> from jaxcompress import layout, model
>>> mod = nn.DenseGeneral((2, 4))                   # (in, heads, head_dim)
>>> m = model.from_linen(mod, mod.init(jax.random.key(0), jnp.zeros((1, 8))))
>>> lay = layout.trace(m, jnp.zeros((1, 8)))
>>> spec = resolve_specs(m.params, QuantSpec(bits=8), layout=lay)["kernel"]
>>> spec.axis, weight_scale_zero_point(m.params["kernel"], spec)[0].shape
((1, 2), (1, 2, 4))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress import layout as layout_lib
from jaxcompress import tree as jtree
from jaxcompress.quantization import fake, grid, observers
from jaxcompress.quantization.spec import QuantSpec, check_bits
from jaxcompress.transform import Transform


def resolve_specs(params, spec: QuantSpec, where=None, overrides=None, layout: dict | None = None
                  ) -> dict[str, QuantSpec]:
    """``{path: spec}`` of the leaves to quantize, each with concrete axes (:meth:`QuantSpec.resolve`).

    Args:
      params: the params tree (linen dict or ``nnx.State``).
      spec: the default spec.
      where: selector (default: the layout's weight paths, or leaves named ``kernel``).
      overrides: ``{path_regex: QuantSpec | bits | None}``, first match wins.
      layout: ``{path: WeightLayout}`` from :func:`jaxcompress.layout.trace` (checked against
        ``params``: a path it names that ``params`` lacks is a ``ValueError`` naming it).

    Raises:
      ValueError: naming the leaf for a bad override, an axis that does not fit, or a
        per-channel / group spec on an ``ndim >= 3`` kernel without layout or explicit axis.
    """
    sel = dict(jtree.named_leaves(layout_lib.select(params, where, layout)))
    leaves = dict(jtree.named_leaves(params))
    per = jtree.resolve_per_path(params, spec, overrides)
    out = {}
    for path, s in per.items():
        if not sel[path] or s is None:
            continue
        if isinstance(s, int) and not isinstance(s, bool):
            check_bits(s, f"bits override for {path!r}")
            s = spec.replace(bits=s)
        if not isinstance(s, QuantSpec):
            raise ValueError(f"override for {path!r} must be a QuantSpec, an int bit width or None, got {s!r}")
        out[path] = s.resolve(tuple(leaves[path].shape), path, layout)
    if not out:
        raise ValueError(f"no parameter left to quantize; available paths: {list(leaves)}")
    return out


def weight_scale_zero_point(w, spec: QuantSpec, bits=None, observer: str = "minmax"):
    """Scale and zero point of ``w`` from a range observer (no gradient)."""
    if observer not in observers.RANGE_FNS:
        raise ValueError(f"unknown weight observer {observer!r}; valid: {list(observers.RANGE_FNS)}")
    lo, hi = observers.RANGE_FNS[observer](jax.lax.stop_gradient(w), spec, bits)
    return grid.compute_scale_zero_point(lo, hi, spec, bits)


def quantize_weights(spec: QuantSpec | None = None, where=None, overrides=None, observer: str = "minmax",
                     layout: dict | None = None) -> Transform:
    """Fake-quantize selected weights (straight-through estimator).

    Args:
      spec: default quantizer (``QuantSpec()``: 8-bit symmetric, one scale per output position).
      where: selector of the leaves to quantize (default: the layout's weights, or kernels).
      overrides: ``{path_regex: QuantSpec | bits | None}``, first match wins.
      observer: range function for the scales: ``minmax``, ``percentile``, ``mse``, ``entropy``.
      layout: weight layout (:func:`jaxcompress.layout.trace`): default selection and axes.

    Returns:
      A Transform with state ``{"bits": {path: float32 scalar}, "key": PRNG key}``.
    """
    spec = spec or QuantSpec()
    if observer not in observers.RANGE_FNS:
        raise ValueError(f"unknown weight observer {observer!r}; valid: {list(observers.RANGE_FNS)}")

    def init(params):
        specs = resolve_specs(params, spec, where, overrides, layout)
        return {"bits": {p: jnp.asarray(s.bits, jnp.float32) for p, s in specs.items()},
                "key": jax.random.key(0)}

    def apply(params, state):
        specs = resolve_specs(params, spec, where, overrides, layout)
        keys = {p: jax.random.fold_in(state["key"], i) for i, p in enumerate(sorted(specs))}

        def f(path, w):
            if path not in specs:
                return w
            s, b = specs[path], state["bits"][path]
            scale, zp = weight_scale_zero_point(w, s, b, observer)
            return fake.fake_quant(w, s, scale, zp, b, keys[path] if s.rounding == "stochastic" else None)

        return jtree.map_with_path(f, params)

    def update(params, state, ctx):
        if ctx.rng is None:
            return params, state
        return params, {**state, "key": ctx.rng}

    return Transform(init, apply, update)


def set_bits(state, bits) -> dict:
    """New transform state with the bit width(s) changed: an int/array for all leaves or ``{path: bits}``.

    Values may be traced; the grid changes, the compiled program does not.
    """
    inner = state["bits"]
    if isinstance(bits, dict):
        unknown = set(bits) - set(inner)
        if unknown:
            raise ValueError(f"set_bits: unknown path(s) {sorted(unknown)}; quantized paths: {sorted(inner)}")
        new = {p: jnp.asarray(bits.get(p, v), jnp.float32) for p, v in inner.items()}
    else:
        if isinstance(bits, int):
            check_bits(bits)
        new = {p: jnp.asarray(bits, jnp.float32) for p in inner}
    return {**state, "bits": new}


def lsq_init_params(params, spec: QuantSpec | None = None, where=None, overrides=None, observer: str = "mse",
                    layout: dict | None = None) -> dict:
    """Trainable params for :func:`lsq_weights`: ``{"params": params, "lsq_scales": {path: scale}}``.

    Scales start at the PTQ scale of ``observer`` (MSE-optimal clipping by default), so
    fine-tuning starts from PTQ. ``layout`` as in :func:`quantize_weights` (pass the same to
    :func:`lsq_weights`).
    """
    spec = spec or QuantSpec()
    specs = resolve_specs(params, spec, where, overrides, layout)
    leaves = dict(jtree.named_leaves(params))
    scales = {}
    for p, s in specs.items():
        if not s.symmetric:
            raise ValueError(f"LSQ needs symmetric specs; {p!r} is asymmetric")
        scales[p] = weight_scale_zero_point(leaves[p], s, None, observer)[0]
    return {"params": params, "lsq_scales": scales}


def lsq_weights(spec: QuantSpec | None = None, where=None, overrides=None, layout: dict | None = None) -> Transform:
    """Learned step size quantization of weights (Esser et al. 2020).

    The trainable params are :func:`lsq_init_params`'s ``{"params", "lsq_scales"}``; ``apply``
    returns the model params with the selected weights LSQ-fake-quantized, so the optimizer
    trains weights and scales together (scale gradients scaled by ``1/sqrt(N * Qp)``).
    ``layout`` as in :func:`quantize_weights` (the same one :func:`lsq_init_params` got).
    """
    spec = spec or QuantSpec()

    def init(wrapped):
        if not isinstance(wrapped, dict) or set(wrapped) != {"params", "lsq_scales"}:
            raise ValueError("lsq_weights expects params from lsq_init_params(params, ...)")
        specs = resolve_specs(wrapped["params"], spec, where, overrides, layout)
        missing = sorted(set(specs) - set(wrapped["lsq_scales"]))
        if missing:
            raise ValueError(f"lsq_weights quantizes {missing}, which have no scale in lsq_scales "
                             f"(build them with lsq_init_params and the same spec / where / layout)")
        return {"bits": {p: jnp.asarray(s.bits, jnp.float32) for p, s in specs.items()}}

    def apply(wrapped, state):
        specs = resolve_specs(wrapped["params"], spec, where, overrides, layout)

        def f(path, w):
            if path not in specs:
                return w
            scale = jnp.abs(wrapped["lsq_scales"][path]) + grid.TINY
            return fake.lsq_fake_quant(w, specs[path], scale, None, state["bits"][path])

        return jtree.map_with_path(f, wrapped["params"])

    return Transform(init, apply, lambda p, s, ctx: (p, s))
