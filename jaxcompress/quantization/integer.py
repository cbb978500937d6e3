"""Integer execution: int8 x int8 -> int32 ``dot_general`` / conv, then one float rescale.

* :func:`integer_apply` - inference from a converted artifact: every Dense/Conv layer
  quantizes its input with the calibrated static scale, multiplies the stored integer
  codes with ``preferred_element_type=int32`` and rescales by ``s_x * s_w``. It matches the
  fake-quantized model up to float rounding of the accumulation.
* :func:`int_qat_apply` - QAT whose forward matmul runs on integers (as Qwix does); a
  ``custom_vjp`` gives the straight-through backward with the float (fake-quantized)
  operands.

Both need symmetric quantizers and per-tensor or per-output-channel (last axis) weight
scales (a zero point or per-group scales do not factor out of an integer matmul).

>>> import jax.numpy as jnp
>>> from jaxcompress import models
>>> from jaxcompress.quantization.convert import convert
>>> m = models.create("mlp", (4,), 3, features=(5,))
>>> art = convert(m.params)
>>> integer_apply(m, art)(jnp.ones((2, 4))).shape
(2, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress import tree as jtree
from jaxcompress.quantization import grid
from jaxcompress.quantization.activations import DEFAULT_ACT_SPEC, act_scale_zero_point, hooked_apply
from jaxcompress.quantization.convert import QArray, dequantize_tree
from jaxcompress.quantization.spec import QuantSpec, qrange


def _check_int_specs(layer: str, w_spec: QuantSpec, a_spec: QuantSpec, w_shape):
    if not (w_spec.symmetric and a_spec.symmetric):
        raise ValueError(f"layer {layer!r}: the integer path needs symmetric weight and activation specs")
    if a_spec.granularity != "tensor":
        raise ValueError(f"layer {layer!r}: the integer path needs per-tensor activation scales")
    if w_spec.granularity == "group" or (w_spec.granularity == "channel" and w_spec.axis % len(w_shape) != len(w_shape) - 1):
        raise ValueError(f"layer {layer!r}: the integer path needs per-tensor or last-axis per-channel weight scales")
    if max(w_spec.bits, a_spec.bits) > 8:
        raise ValueError(f"layer {layer!r}: the integer path supports at most 8 bits")


def _out_scale(sx, sw, y_ndim: int):
    s = (sx.reshape(()) * sw.reshape(-1)).astype(jnp.float32)
    return s.reshape((1,) * (y_ndim - 1) + (s.shape[0],))


def _int_op(op, qx, qw, sx, sw):
    y = op(qx.astype(jnp.int8), qw.astype(jnp.int8), preferred_element_type=jnp.int32)
    return y.astype(jnp.float32) * _out_scale(sx, sw, y.ndim)


def integer_apply(model, artifact, act_ranges: dict | None = None, act_spec: QuantSpec = DEFAULT_ACT_SPEC):
    """``fn(x) -> logits`` running every quantized Dense/Conv layer on integers.

    Args:
      model: a :class:`jaxcompress.models.Model` (linen or NNX) or an ``nnx.Module``.
      artifact: :func:`..convert.convert` output (a layer's kernel ``f"{layer}/kernel"`` is a QArray).
      act_ranges: calibrated ``{layer: (min, max)}``; ``None`` means dynamic per-batch ranges.
      act_spec: activation quantizer (symmetric, per-tensor).
    """
    is_q = lambda x: isinstance(x, QArray)  # noqa: E731
    qarrays = {p: x for p, x in jtree.named_leaves(artifact, is_leaf=is_q) if is_q(x)}
    params = dequantize_tree(artifact)

    def handler(layer, op, lhs, rhs):
        qa = qarrays.get(f"{layer}/kernel")
        if qa is None:
            return op(lhs, rhs)
        _check_int_specs(layer, qa.spec, act_spec, qa.shape)
        sx, _ = act_scale_zero_point(act_ranges, layer, lhs, act_spec)
        qx = grid.quantize(lhs, act_spec, sx, jnp.zeros_like(sx))
        return _int_op(op, qx, qa.codes(), sx, qa.scale).astype(lhs.dtype)

    apply_fn = hooked_apply(model, handler)
    return jax.jit(lambda x: apply_fn(params, x))


def int_qat_apply(model, weight_spec: QuantSpec = QuantSpec(), act_spec: QuantSpec = DEFAULT_ACT_SPEC,
                  act_ranges: dict | None = None, weight_bits=None, act_bits=None):
    """``apply_fn(params, x)`` for w{b}a{b} QAT with integer forward matmuls and STE backward.

    Weight scales are the min/max scales of the current float weights (as in
    :func:`..transform.quantize_weights`), activation scales static (``act_ranges``) or dynamic.
    The backward pass is that of the float op on the fake-quantized operands, masked to the
    clipping ranges (straight-through estimator).
    """

    def handler(layer, op, lhs, rhs):
        _check_int_specs(layer, weight_spec, act_spec, rhs.shape)
        sx, _ = act_scale_zero_point(act_ranges, layer, lhs, act_spec, act_bits)
        lo, hi = grid.minmax(jax.lax.stop_gradient(rhs), weight_spec)
        sw, _ = grid.compute_scale_zero_point(lo, hi, weight_spec, weight_bits)
        return _ste_int(op, lhs, rhs, jax.lax.stop_gradient(sx), jax.lax.stop_gradient(sw), weight_spec, act_spec,
                        weight_bits, act_bits)

    return hooked_apply(model, handler)


def _codes(x, spec, s, bits):
    qmin, qmax = qrange(spec, bits)
    v = grid.grouped(x, spec).astype(jnp.float32) / s
    return jnp.clip(jnp.floor(v + 0.5), qmin, qmax).reshape(x.shape), (v >= qmin) & (v <= qmax)


def _ste_int(op, lhs, rhs, sx, sw, w_spec, a_spec, w_bits, a_bits):
    @jax.custom_vjp
    def f(lhs, rhs):
        return fwd(lhs, rhs)[0]

    def fwd(lhs, rhs):
        qx, in_x = _codes(lhs, a_spec, sx, a_bits)
        qw, in_w = _codes(rhs, w_spec, sw, w_bits)
        y = _int_op(op, qx, qw, sx, sw).astype(lhs.dtype)
        return y, (qx, qw, in_x.reshape(lhs.shape), in_w.reshape(rhs.shape))

    def bwd(res, g):
        qx, qw, in_x, in_w = res
        fx = (grid.grouped(qx, a_spec) * sx).reshape(qx.shape)
        fw = (grid.grouped(qw, w_spec) * sw).reshape(qw.shape)
        _, vjp = jax.vjp(lambda a, b: op(a, b), fx, fw)
        dx, dw = vjp(g.astype(jnp.float32))
        return jnp.where(in_x, dx, jnp.zeros_like(dx)), jnp.where(in_w, dw, jnp.zeros_like(dw))

    f.defvjp(fwd, bwd)
    return f(lhs, rhs)
