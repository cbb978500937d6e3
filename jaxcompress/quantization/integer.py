"""Integer execution: int8 x int8 -> int32 ``dot_general`` / conv, then one float rescale.

* :func:`integer_apply` - inference from a converted artifact: every Dense/Conv layer
  quantizes its input with the calibrated static scale, multiplies the stored integer
  codes with ``preferred_element_type=int32`` and rescales by ``s_x * s_w``. It matches the
  fake-quantized model up to float rounding of the accumulation.
* :func:`int_qat_apply` - QAT whose forward matmul runs on integers (as Qwix does); a
  ``custom_vjp`` gives the straight-through backward with the float (fake-quantized)
  operands.

Both need symmetric quantizers and per-tensor or per-output-position weight scales whose
channel axes are the kernel's trailing axes (Dense ``out``, Conv ``O``, DenseGeneral
``(heads, head_dim)``): a zero point or per-group scales do not factor out of an integer matmul.

**Never silently float.** Both count the ops that ran on integers when traced
(``num_integer_ops``, ``integer_layers``) and raise a ``ValueError`` instead of running in
float: :func:`integer_apply` when a QArray of the artifact is not consumed by an integer op
(e.g. the artifact's paths do not match the model's layers, or the weight belongs to a linen
``nn.Einsum`` / a hand-written ``x @ w``), :func:`int_qat_apply` when no layer was
intercepted. The model may be a :class:`jaxcompress.model.Model` with state (a BatchNorm CNN
runs its Dense/Conv in int8 with its running statistics), and the artifact
:func:`..convert.convert` of its params or of its linen variables dict.

>>> import jax.numpy as jnp
>>> from jaxcompress import models
>>> from jaxcompress.quantization.convert import convert
>>> m = models.create("mlp", (4,), 3, features=(5,))
>>> f = integer_apply(m, convert(m.params))
>>> f(jnp.ones((2, 4))).shape, f.num_integer_ops, f.integer_layers
((2, 3), 2, ('Dense_0', 'Dense_1'))
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxcompress import tree as jtree
from jaxcompress.quantization import grid
from jaxcompress.quantization.activations import DEFAULT_ACT_SPEC, _to_model, act_scale_zero_point, hooked_model
from jaxcompress.quantization.convert import QArray, _is_variables, dequantize_tree
from jaxcompress.quantization.spec import QuantSpec, qrange

_WHY_FLOAT = ("only the kernels of linen nn.Dense / nn.DenseGeneral / nn.Conv and nnx Linear / LinearGeneral / "
              "Conv / Einsum run on integers (linen nn.Einsum and hand-written x @ w stay float): convert "
              "the model's own params (or its variables dict) with where= selecting those kernels")


def _check_int_specs(layer: str, w_spec: QuantSpec, a_spec: QuantSpec, w_shape):
    if not (w_spec.symmetric and a_spec.symmetric):
        raise ValueError(f"layer {layer!r}: the integer path needs symmetric weight and activation specs")
    if a_spec.granularity != "tensor":
        raise ValueError(f"layer {layer!r}: the integer path needs per-tensor activation scales")
    nd, axes = len(w_shape), w_spec.channel_axes(w_shape)
    if w_spec.granularity == "group" or axes != tuple(range(nd - len(axes), nd)):
        raise ValueError(f"layer {layer!r}: the integer path needs per-tensor or per-channel weight scales over "
                         f"the kernel's trailing (output) axes, got axis={w_spec.axis} for shape {tuple(w_shape)}")
    if max(w_spec.bits, a_spec.bits) > 8:
        raise ValueError(f"layer {layer!r}: the integer path supports at most 8 bits")


def _out_scale(layer, sx, sw, y_shape, w_shape):
    """``s_x * s_w`` broadcast to the op's output: the kernel's trailing channel axes are its trailing axes."""
    sw = jnp.asarray(sw, jnp.float32)
    k = next((i for i, n in enumerate(sw.shape) if n != 1), sw.ndim)  # first channel axis of the scale
    trail = tuple(w_shape[k:])
    if trail and tuple(y_shape[len(y_shape) - len(trail):]) != trail:
        raise ValueError(f"layer {layer!r}: the kernel's output axes {trail} are not the trailing axes of the "
                         f"op's output {tuple(y_shape)}; per-channel scales cannot be applied after the matmul")
    s = sx.reshape(()).astype(jnp.float32) * sw.reshape(trail)
    return s.reshape((1,) * (len(y_shape) - len(trail)) + trail)


def _int_op(layer, op, qx, qw, sx, sw):
    y = op(qx.astype(jnp.int8), qw.astype(jnp.int8), preferred_element_type=jnp.int32)
    return y.astype(jnp.float32) * _out_scale(layer, sx, sw, y.shape, qw.shape)


def _is_q(x) -> bool:
    return isinstance(x, QArray)


class IntegerFn:
    """A function whose Dense/Conv ops run on integers, with the count of those ops.

    Attributes:
      num_integer_ops: how many ops ran on integers in the latest trace (``None`` before the
        first call / :meth:`lower`).
      integer_layers: the layers those ops belong to, in call order (one entry per layer).
    """

    def __init__(self, fn: Callable, jit: bool):
        self._fn = fn
        self._call = jax.jit(fn) if jit else fn
        self.num_integer_ops: int | None = None
        self.integer_layers: tuple[str, ...] | None = None

    def _record(self, ops: list):
        self.num_integer_ops = len(ops)
        self.integer_layers = tuple(dict.fromkeys(ops))

    def __call__(self, *args):
        return self._call(*args)

    def lower(self, *args):
        """``jax.jit(fn).lower(*args)`` (e.g. to inspect the integer HLO)."""
        return jax.jit(self._fn).lower(*args)


def _split_artifact(base, artifact):
    """``(params, state)`` to run ``base`` with: the artifact's params and its other collections
    (a linen variables dict), or the artifact as params and the model's own state."""
    if base.params is None or not _is_variables(artifact, None) or "params" in base.params:
        return artifact, base.state
    params, state = artifact["params"], {k: v for k, v in artifact.items() if k != "params"}
    if state and (not isinstance(base.state, dict) or set(state) != set(base.state)):
        raise ValueError(f"the artifact holds collection(s) {sorted(state)} besides params, but the model's state "
                         f"has {sorted(base.state) if isinstance(base.state, dict) else type(base.state).__name__}; "
                         f"build the model with jaxcompress.model.from_linen(module, variables)")
    return params, (state or base.state)


