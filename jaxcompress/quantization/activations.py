"""Quantize the inputs of Dense / Conv / Einsum layers without editing model code.

* linen: ``nn.intercept_methods`` sees every ``__call__`` of ``nn.Dense``,
  ``nn.DenseGeneral``, ``nn.Conv`` and ``nn.Einsum``; the layer input is replaced by its
  fake-quantized value (or recorded, for calibration). For integer modes the layer's
  ``dot_general`` / ``conv_general_dilated`` is swapped for the duration of the call
  (linen ``Einsum`` calls ``jnp.einsum`` directly, so it stays float in integer modes).
* NNX: a copy of the module gets path-aware ``dot_general`` (``Linear``,
  ``LinearGeneral``), ``conv_general_dilated`` (``Conv``) and ``einsum_op`` (``Einsum``).

Any model form works: a :class:`jaxcompress.model.Model` (linen or NNX,
with BatchNorm statistics and other state: it runs in eval mode with them), a zoo
zoo model, an ``nnx.Module`` or a linen ``apply_fn(params, x)``.
A mode that would change nothing because no layer was intercepted raises instead of
silently running in float.

A layer is named by its module path (``"Dense_0"``, ``"hidden/0"``); its weight is
``f"{layer}/kernel"``. A *handler* ``handler(layer, op, lhs, rhs)`` decides what happens;
``op(lhs, rhs, **kw)`` is the layer's original operation with its other arguments bound
(``kw`` e.g. ``preferred_element_type``).

>>> import jax.numpy as jnp
>>> from jaxcompress import models
>>> m = models.create("mlp", (4,), 3, features=(5,))
>>> logits, inputs = capture_inputs(m)(m.params, jnp.ones((2, 4)))
>>> sorted(inputs), inputs["Dense_1"].shape
(['Dense_0', 'Dense_1'], (2, 5))
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxcompress import model as jmodel
from jaxcompress.model import Model
from jaxcompress.quantization import fake, grid
from jaxcompress.quantization.spec import QuantSpec

DEFAULT_ACT_SPEC = QuantSpec(bits=8, granularity="tensor")
_LINEN_DOT = (nn.Dense, nn.DenseGeneral)
_LINEN_CONV = (nn.Conv,)
_NNX_ATTR = ((nnx.Linear, "dot_general"), (nnx.LinearGeneral, "dot_general"), (nnx.Conv, "conv_general_dilated"))


def _linen_interceptor(handler, input_only: bool):
    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__" or not isinstance(mod, (*_LINEN_DOT, *_LINEN_CONV, nn.Einsum)):
            return next_fun(*args, **kwargs)
        layer = "/".join(str(p) for p in mod.path)
        if input_only:
            return next_fun(handler(layer, None, args[0], None), *args[1:], **kwargs)
        if isinstance(mod, nn.Einsum):  # linen Einsum has no op hook: stays float in operation modes
            return next_fun(*args, **kwargs)
        attr = "dot_general" if isinstance(mod, _LINEN_DOT) else "conv_general_dilated"
        if getattr(mod, attr + "_cls") is not None:
            raise ValueError(f"layer {layer!r} uses a custom {attr}_cls; cannot intercept its operation")
        orig = getattr(mod, attr)
        base = orig or (jax.lax.dot_general if attr == "dot_general" else jax.lax.conv_general_dilated)
        object.__setattr__(mod, attr, _bind(base, layer, handler))
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(mod, attr, orig)

    return interceptor


def _bind(base, layer, handler):
    def hooked(lhs, rhs, *args, **kwargs):
        return handler(layer, lambda a, b, **kw: base(a, b, *args, **{**kwargs, **kw}), lhs, rhs)

    return hooked


def _bind_einsum(base, layer, handler):
    def hooked(eq, lhs, rhs, *args, **kwargs):
        return handler(layer, lambda a, b, **kw: base(eq, a, b, *args, **{**kwargs, **kw}), lhs, rhs)

    return hooked


def _nnx_hooked(module: nnx.Module, handler) -> nnx.Module:
    """A copy of ``module`` whose Linear / LinearGeneral / Conv / Einsum ops call ``handler``."""
    copy = nnx.merge(*nnx.split(module))
    for path, sub in nnx.iter_modules(copy):
        layer = "/".join(str(p) for p in path)
        if isinstance(sub, nnx.Einsum):
            sub.einsum_op = _bind_einsum(sub.einsum_op, layer, handler)
            continue
        for cls, attr in _NNX_ATTR:
            if isinstance(sub, cls):
                base = getattr(sub, attr) or jax.lax.dot_general
                setattr(sub, attr, _bind(base, layer, handler))
                break
    return copy


def _to_model(model) -> Model:
    """``model`` as a :class:`jaxcompress.model.Model`: a Model itself (the zoo's included), an
    ``nnx.Module`` or a linen ``apply_fn(params, x)``."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nnx.Module):
        return jmodel.from_nnx(model)
    if isinstance(model, nn.Module) or not callable(model):
        raise ValueError(f"model must be a jaxcompress.model.Model, an nnx.Module or a linen apply_fn(params, x), "
                         f"got {type(model).__name__} (a linen module: jaxcompress.model.from_linen(module, variables))")
    return jmodel.from_apply(model, None)


def hooked_model(model, handler, input_only: bool = False) -> Model:
    """``model`` (any form the module docstring lists) as a Model whose ``forward`` runs ``handler`` around
    every Dense / Conv / Einsum op (same params, state, train / eval modes)."""
    base = _to_model(model)
    if isinstance(base.module, nnx.Module):
        if input_only:
            def full(layer, op, lhs, rhs):
                return op(handler(layer, None, lhs, None), rhs)
        else:
            full = handler
        hooked = jmodel.from_nnx(_nnx_hooked(base.module, full))
        if jax.tree.structure(hooked.params) != jax.tree.structure(base.params):
            raise ValueError(f"cannot intercept {type(base.module).__name__}: its params do not have the "
                             f"structure of nnx.split(module, nnx.Param, ...)")
        return base.replace(forward=hooked.forward)
    interceptor = _linen_interceptor(handler, input_only)
    forward = base.forward

    def hooked_forward(*args, **kwargs):
        with nn.intercept_methods(interceptor):
            return forward(*args, **kwargs)

    return base.replace(forward=hooked_forward)


def hooked_apply(model, handler, input_only: bool = False) -> Callable:
    """``apply_fn(params, x)`` (eval mode) of ``model`` with ``handler`` around every Dense/Conv/Einsum op.

    Args:
      model: a :class:`jaxcompress.model.Model` (linen or NNX, with its state), a
        zoo model, an ``nnx.Module``, or a linen ``apply_fn(params, x)``.
      handler: ``handler(layer, op, lhs, rhs) -> out``; with ``input_only`` it is called as
        ``handler(layer, None, x, None)`` and returns the new layer input.
      input_only: transform layer inputs instead of wrapping the operation.
    """
    return hooked_model(model, handler, input_only).apply_fn


def capture_inputs(model) -> Callable:
    """``fn(params, x) -> (logits, {layer: input})`` recording every quantizable layer's input."""

    def fn(params, x):
        rec = {}

        def handler(layer, op, lhs, rhs):
            rec[layer] = lhs
            return lhs

        logits = hooked_apply(model, handler, input_only=True)(params, x)
        return logits, rec

    return fn


def act_scale_zero_point(ranges, layer: str, lhs, spec: QuantSpec, bits=None):
    """Scale/zero point of a layer input: static from ``ranges[layer]`` or dynamic from ``lhs``."""
    if ranges is None:
        lo, hi = grid.minmax(jax.lax.stop_gradient(lhs), spec)
    else:
        if layer not in ranges:
            raise ValueError(f"no calibrated range for layer {layer!r}; calibrated layers: {sorted(ranges)}")
        lo, hi = ranges[layer]
    return grid.compute_scale_zero_point(lo, hi, spec, bits)


def quantize_activations(model, spec: QuantSpec = DEFAULT_ACT_SPEC, ranges: dict | None = None,
                         bits=None, skip: tuple[str, ...] = ()) -> Callable:
    """``apply_fn(params, x)`` with fake-quantized (straight-through) layer inputs.

    Args:
      model: see :func:`hooked_apply`.
      spec: activation quantizer (default 8-bit symmetric per-tensor).
      ranges: ``{layer: (min, max)}`` from :func:`..calibrate.calibrate`; ``None`` means dynamic
        per-batch min/max.
      bits: optional traced bit width.
      skip: layer names left in float.

    Raises:
      ValueError: (when traced) if the model has no intercepted layer at all: its
        activations would silently stay float.
    """

    def handler(layer, op, lhs, rhs):
        seen.append(layer)
        if layer in skip:
            return lhs
        s, z = act_scale_zero_point(ranges, layer, lhs, spec, bits)
        return fake.fake_quant(lhs, spec, s.astype(jnp.float32), z, bits)

    seen: list = []
    inner = hooked_apply(model, handler, input_only=True)

    def apply_fn(params, x):
        seen.clear()
        out = inner(params, x)
        if not seen:
            raise ValueError(f"quantize_activations: no nn.Dense / DenseGeneral / Conv / Einsum (linen) or nnx "
                             f"Linear / LinearGeneral / Conv / Einsum layer ran in {type(model).__name__}; its "
                             f"activations would stay float")
        return out

    return apply_fn
