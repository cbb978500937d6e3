"""One-shot methods on the calibration engine, for any linen / NNX model: no model code, no ``sow``.

Every method takes a :class:`~jaxcompress.model.Model` and calibration inputs and returns a
:class:`Compressed`:

* ``params`` - float params the *same* model runs (dequantized, pruned or smoothed kernels);
* ``quantized`` - ``{path: QArray}``: the stored weights (codes, scale, zero point, ``in_scale``);
* ``masks`` - ``{path: bool array}``: the kept weights (to fine-tune with a fixed-mask pruning
  transform: ``jaxcompress.pruning.fixed``), empty for quantization-only methods;
* ``act_scales`` - ``{path: scalar}``: static per-tensor int8 scales of a weight's input (W8A8).

So "one-shot, then recover with KD or QAT" is two calls. Methods and what they read:

==============  ===========================================  ============================
method          what it does                                 statistics
==============  ===========================================  ============================
``rtn``         round-to-nearest (asymmetric min-max)        none
``gptq``        GPTQ (groups, act-order)                     ``X^T X``
``sparsegpt``   SparseGPT, unstructured or N:M (+ joint q)   ``X^T X``
``wanda``       ``|W| * ||X_j||``, per output                ``sum x^2``
``magnitude``   ``|W|``, per output                          none
``awq``         AWQ scale search + RTN                       ``X^T X``, ``mean |x|``
``smoothquant`` alpha-migration, static per-tensor W8A8      ``max |x|``
``w8a8``        int8 weights, static or per-token acts       ``min/max`` or samples
==============  ===========================================  ============================

Calibrated methods run :func:`.engine.sequential` (``blocks`` regex; ``None`` = one pass over
the whole model). Weights are the operands of the model's ``dot_general`` / ``conv`` ops
(:func:`jaxcompress.layout.trace`; embeddings and biases are never touched), optionally narrowed
by ``where(path) -> bool``. Each weight is solved in its canonical ``(K, N)`` view
(:func:`.capture.kernel_2d`), so Dense, DenseGeneral, ``x @ w``, einsum and conv kernels alike.
Per-group grids need a weight with one input axis; N:M groups run along the input-channel axis (a
``ValueError`` names any weight that does not fit).

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> from jaxcompress.model import from_linen
>>> net = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(8)])
>>> x = jax.random.normal(jax.random.key(0), (64, 16))
>>> m = from_linen(net, net.init(jax.random.key(1), x))
>>> r = gptq(m, [x], bits=4, group_size=8)
>>> sorted(r.quantized), r.quantized["layers_0/kernel"].spec.bits
(['layers_0/kernel', 'layers_2/kernel'], 4)
>>> s = sparsegpt(m, [x], nm=(2, 4))
>>> float(jnp.mean(s.params["layers_2"]["kernel"] == 0))
0.5
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import layout as layout_lib
from jaxcompress import tree as jtree
from jaxcompress.calibration import awq as awq_lib
from jaxcompress.calibration import capture, engine
from jaxcompress.calibration import gptq as gptq_lib
from jaxcompress.calibration import smoothquant as sq_lib
from jaxcompress.calibration import sparsegpt as sparsegpt_lib
from jaxcompress.interception import intercept
from jaxcompress.model import as_model
from jaxcompress.pruning import wanda as wanda_lib
from jaxcompress.quantization import grid
from jaxcompress.quantization.convert import QArray, dequantize_tree, from_codes, quantize_array
from jaxcompress.quantization.convert import load as load_tree
from jaxcompress.quantization.convert import save as save_tree
from jaxcompress.quantization.observers import OBSERVERS, make_observer
from jaxcompress.quantization.spec import QuantSpec

W8 = QuantSpec(bits=8, symmetric=True, granularity="channel", narrow_range=True)
A8 = QuantSpec(bits=8, symmetric=True, granularity="tensor", narrow_range=True)


class Compressed(NamedTuple):
    """What a one-shot method returns (see the module docstring)."""

    params: object
    quantized: dict
    masks: dict
    act_scales: dict

    def artifact(self):
        """``params`` with every quantized weight as its :class:`~jaxcompress.quantization.convert.QArray`."""
        return jtree.map_with_path(lambda p, w: self.quantized.get(p, w), self.params)

    def save(self, path: str) -> int:
        """Write :meth:`artifact` and ``act_scales`` to ``path`` (:func:`..quantization.convert.save`); returns bytes.

        Quantized weights are stored as their codes (bit-packed below 8 bits), other leaves as
        they are; the masks are not stored (a pruned weight's zeros are its mask).
        """
        tree = {"params": self.artifact()}
        if self.act_scales:
            tree["act_scales"] = {p.replace("/", "|"): jnp.asarray(v, jnp.float32) for p, v in self.act_scales.items()}
        return save_tree(path, tree)

    @staticmethod
    def load(path: str, like=None) -> "Compressed":
        """The :class:`Compressed` that :meth:`save` wrote (params dequantized, ``masks`` empty).

        ``like`` (the model's params, e.g. an ``nnx.State``) restores that exact structure;
        without it the params come back as nested dicts (a linen params dict).
        """
        tree = load_tree(path)
        if "params" not in tree:
            raise ValueError(f"{path}: not a saved Compressed (no 'params' entry)")
        art = tree["params"]
        if like is not None:
            flat = dict(jtree.named_leaves(art, is_leaf=_is_q))
            differ = set(jtree.paths(like)) ^ set(flat)
            if differ:
                raise ValueError(f"{path}: the stored params and `like` differ at {sorted(differ)[:5]}")
            art = jtree.map_with_path(lambda p, _: flat[p], like)
        quantized = {p: q for p, q in jtree.named_leaves(art, is_leaf=_is_q) if _is_q(q)}
        acts = {p.replace("|", "/"): v for p, v in tree.get("act_scales", {}).items()}
        return Compressed(dequantize_tree(art), quantized, {}, acts)


def _is_q(x) -> bool:
    return isinstance(x, QArray)


# ----------------------------------------------------------------------------- shared plumbing


def _setup(model, batches, where):
    model = as_model(model)
    batches = capture.check_batches(batches)
    lay = layout_lib.trace(model, batches[0])
    if where is not None:
        lay = {p: wl for p, wl in lay.items() if where(p)}
    if not lay:
        raise ValueError("the model has no weight operand of a dot_general / conv_general_dilated to compress "
                         "(or `where` excluded them all)")
    return model, batches, lay


def _qarray(path, codes2, scale2, zero2, wl, shape, bits, group_size, symmetric, narrow=False, in_scale=None):
    """A :class:`QArray` for the param at ``path`` from a canonical ``(K, N)`` solution."""
    out_axes = wl.outputs
    if group_size is None:
        spec = QuantSpec(bits=bits, symmetric=symmetric, granularity="channel",
                         axis=out_axes[0] if len(out_axes) == 1 else tuple(out_axes), narrow_range=narrow)
        sshape = spec.scale_shape(shape)
        scale = jnp.reshape(scale2, sshape)
        zero = jnp.reshape(zero2, sshape)
    else:
        (c,) = wl.inputs
        spec = QuantSpec(bits=bits, symmetric=symmetric, granularity="group", axis=out_axes[0] if len(out_axes) == 1
                         else tuple(out_axes), group_size=group_size, contraction_axis=c, narrow_range=narrow)
        # canonical (groups, 1, N) -> grouped view: axis c -> (groups, 1), outputs in place
        g = scale2.shape[0]
        src = (g, *[shape[a] for a in out_axes])  # (groups, outputs in axis order)
        order = sorted([c, *out_axes])
        perm = [0 if a == c else 1 + list(out_axes).index(a) for a in order]

        def place(v):
            t = jnp.transpose(jnp.reshape(v, src), perm)
            ci = order.index(c)
            return jnp.reshape(t, spec.scale_shape(shape)) if t.ndim == len(shape) + 1 else jnp.expand_dims(t, ci + 1)

        scale, zero = place(scale2), place(zero2)
    codes = capture.kernel_from_2d(codes2, wl, shape)
    ins = None
    if in_scale is not None:
        ones = tuple(1 if a in out_axes else n for a, n in enumerate(shape))
        ins = capture.kernel_from_2d(jnp.reshape(in_scale, (-1, 1)), wl._replace(), ones)
    return from_codes(codes, spec, scale, zero, ins)


def _check_groups(path, wl, group_size):
    if group_size is not None and len(wl.inputs) != 1:
        raise ValueError(f"group_size={group_size} needs a weight with one input axis; {path!r} has input axes "
                         f"{wl.inputs} (a conv or multi-axis projection): use group_size=None or exclude it with where=")


def _check_nm(path, wl, nm, shape):
    """N:M groups of the canonical view are ``m`` consecutive entries of the innermost input axis: they must be
    the layout's group axis (the input channels of a conv, ``head_dim`` of an out-projection) and ``m`` divide it."""
    if nm is None:
        return
    g = wl.group_axis
    if g != max(wl.inputs) or shape[g] % nm[1]:
        raise ValueError(f"nm={tuple(nm)} runs along the input-channel axis {g} of {path!r} (shape {tuple(shape)}, "
                         f"input axes {wl.inputs}): it must be the innermost input axis and divisible by {nm[1]}; "
                         f"use unstructured sparsity or exclude it with where=")


def _run(model, batches, lay, stats, solve, blocks, token_mask, carry, log):
    """Drive :func:`.engine.sequential`; ``solve(path, w2, wl, st) -> (new w2, extras)`` per weight."""
    extras: dict = {}

    def compress(name, bparams, st):
        prefix = name + "/" if name else ""
        out = {}
        for rel, s in st.items():
            path = prefix + rel
            if path not in lay:
                continue
            out[rel] = path
        if not out:
            return bparams

        def f(rel, w):
            if rel not in out:
                return w
            path = out[rel]
            wl = lay[path]
            w2, extras[path] = solve(path, capture.kernel_2d(w, wl), wl, st[rel], np.shape(w))
            return capture.kernel_from_2d(w2, wl, np.shape(w)).astype(w.dtype)

        return jtree.map_with_path(f, bparams)

    kinds = {} if not stats else stats
    params = engine.sequential(model, batches, compress, kinds, blocks=blocks, token_mask=token_mask,
                               where=lambda p: p in lay, carry=carry, log=log)
    return params, extras


def _direct(model, lay, solve):
    """Methods without statistics: solve every weight of ``lay`` in place."""
    extras: dict = {}

    def f(path, w):
        if path not in lay:
            return w
        wl = lay[path]
        w2, extras[path] = solve(path, capture.kernel_2d(w, wl), wl, {}, np.shape(w))
        return capture.kernel_from_2d(w2, wl, np.shape(w)).astype(w.dtype)

    return jtree.map_with_path(f, model.params), extras


def _quantized(extras, lay, bits, group_size, symmetric, narrow=False):
    return {p: _qarray(p, e["codes"], e["scale"], e["zero"], lay[p], e["shape"], bits, group_size, symmetric,
                       narrow, e.get("in_scale")) for p, e in extras.items()}


def _sol_extras(sol, shape, **more):
    return {"codes": sol.codes, "scale": sol.scale, "zero": sol.zero, "shape": shape, **more}


# ----------------------------------------------------------------------------- quantization


def rtn(model, batches: Sequence, *, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
        where: Callable | None = None) -> Compressed:
    """Round-to-nearest weight-only quantization (asymmetric min-max per channel or per group).

    ``batches`` are used only to trace the layout (one batch is enough).
    """
    model, batches, lay = _setup(model, batches[:1], where)
    fn = jax.jit(lambda w: gptq_lib.rtn(w, bits, group_size, symmetric))

    def solve(path, w2, wl, st, shape):
        _check_groups(path, wl, group_size)
        sol = fn(w2)
        return sol.kernel, _sol_extras(sol, shape)

    params, ex = _direct(model, lay, solve)
    return Compressed(params, _quantized(ex, lay, bits, group_size, symmetric), {}, {})


def gptq(model, batches: Sequence, *, bits: int = 4, group_size: int | None = 128, act_order: bool = False,
         damp: float = 0.01, symmetric: bool = False, blocks: str | None = None, token_mask: Callable | None = None,
         where: Callable | None = None, carry: bool = True, log=None) -> Compressed:
    """GPTQ (Frantar et al. 2023) on every weight, block by block (:func:`.gptq.gptq`)."""
    model, batches, lay = _setup(model, batches, where)
    fn = jax.jit(lambda w, h: gptq_lib.gptq(w, h, bits, group_size, damp, act_order=act_order, symmetric=symmetric))

    def solve(path, w2, wl, st, shape):
        _check_groups(path, wl, group_size)
        sol = fn(w2, st["hessian"])
        _check_h(path, st["hessian"], damp, sol.kernel)
        return sol.kernel, _sol_extras(sol, shape)

    params, ex = _run(model, batches, lay, ("hessian",), solve, blocks, token_mask, carry, log)
    return Compressed(params, _quantized(ex, lay, bits, group_size, symmetric), {}, {})


def _check_h(path, h, damp, kernel):
    """Raise naming ``path`` if ``h`` is non-finite or not positive definite after damping.

    The jitted solves return a NaN kernel then (:func:`.gptq.gptq`), so only a non-finite
    ``kernel`` pays for the diagnosis (:func:`.gptq.check_hessian` factorizes ``h`` again).
    """
    if np.isfinite(np.asarray(kernel)).all():
        return
    try:
        gptq_lib.check_hessian(h, damp)
    except ValueError as e:
        raise ValueError(f"weight {path!r}: {e}") from None


def awq(model, batches: Sequence, *, bits: int = 4, group_size: int | None = 128, n_grid: int = 20,
        symmetric: bool = False, blocks: str | None = None, token_mask: Callable | None = None,
        where: Callable | None = None, carry: bool = True, log=None) -> Compressed:
    """AWQ (Lin et al. 2024): per-input-channel scale search, then RTN of ``diag(s) W`` (:func:`.awq.awq`).

    The stored weight keeps ``in_scale = 1 / s``; ``params`` hold the effective kernel.
    """
    model, batches, lay = _setup(model, batches, where)
    fn = jax.jit(lambda w, h, a: awq_lib.awq(w, h, a, bits, group_size, n_grid, symmetric))

    def solve(path, w2, wl, st, shape):
        _check_groups(path, wl, group_size)
        sol, s = fn(w2, st["hessian"], st["absmean"])
        return sol.kernel, _sol_extras(sol, shape, in_scale=1.0 / s)

    params, ex = _run(model, batches, lay, ("hessian", "absmean"), solve, blocks, token_mask, carry, log)
    return Compressed(params, _quantized(ex, lay, bits, group_size, symmetric), {}, {})


def _w8(w2):
    spec = QuantSpec(bits=8, symmetric=True, granularity="channel", axis=1, narrow_range=True)
    s, z = grid.compute_scale_zero_point(*grid.minmax(w2, spec), spec)
    codes = grid.quantize(w2, spec, s, z)
    return grid.dequantize(codes, spec, s, z), codes, s, z


def smoothquant(model, batches: Sequence, *, alpha: float = 0.5, blocks: str | None = None,
                token_mask: Callable | None = None, where: Callable | None = None, carry: bool = True,
                log=None) -> Compressed:
    """SmoothQuant (Xiao et al. 2023) W8A8 with static per-tensor activation scales.

    Per weight: ``s = max|X_j|^alpha / max|W_j|^(1 - alpha)``; int8 per-channel codes of
    ``diag(s) W`` with ``in_scale = 1 / s``, and the static int8 scale of the smoothed input
    ``X / s`` in ``act_scales`` (a deployment folds ``1 / s`` into the op before; here the
    integer forward scales the input by it).
    """
    model, batches, lay = _setup(model, batches, where)

    @jax.jit
    def fn(w2, amax):
        s = sq_lib.smooth_factors(amax, w2, alpha)
        deq, codes, sc, z = _w8(w2 * s[:, None])
        return deq / s[:, None], codes, sc, z, s, sq_lib.static_act_scale(amax, s)

    def solve(path, w2, wl, st, shape):
        k, codes, sc, z, s, a = fn(w2, st["absmax"])
        return k, {"codes": codes, "scale": sc, "zero": z, "shape": shape, "in_scale": 1.0 / s, "act": a}

    params, ex = _run(model, batches, lay, ("absmax",), solve, blocks, token_mask, carry, log)
    return Compressed(params, _quantized(ex, lay, 8, None, True, narrow=True), {},
                      {p: e["act"] for p, e in ex.items()})


def w8a8(model, batches: Sequence, *, activations: str = "token", observer: str = "minmax",
         token_mask: Callable | None = None, where: Callable | None = None, **observer_kw) -> Compressed:
    """Int8 per-channel weights with int8 activations: ``"token"`` (dynamic, per row) or ``"tensor"``.

    ``"tensor"``: one static scale per weight input, from an observer (``minmax`` or the
    histogram observers ``percentile`` / ``mse`` / ``entropy``) over the calibration inputs of
    the float model (one pass, the weights do not change the inputs of later layers' ranges
    here: the float model's).
    """
    if activations not in ("token", "tensor"):
        raise ValueError(f"activations must be 'token' or 'tensor', got {activations!r}")
    if observer not in OBSERVERS:
        raise ValueError(f"unknown observer {observer!r}; valid: {list(OBSERVERS)}")
    model, batches, lay = _setup(model, batches, where)

    def solve(path, w2, wl, st, shape):
        deq, codes, s, z = jax.jit(_w8)(w2)
        return deq, {"codes": codes, "scale": s, "zero": z, "shape": shape}

    params, ex = _direct(model, lay, solve)
    acts = {}
    if activations == "tensor":
        kind = "minmax" if observer == "minmax" else "samples"
        st = capture.collect(model.apply_fn, model.params, batches, (kind,), token_mask=token_mask,
                             where=lambda p: p in lay)
        for p, v in st.items():
            if kind == "minmax":
                lo, hi = v["minmax"]
            else:
                # every captured sample (capture already bounds them per batch)
                obs = make_observer(observer, A8, **{"max_samples": max(1, v["samples"].size), **observer_kw})
                lo, hi = obs.result(obs.update(obs.init(), jnp.asarray(v["samples"])))
            acts[p] = jnp.reshape(grid.compute_scale_zero_point(lo, hi, A8)[0], ())
    return Compressed(params, _quantized(ex, lay, 8, None, True, narrow=True), {}, acts)


def embeddings(model, inputs, result: Compressed | None = None, *, bits: int = 8,
               where: Callable | None = None) -> Compressed:
    """Quantize every 2-D table the model reads by a gather (embeddings), one symmetric scale per row.

    Adds them to ``result`` (another method's output; default: the float model): ``params`` get
    the dequantized tables, ``quantized`` their :class:`QArray` s (``bits``, per row = axis 0).
    Tables that are also a matmul weight (tied embeddings) or already quantized are left alone;
    ``where(path) -> bool`` narrows the tables (e.g. only the word embeddings).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from jaxcompress.model import from_linen
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, ids):
    ...         return nn.Dense(2)(nn.Embed(10, 4)(ids))
    >>> ids = jnp.arange(6).reshape(2, 3)
    >>> net = Net(); m = from_linen(net, net.init(jax.random.key(0), ids))
    >>> r = embeddings(m, ids, rtn(m, [ids], group_size=None))
    >>> sorted(r.quantized)
    ['Dense_0/kernel', 'Embed_0/embedding']
    """
    model = as_model(model)
    result = result or Compressed(model.params, {}, {}, {})
    found: set = set()
    jax.eval_shape(intercept(model.apply_fn, lambda site, lhs, rhs, default: default(), on_trace=found.update),
                   result.params, inputs)
    lay = layout_lib.trace(model, inputs)
    spec = QuantSpec(bits=bits, symmetric=True, granularity="channel", axis=0, narrow_range=True)
    quantized = dict(result.quantized)
    leaves = dict(jtree.named_leaves(result.params))
    for p in sorted(found):
        if p in quantized or p in lay or np.ndim(leaves[p]) != 2 or (where is not None and not where(p)):
            continue
        quantized[p] = quantize_array(leaves[p], spec)
    params = jtree.map_with_path(lambda p, w: quantized[p].dequantize(w.dtype) if p in quantized and p in found
                                 and p not in result.quantized else w, result.params)
    return result._replace(params=params, quantized=quantized)


# ----------------------------------------------------------------------------- pruning


def _prune_result(params, ex):
    return Compressed(params, {}, {p: e["mask"] for p, e in ex.items()}, {})


def sparsegpt(model, batches: Sequence, *, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
              bits: int | None = None, group_size: int | None = None, damp: float = 0.01,
              blocks: str | None = None, token_mask: Callable | None = None, where: Callable | None = None,
              carry: bool = True, log=None) -> Compressed:
    """SparseGPT (Frantar & Alistarh 2023): OBS pruning with error feedback; ``bits`` adds joint quantization.

    ``nm=(n, m)`` keeps ``n`` of every ``m`` consecutive inputs; otherwise ``sparsity`` per output.
    """
    model, batches, lay = _setup(model, batches, where)
    fn = jax.jit(lambda w, h: sparsegpt_lib.sparsegpt(w, h, sparsity, nm, damp=damp, bits=bits, group_size=group_size))

    def solve(path, w2, wl, st, shape):
        _check_groups(path, wl, group_size)
        _check_nm(path, wl, nm, shape)
        sol = fn(w2, st["hessian"])
        _check_h(path, st["hessian"], damp, sol.kernel)
        e = {"mask": capture.kernel_from_2d(sol.mask, wl, shape)}
        if bits is not None:
            e.update(_sol_extras(sol, shape))
        return sol.kernel, e

    params, ex = _run(model, batches, lay, ("hessian",), solve, blocks, token_mask, carry, log)
    q = {} if bits is None else _quantized(ex, lay, bits, group_size, False)
    return Compressed(params, q, {p: e["mask"] for p, e in ex.items()}, {})


def _score_prune(w2, norms, sparsity, nm):
    k, mask = wanda_lib.prune(w2, norms, sparsity=sparsity, nm=nm)
    return k, mask


def wanda(model, batches: Sequence, *, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
          blocks: str | None = None, token_mask: Callable | None = None, where: Callable | None = None,
          carry: bool = True, log=None) -> Compressed:
    """Wanda (Sun et al. 2024): prune by ``|W_jo| * ||X_j||_2`` within each output (no weight update)."""
    model, batches, lay = _setup(model, batches, where)
    fn = jax.jit(lambda w, sq: _score_prune(w, jnp.sqrt(sq), sparsity, nm))

    def solve(path, w2, wl, st, shape):
        _check_nm(path, wl, nm, shape)
        k, mask = fn(w2, st["sqnorm"])
        return k, {"mask": capture.kernel_from_2d(mask, wl, shape)}

    params, ex = _run(model, batches, lay, ("sqnorm",), solve, blocks, token_mask, carry, log)
    return _prune_result(params, ex)


def magnitude(model, batches: Sequence, *, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
              where: Callable | None = None) -> Compressed:
    """One-shot magnitude pruning within each output (Wanda's comparison group with unit norms)."""
    model, batches, lay = _setup(model, batches[:1], where)
    fn = jax.jit(lambda w: _score_prune(w, None, sparsity, nm))

    def solve(path, w2, wl, st, shape):
        _check_nm(path, wl, nm, shape)
        k, mask = fn(w2)
        return k, {"mask": capture.kernel_from_2d(mask, wl, shape)}

    params, ex = _direct(model, lay, solve)
    return _prune_result(params, ex)


# ----------------------------------------------------------------------------- running W8A8 on integers


def integer_apply(model, result: Compressed, *, activations: str | None = None) -> Callable:
    """``fn(params, inputs)`` (jit-able) running every int8 weight of ``result`` as int8 x int8 -> int32.

    Inputs of a weight are quantized with its static scale (``result.act_scales``) or, with
    ``activations="token"``, per row (one scale per token over the contracted axes). A weight's
    ``in_scale`` multiplies its input first (SmoothQuant). ``params`` are the float params to run
    the rest of the model with (``result.params``). Weights of more than 8 bits, non-symmetric or
    per-group grids, and convolutions raise ``ValueError``.
    """
    model = as_model(model)
    qs = result.quantized
    if activations not in (None, "token"):
        raise ValueError(f"activations must be None (static scales) or 'token', got {activations!r}")

    def hook(site, lhs, rhs, default):
        q: QArray | None = qs.get(site.path)
        if q is None:
            return default()
        if site.op != "dot_general" or not q.spec.symmetric or q.spec.granularity == "group" or q.spec.bits > 8:
            raise ValueError(f"weight {site.path!r}: the integer path needs a dot_general with symmetric per-channel "
                             f"int8 codes (got op {site.op}, {q.spec})")
        x = rhs if site.weight == 0 else lhs
        (lc, rc), _ = site.params["dimension_numbers"]
        xc = rc if site.weight == 0 else lc
        wc = lc if site.weight == 0 else rc
        codes = jnp.transpose(q.codes(), site.perm)  # operand orientation
        if q.in_scale is not None:
            ins = jnp.transpose(q.in_scale, site.perm)
            # move the weight's contracted axes' factors onto the activation's contracted axes
            vec = jnp.squeeze(ins, [a for a in range(ins.ndim) if a not in wc])
            shape = [1] * x.ndim
            for xa, wa in zip(xc, wc):
                shape[xa] = x.shape[xa]
            order = [wa for _, wa in sorted(zip(xc, wc))]
            vec = jnp.transpose(vec.reshape([ins.shape[a] for a in sorted(wc)]), [sorted(wc).index(a) for a in order])
            x = x * vec.reshape(shape)
        if site.path in result.act_scales and activations is None:
            sx = result.act_scales[site.path]
        elif activations == "token":
            sx = jnp.maximum(jnp.max(jnp.abs(x), axis=tuple(xc), keepdims=True), 1e-8) / 127.0
        else:
            raise ValueError(f"weight {site.path!r} has no static activation scale; pass activations='token'")
        xq = jnp.clip(grid._round(x / sx, A8, None), -127, 127).astype(jnp.int8)
        a, b = (codes.astype(jnp.int8), xq) if site.weight == 0 else (xq, codes.astype(jnp.int8))
        acc = jax.lax.dot_general(a, b, site.params["dimension_numbers"], preferred_element_type=jnp.int32)
        sw = jnp.transpose(q.scale, site.perm)
        sw = jnp.squeeze(sw, tuple(wc))  # the weight's free axes, in operand order
        nx_free = x.ndim - len(xc)
        if site.weight == 1:
            sws = sw.reshape((1,) * nx_free + sw.shape)
            sxs = sx if np.ndim(sx) == 0 else jnp.squeeze(sx, tuple(xc)).reshape(sx.shape[:0] + tuple(
                x.shape[a] for a in range(x.ndim) if a not in xc) + (1,) * sw.ndim)
        else:
            sws = sw.reshape(sw.shape + (1,) * nx_free)
            sxs = sx if np.ndim(sx) == 0 else jnp.squeeze(sx, tuple(xc)).reshape((1,) * sw.ndim + tuple(
                x.shape[a] for a in range(x.ndim) if a not in xc))
        return (acc.astype(jnp.float32) * sxs * sws).astype(lhs.dtype if site.weight == 1 else rhs.dtype)

    return intercept(model.apply_fn, hook)


__all__ = ["Compressed", "embeddings", "rtn", "gptq", "awq", "smoothquant", "w8a8", "sparsegpt", "wanda", "magnitude",
           "integer_apply"]