def _check_params(base, params):
    if base.params is None:
        return
    got = [p for p, _ in jtree.named_leaves(params, is_leaf=_is_q)]
    want = jtree.paths(base.params)
    if got != want:
        diff = sorted(set(got) ^ set(want)) or [a for a, b in zip(got, want) if a != b]
        raise ValueError(f"the artifact's params do not match the model's params (differing paths {diff[:4]}); "
                         f"pass convert(model params) or convert(linen variables dict)")


def integer_apply(model, artifact, act_ranges: dict | None = None, act_spec: QuantSpec = DEFAULT_ACT_SPEC
                  ) -> IntegerFn:
    """``fn(x) -> outputs`` (eval mode, jitted) running every quantized Dense/Conv layer on integers.

    Args:
      model: a :class:`jaxcompress.model.Model` (linen or NNX; its state, e.g. BatchNorm
        running statistics, is used), a zoo model, an ``nnx.Module``
        or a linen ``apply_fn(params, x)``.
      artifact: :func:`..convert.convert` of the model's params or of its linen variables dict
        ``{"params", "batch_stats", ...}`` (then its collections are the state the model runs
        with); a layer's kernel ``f"{layer}/kernel"`` is a QArray.
      act_ranges: calibrated ``{layer: (min, max)}``; ``None`` means dynamic per-batch ranges.
      act_spec: activation quantizer (symmetric, per-tensor).

    Returns:
      An :class:`IntegerFn`; after its first call ``fn.num_integer_ops`` is the number of
      ops that ran on integers and ``fn.integer_layers`` their layers.

    Raises:
      ValueError: (at the first call) naming the QArrays no integer op consumed, when the
        artifact holds no QArray, or its params do not match the model's.
    """
    base = _to_model(model)
    params_art, state = _split_artifact(base, artifact)
    _check_params(base, params_art)
    # a plain apply_fn given a variables dict takes all of it: its layers find their kernels under params/
    prefix = "params/" if base.params is None and _is_variables(artifact, None) else ""
    tree = params_art["params"] if prefix else params_art
    qarrays = {prefix + p: x for p, x in jtree.named_leaves(tree, is_leaf=_is_q) if _is_q(x)}
    if not qarrays:
        raise ValueError("integer_apply: the artifact holds no QArray (nothing was converted): the model would "
                         "run entirely in float; pass jaxcompress.quantization.convert(params, ...)")
    bad = [p for p, x in jtree.named_leaves(state, is_leaf=_is_q) if _is_q(x)]
    if bad:
        raise ValueError(f"integer_apply: the artifact quantized non-param state {bad}; only params run on integers")
    params = dequantize_tree(params_art)
    ops: list = []

    def handler(layer, op, lhs, rhs):
        path = f"{prefix}{layer}/kernel"
        qa = qarrays.get(path)
        if qa is None:
            return op(lhs, rhs)
        if tuple(qa.shape) != tuple(rhs.shape):
            raise ValueError(f"layer {layer!r}: the QArray {path!r} has shape {qa.shape} but the layer's op "
                             f"consumes a kernel of shape {tuple(rhs.shape)}")
        _check_int_specs(layer, qa.spec, act_spec, qa.shape)
        sx, _ = act_scale_zero_point(act_ranges, layer, lhs, act_spec)
        qx = grid.quantize(lhs, act_spec, sx, jnp.zeros_like(sx))
        ops.append(layer)
        return _int_op(layer, op, qx, qa.codes(), sx, qa.scale).astype(lhs.dtype)

    hooked = hooked_model(base, handler)

    def run(x):
        ops.clear()
        out = hooked.apply_fn(params, x, state)
        done = {f"{prefix}{layer}/kernel" for layer in ops}
        missing = [p for p in qarrays if p not in done]
        if missing:
            raise ValueError(f"integer_apply: quantized weight(s) {missing} were not consumed by an integer op "
                             f"(integer ops ran for {sorted(set(ops))}); {_WHY_FLOAT}")
        fn._record(list(ops))
        return out

    fn = IntegerFn(run, jit=True)
    return fn


def int_qat_apply(model, weight_spec: QuantSpec = QuantSpec(), act_spec: QuantSpec = DEFAULT_ACT_SPEC,
                  act_ranges: dict | None = None, weight_bits=None, act_bits=None, layout: dict | None = None
                  ) -> IntegerFn:
    """``apply_fn(params, x)`` for w{b}a{b} QAT with integer forward matmuls and STE backward.

    Weight scales are the min/max scales of the current float weights (as in
    :func:`..transform.quantize_weights`), activation scales static (``act_ranges``) or dynamic.
    The backward pass is that of the float op on the fake-quantized operands, masked to the
    clipping ranges (straight-through estimator). ``weight_spec`` gets concrete axes per kernel
    ``f"{layer}/kernel"`` from ``layout`` (needed for kernels of ``ndim >= 3`` unless its axis is
    explicit or it is per-tensor).

    Returns:
      An :class:`IntegerFn` (not jitted: use it inside a train step); after it is traced,
      ``num_integer_ops`` counts the ops that ran on integers.

    Raises:
      ValueError: (when traced) if no layer ran on integers.
    """
    ops: list = []

    def handler(layer, op, lhs, rhs):
        w_spec = weight_spec.resolve(tuple(rhs.shape), f"{layer}/kernel", layout)
        _check_int_specs(layer, w_spec, act_spec, rhs.shape)
        sx, _ = act_scale_zero_point(act_ranges, layer, lhs, act_spec, act_bits)
        lo, hi = grid.minmax(jax.lax.stop_gradient(rhs), w_spec)
        sw, _ = grid.compute_scale_zero_point(lo, hi, w_spec, weight_bits)
        ops.append(layer)
        return _ste_int(layer, op, lhs, rhs, jax.lax.stop_gradient(sx), jax.lax.stop_gradient(sw), w_spec, act_spec,
                        weight_bits, act_bits)

    inner = hooked_model(model, handler).apply_fn

    def apply_fn(params, x):
        ops.clear()
        out = inner(params, x)
        if not ops:
            raise ValueError(f"int_qat_apply: no layer of {type(model).__name__} ran on integers; {_WHY_FLOAT}")
        fn._record(list(ops))
        return out

    fn = IntegerFn(apply_fn, jit=False)
    return fn


def _codes(x, spec, s, bits):
    qmin, qmax = qrange(spec, bits)
    v = grid.grouped(x, spec).astype(jnp.float32) / s
    return jnp.clip(jnp.floor(v + 0.5), qmin, qmax).reshape(x.shape), (v >= qmin) & (v <= qmax)


def _ste_int(layer, op, lhs, rhs, sx, sw, w_spec, a_spec, w_bits, a_bits):
    @jax.custom_vjp
    def f(lhs, rhs):
        return fwd(lhs, rhs)[0]

    def fwd(lhs, rhs):
        qx, in_x = _codes(lhs, a_spec, sx, a_bits)
        qw, in_w = _codes(rhs, w_spec, sw, w_bits)
        y = _int_op(layer, op, qx, qw, sx, sw).astype(lhs.dtype)
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
