"""One-shot compression of a BERT sentence encoder (:mod:`jaxcompress.models.bert`), layer by layer.

The methods of the MiniLM benchmark, each a function from float params to params that the same
:class:`~jaxcompress.models.bert.BertEncoder` runs:

* :func:`quantize_w8a8` - int8 per-channel weights x int8 activations (per token, dynamic; or
  per tensor, static, ranges from a calibration :mod:`~jaxcompress.quantization.observers`
  observer via :func:`calibrate_activation_scales`), int32 accumulation;
* :func:`quantize_weights` - weight-only round-to-nearest or GPTQ (per channel or per group),
  stored as packed 4-bit (or 8-bit) codes that the forward pass dequantizes;
* :func:`prune` - one-shot 2:4 or unstructured sparsity scored by magnitude or Wanda;
* :func:`make_student` / :func:`distill_student` - a shallower encoder initialised from chosen
  teacher layers, trained to match the teacher's sentence embeddings (cosine loss);
* :func:`artifact` / :func:`artifact_bytes` / :func:`save_artifact` / :func:`load_artifact` - the
  stored arrays of a compressed model (int8 embedding table, packed codes, sparse values + 2-bit
  positions or a bitmask), exactly decodable back to runnable params.

:func:`quantize_w8a8` and magnitude :func:`prune` are pure and jit-able; the calibrated methods
drive jit-compiled per-block programs from Python (one program per block shape, reused across
blocks and batches), so call them outside ``jit``.

GPTQ and Wanda calibrate *sequentially* (:func:`sequential`): the inputs of block ``l`` are
recorded on the model whose blocks ``< l`` are already compressed, as in both papers.

>>> import jax, jax.numpy as jnp
>>> from jaxcompress.models import bert
>>> m = bert.BertEncoder(bert.BertConfig(vocab_size=20, hidden_size=8, num_layers=2, num_heads=2,
...                                      intermediate_size=16, max_position=16))
>>> ids, mask = jnp.ones((2, 8), jnp.int32), jnp.ones((2, 8), jnp.int32)
>>> params = m.init(jax.random.key(0), ids, mask)["params"]
>>> p4 = quantize_weights(m, params, [(ids, mask)], method="gptq", bits=4, group_size=None)
>>> sorted(p4["layer_0"]["query"])
['bias', 'packed', 'scale', 'zero']
>>> sp, _ = prune(m, params, [(ids, mask)], score="wanda", nm=(2, 4))
>>> float(jnp.mean(sp["layer_1"]["output"]["kernel"] == 0))
0.5
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress import train, tree
from jaxcompress.distillation.feature_losses import cosine_loss
from jaxcompress.model import Model
from jaxcompress.models import bert
from jaxcompress.pruning import wanda
from jaxcompress.pruning.select import check_sparsity
from jaxcompress.quantization import gptq, grid
from jaxcompress.quantization.observers import OBSERVERS, make_observer
from jaxcompress.quantization.spec import QuantSpec
from jaxcompress.quantization.transform import weight_scale_zero_point

#: The linear layers of one block, and which captured input each one reads (q, k, v share one).
LINEARS = ("query", "key", "value", "attention_out", "intermediate", "output")
INPUT_OF = {"query": "query", "key": "query", "value": "query", "attention_out": "attention_out",
            "intermediate": "intermediate", "output": "output"}
W8 = QuantSpec(bits=8, symmetric=True, granularity="channel", narrow_range=True)
A8_TENSOR = QuantSpec(bits=8, symmetric=True, granularity="tensor", narrow_range=True)
ACTIVATIONS = ("token", "tensor")
SCORES = ("magnitude", "wanda")
METHODS = ("rtn", "gptq")

Batches = Sequence[tuple[np.ndarray, np.ndarray]]


def blocks(params) -> list[str]:
    """The block names ``layer_0 ... layer_{L-1}`` of a BERT params dict, in order."""
    names = [k for k in params if k.startswith("layer_")]
    return sorted(names, key=lambda k: int(k.split("_")[1]))


def _copy(params):
    return jax.tree.map(lambda x: x, params)


def _check_float(params, what: str) -> None:
    for b in blocks(params):
        for n in LINEARS:
            if "kernel" not in params[b][n]:
                raise ValueError(f"{what} needs float kernels, but {b}/{n} holds {sorted(params[b][n])} "
                                 "(already quantized); apply it to the float model or a pruned one")


def calibration_batches(tokenizer, sentences: Sequence[str], batch_size: int = 32, max_length: int = 64,
                        max_position: int = 512) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenize ``sentences`` into fixed-shape ``(ids, mask)`` batches (one compile for all)."""
    if not sentences:
        raise ValueError("calibration needs at least one sentence")
    ids, mask = bert.tokenize(tokenizer, list(sentences), max_length=max_length, max_position=max_position,
                              pad_to=max_length)
    return [(ids[i:i + batch_size], mask[i:i + batch_size]) for i in range(0, len(ids), batch_size)]


# ----------------------------------------------------------------------------- calibration


@functools.partial(jax.jit, static_argnums=(0, 4))
def _block_inputs(module, params, ids, mask, block):
    """Masked input rows of every distinct linear input of ``block``: ``{name: (tokens, in)}``."""
    _, st = module.apply({"params": params}, ids, mask, mutable=["inputs"])
    ins = st["inputs"][block]
    out = {}
    for name in set(INPUT_OF.values()):
        x = ins[name]["x"][0]
        out[name] = (x * mask.astype(x.dtype)[..., None]).reshape(-1, x.shape[-1])
    return out


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _block_stats(module, params, ids, mask, block, kind):
    xs = _block_inputs(module, params, ids, mask, block)
    if kind == "hessian":
        return {k: x.T @ x for k, x in xs.items()}
    return {k: wanda.input_sq_norms(x) for k, x in xs.items()}


def block_statistics(module, params, batches: Batches, block: str, kind: str) -> dict:
    """Statistics of the inputs of each linear layer of ``block`` over all calibration tokens.

    ``kind="hessian"``: GPTQ's ``H = 2 X^T X / n``; ``kind="sqnorm"``: Wanda's per-feature
    ``sum x^2`` (take ``sqrt`` for the norm). Padding tokens are excluded. Keys are the
    captured inputs (``query`` for q/k/v, ``attention_out``, ``intermediate``, ``output``).
    """
    if kind not in ("hessian", "sqnorm"):
        raise ValueError(f"kind must be 'hessian' or 'sqnorm', got {kind!r}")
    acc, n = None, 0.0
    for ids, mask in batches:
        s = _block_stats(module, params, jnp.asarray(ids), jnp.asarray(mask), block, kind)
        acc = s if acc is None else jax.tree.map(jnp.add, acc, s)
        n += float(np.sum(mask))
    if acc is None:
        raise ValueError("calibration needs at least one batch")
    return {k: 2.0 * v / max(n, 1.0) for k, v in acc.items()} if kind == "hessian" else acc


def sequential(module, params, batches: Batches, kind: str,
               compress_block: Callable[[str, dict, dict], dict]) -> dict:
    """Compress block after block: ``params[b] = compress_block(b, params[b], stats)``.

    The statistics of block ``b`` (:func:`block_statistics`) are measured on the model whose
    earlier blocks are already compressed. Returns a new params dict.
    """
    params = _copy(params)
    for b in blocks(params):
        params[b] = compress_block(b, params[b], block_statistics(module, params, batches, b, kind))
    return params


# ----------------------------------------------------------------------------- W8A8


def _w8(kernel):
    s, z = weight_scale_zero_point(kernel, W8)
    return grid.quantize(kernel, W8, s, z).astype(jnp.int8), s.astype(jnp.float32)


def calibrate_activation_scales(module, params, batches: Batches, observer: str = "minmax", **observer_kw) -> dict:
    """Static per-tensor int8 scales of every linear input: ``{block: {input_name: scale}}``.

    Each input's range comes from a :func:`~jaxcompress.quantization.observers.make_observer`
    observer (``minmax``, ``percentile``, ``mse``, ...) fed the (unpadded) tokens of all batches.
    """
    if observer not in OBSERVERS:
        raise ValueError(f"unknown observer {observer!r}; valid: {list(OBSERVERS)}")
    out = {}
    for b in blocks(params):
        obs = {k: make_observer(observer, A8_TENSOR, **observer_kw) for k in set(INPUT_OF.values())}
        states = {k: o.init() for k, o in obs.items()}
        for ids, mask in batches:
            xs = _block_inputs(module, params, jnp.asarray(ids), jnp.asarray(mask), b)
            keep = np.asarray(mask).reshape(-1).astype(bool)
            for k, o in obs.items():
                states[k] = o.update(states[k], xs[k][keep])
        out[b] = {}
        for k, o in obs.items():
            lo, hi = o.result(states[k])
            s, _ = grid.compute_scale_zero_point(lo, hi, A8_TENSOR)
            out[b][k] = jnp.reshape(s, ()).astype(jnp.float32)
    return out


def quantize_w8a8(params, activations: str = "token", act_scales: dict | None = None) -> dict:
    """Int8 per-channel weights for every linear layer (symmetric, narrow range) + int8 activations.

    Args:
      params: float BERT params (kernels may hold zeros from pruning).
      activations: ``"token"`` (dynamic, one scale per token, computed in the forward pass) or
        ``"tensor"`` (static, one calibrated scale per layer input: pass ``act_scales`` from
        :func:`calibrate_activation_scales`).
      act_scales: ``{block: {input_name: scale}}``, needed for ``"tensor"``.

    Returns:
      Params whose linear layers are ``{"qkernel", "scale", "bias"[, "act_scale"]}`` and whose
      word-embedding table is int8 with one scale per row (:func:`int8_embedding`).
    """
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if activations == "tensor" and act_scales is None:
        raise ValueError("activations='tensor' needs act_scales (see calibrate_activation_scales)")
    _check_float(params, "quantize_w8a8")
    p = _copy(params)
    for b in blocks(params):
        for n in LINEARS:
            q, s = _w8(params[b][n]["kernel"])
            p[b][n] = {"qkernel": q, "scale": s, "bias": params[b][n]["bias"]}
            if activations == "tensor":
                p[b][n]["act_scale"] = act_scales[b][INPUT_OF[n]]
    return int8_embedding(p)


def quantize_embedding_rows(e) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 codes of an embedding table with one float32 scale per row."""
    e = jnp.asarray(e, jnp.float32)
    s = jnp.maximum(jnp.max(jnp.abs(e), axis=1, keepdims=True), 1e-12) / 127.0
    return jnp.round(e / s).astype(jnp.int8), s


def int8_embedding(params) -> dict:
    """``params`` with the word-embedding table stored as int8 rows + one scale each (``{"q", "scale"}``)."""
    words = params["word_embeddings"]
    if "q" in words:
        return params
    q, s = quantize_embedding_rows(words["embedding"])
    return {**params, "word_embeddings": {"q": q, "scale": s}}


# ----------------------------------------------------------------------------- weight-only int4


def quantize_weights(module, params, batches: Batches | None = None, method: str = "gptq", bits: int = 4,
                     group_size: int | None = 128, damp: float = 0.01, int8_embeddings: bool = True) -> dict:
    """Weight-only quantization of every linear layer: round-to-nearest or GPTQ.

    The grid is asymmetric min-max per output channel (``group_size=None``) or per group of
    ``group_size`` input rows (see :mod:`jaxcompress.quantization.gptq`). GPTQ calibrates
    sequentially on ``batches``; RTN ignores them.

    Returns:
      Params whose linear layers are ``{"packed" (bits <= 4) | "codes", "scale", "zero", "bias"}``:
      the module unpacks and dequantizes them inside the forward pass.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    _check_float(params, "quantize_weights")
    for b in blocks(params):
        for n in LINEARS:
            try:
                gptq.check_args(params[b][n]["kernel"], group_size)
            except ValueError as e:
                raise ValueError(f"{e} of {b}/{n}") from None
    rtn = jax.jit(functools.partial(gptq.rtn, bits=bits, group_size=group_size))
    run_gptq = jax.jit(functools.partial(gptq.gptq, bits=bits, group_size=group_size, damp=damp))

    def stored(r: gptq.Quantized, bias):
        codes = {"packed": gptq.pack_int4(r.codes)} if bits <= 4 else {"codes": r.codes}
        return {**codes, "scale": r.scale, "zero": r.zero, "bias": bias}

    if method == "rtn":
        out = _copy(params)
        for b in blocks(params):
            out[b] = {**params[b], **{n: stored(rtn(params[b][n]["kernel"]), params[b][n]["bias"]) for n in LINEARS}}
    else:
        if not batches:
            raise ValueError("method='gptq' needs calibration batches")
        final = {}

        def block(b, pb, hs):  # the next block is calibrated on the dequantized kernels
            pb, final[b] = dict(pb), {}
            for n in LINEARS:
                r = run_gptq(pb[n]["kernel"], hs[INPUT_OF[n]])
                pb[n] = {"kernel": r.kernel, "bias": pb[n]["bias"]}
                final[b][n] = stored(r, pb[n]["bias"])
            return pb

        out = sequential(module, params, batches, "hessian", block)
        for b in blocks(out):
            out[b] = {**out[b], **final[b]}
    return int8_embedding(out) if int8_embeddings else out


# ----------------------------------------------------------------------------- pruning


def prune(module, params, batches: Batches | None = None, score: str = "wanda", sparsity: float = 0.5,
          nm: tuple[int, int] | None = None) -> tuple[dict, dict]:
    """One-shot pruning of every linear layer, no retraining (Wanda or magnitude scores).

    Weights compete within each output column (Wanda's comparison group): N:M keeps ``n`` of
    every ``m`` consecutive inputs, otherwise the top ``1 - sparsity`` of the column.

    Returns:
      ``(params, masks)``: kernels multiplied by their masks, and ``{(block, layer): mask}``.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if nm is None:
        check_sparsity(sparsity)  # a traced sparsity passes unchecked
    _check_float(params, "prune")
    masks = {}

    def block(b, pb, sq):
        pb = dict(pb)
        for n in LINEARS:
            norms = None if sq is None else jnp.sqrt(sq[INPUT_OF[n]])
            k, masks[(b, n)] = wanda.prune(pb[n]["kernel"], norms, sparsity=sparsity, nm=nm)
            pb[n] = {"kernel": k, "bias": pb[n]["bias"]}
        return pb

    if score == "magnitude":
        out = {k: (block(k, v, None) if k.startswith("layer_") else v) for k, v in params.items()}
    else:
        if not batches:
            raise ValueError("score='wanda' needs calibration batches")
        out = sequential(module, params, batches, "sqnorm", block)
    return out, masks


# ----------------------------------------------------------------------------- student


def make_student(module, params, teacher_layers: Sequence[int]) -> tuple[bert.BertEncoder, dict]:
    """A ``len(teacher_layers)``-block encoder whose block ``i`` starts as teacher block ``teacher_layers[i]``.

    Embeddings and the embedding LayerNorm are shared with the teacher.
    """
    n = module.config.num_layers
    if not teacher_layers or any(not 0 <= t < n for t in teacher_layers):
        raise ValueError(f"teacher_layers must be non-empty indices in [0, {n}), got {tuple(teacher_layers)}")
    cfg = module.config._replace(num_layers=len(teacher_layers))
    sp = {k: v for k, v in params.items() if not k.startswith("layer_")}
    for i, t in enumerate(teacher_layers):
        sp[f"layer_{i}"] = params[f"layer_{t}"]
    return bert.BertEncoder(cfg), _copy(sp)


def distill_student(module, params, ids: np.ndarray, mask: np.ndarray, teacher_embeddings: np.ndarray,
                    steps: int, batch_size: int = 32, lr: float = 2e-4, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> dict:
    """Train the blocks of a student encoder to reproduce the teacher's sentence embeddings.

    Loss: ``1 - cos(student, teacher)`` (= MSE / 2 on unit vectors), AdamW with warm-up and
    cosine decay; embeddings stay frozen. Batches are drawn with replacement from the
    tokenized ``(ids, mask)`` with a fixed-seed numpy generator. The step is the shared
    :func:`jaxcompress.train.make_train_step` on :func:`student_model` (the ``layer_*`` blocks
    are its params, the frozen embeddings its state), batch ``((ids, mask), teacher_embeddings)``.
    """
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if len(ids) != len(teacher_embeddings):
        raise ValueError(f"{len(ids)} token rows but {len(teacher_embeddings)} teacher embeddings")
    model = student_model(module, params)
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), steps), weight_decay=0.0)
    state = train.create_train_state(model, opt, seed=seed)
    step = train.make_train_step(model, opt, loss_fn=cosine_loss)
    rng = np.random.default_rng(seed)
    teacher_embeddings = np.asarray(teacher_embeddings, np.float32)
    t0 = time.time()
    for s in range(steps):
        idx = rng.integers(0, len(ids), batch_size)
        state, metrics = step(state, ((ids[idx], mask[idx]), teacher_embeddings[idx]))
        if log and (s % max(1, steps // 10) == 0 or s == steps - 1):
            log(f"  distill step {s} loss {float(metrics['loss']):.4f} ({time.time() - t0:.0f}s)")
    return {**model.state, **state.params}


def student_model(module, params) -> Model:
    """``module`` with ``params`` as a :class:`~jaxcompress.model.Model` that trains only the blocks.

    Its params are the ``layer_*`` blocks, its state the frozen rest (embeddings, their
    LayerNorm); inputs are ``(ids, mask)``.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcompress.models import bert
    >>> m = bert.BertEncoder(bert.BertConfig(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2,
    ...                                      intermediate_size=16, max_position=16))
    >>> ids = jnp.ones((2, 8), jnp.int32)
    >>> sm = student_model(m, m.init(jax.random.key(0), ids, ids)["params"])
    >>> sorted(sm.params), sm.apply_fn(sm.params, (ids, ids)).shape
    (['layer_0'], (2, 8))
    """
    trainable = {k: v for k, v in params.items() if k.startswith("layer_")}
    frozen = {k: v for k, v in params.items() if not k.startswith("layer_")}

    def forward(p, state, inputs, *, train: bool = False, rng=None):
        del train, rng  # the encoder has no dropout and no statistics
        ids, mask = inputs
        return module.apply({"params": {**state, **p}}, ids, mask), state

    return Model(forward, trainable, frozen, module)


# ----------------------------------------------------------------------------- stored artifact


def _nm_positions(nonzero: np.ndarray) -> np.ndarray | None:
    """2:4 positions (2 bits each, 4 bits per group of 4 inputs, packed 2 groups per byte) or None."""
    n_in, n_out = nonzero.shape
    if n_in % 4:
        return None
    g = nonzero.reshape(n_in // 4, 4, n_out).transpose(0, 2, 1).reshape(-1, 4)
    if g.sum(1).max() > 2:
        return None
    pos = np.sort(np.argsort(~g, axis=1, kind="stable")[:, :2], axis=1).astype(np.uint8)
    return np.asarray(gptq.pack_int4(jnp.asarray(pos[:, 0] | (pos[:, 1] << 2))))


def _nm_values(values: np.ndarray) -> np.ndarray:
    """The two stored values of every 2:4 group (in the order of :func:`_nm_positions`)."""
    n_in, n_out = values.shape
    g = values.reshape(n_in // 4, 4, n_out).transpose(0, 2, 1).reshape(-1, 4)
    pos = np.sort(np.argsort(g == 0, axis=1, kind="stable")[:, :2], axis=1)
    return np.take_along_axis(g, pos, axis=1)


def pack_kernel(values: np.ndarray) -> dict:
    """The smallest of three exact encodings of a 2-D kernel (float or int8); :func:`unpack_kernel` inverts it.

    ``{"values"}`` dense; ``{"nm_values", "nm_positions", "shape"}`` when every group of 4
    consecutive inputs of each output holds at most 2 non-zeros (2 values + two 2-bit positions
    per group); ``{"sparse_values", "bitmask", "shape"}`` (non-zeros in row-major order + 1 bit
    per entry).
    """
    values = np.asarray(values)
    nonzero = values != 0
    shape = np.asarray(values.shape, np.int32)
    options = [{"values": values}]
    pos = _nm_positions(nonzero)
    if pos is not None:
        options.append({"nm_values": _nm_values(values), "nm_positions": pos, "shape": shape})
    options.append({"sparse_values": values[nonzero], "bitmask": np.packbits(nonzero), "shape": shape})
    return min(options, key=lambda o: sum(a.nbytes for a in o.values()))


def unpack_kernel(enc: dict) -> np.ndarray:
    """The kernel that :func:`pack_kernel` encoded, exactly."""
    if "values" in enc:
        return np.asarray(enc["values"])
    n_in, n_out = (int(v) for v in enc["shape"])
    if "bitmask" in enc:
        mask = np.unpackbits(np.asarray(enc["bitmask"]))[: n_in * n_out].reshape(n_in, n_out).astype(bool)
        out = np.zeros((n_in, n_out), np.asarray(enc["sparse_values"]).dtype)
        out[mask] = enc["sparse_values"]
        return out
    vals = np.asarray(enc["nm_values"])
    c = np.asarray(gptq.unpack_int4(jnp.asarray(enc["nm_positions"]), (vals.shape[0],)))
    g = np.zeros((vals.shape[0], 4), vals.dtype)
    rows = np.arange(vals.shape[0])
    g[rows, c & 3] = vals[:, 0]
    g[rows, c >> 2] = vals[:, 1]
    return g.reshape(n_in // 4, n_out, 4).transpose(0, 2, 1).reshape(n_in, n_out)


def artifact(params) -> dict:
    """The arrays a compressed BERT is stored as (numpy; see :func:`artifact_bytes`).

    Linear layers: float or int8 kernels through :func:`pack_kernel` (+ float32 scales and the
    static activation scale if any), weight-only codes as stored (packed 4-bit + float32 scales +
    uint8 zero points); biases, LayerNorms and position tables float32. The word-embedding table
    is stored as the params hold it: int8 + one scale per row in every quantized variant
    (:func:`int8_embedding`), float32 otherwise.
    """
    out = {}
    for k, v in params.items():
        if k.startswith("layer_"):
            out[k] = {}
            for n, lp in v.items():
                lp = {a: np.asarray(b) for a, b in lp.items()}
                if n not in LINEARS:
                    out[k][n] = lp
                elif "kernel" in lp:
                    out[k][n] = {**pack_kernel(lp["kernel"]), "bias": lp["bias"]}
                elif "qkernel" in lp:
                    out[k][n] = {**pack_kernel(lp["qkernel"]), **{a: b for a, b in lp.items() if a != "qkernel"}}
                else:
                    out[k][n] = {**lp, "zero": lp["zero"].astype(np.uint8)}
        else:
            out[k] = jax.tree.map(np.asarray, v)
    return out


def from_artifact(art) -> dict:
    """The params (as :class:`~jaxcompress.models.bert.BertEncoder` runs them) stored in :func:`artifact`."""
    out = {}
    for k, v in art.items():
        if k.startswith("layer_"):
            out[k] = {}
            for n, e in v.items():
                if n not in LINEARS:
                    out[k][n] = {a: jnp.asarray(b) for a, b in e.items()}
                    continue
                rest = {a: jnp.asarray(b) for a, b in e.items() if a in ("bias", "scale", "act_scale", "packed", "codes")}
                if "zero" in e:
                    out[k][n] = {**rest, "zero": jnp.asarray(e["zero"], jnp.float32)}
                elif "scale" in e:
                    out[k][n] = {**rest, "qkernel": jnp.asarray(unpack_kernel(e))}
                else:
                    out[k][n] = {**rest, "kernel": jnp.asarray(unpack_kernel(e))}
        else:
            out[k] = jax.tree.map(jnp.asarray, v)
    return out


def save_artifact(path: str, params) -> int:
    """Write :func:`artifact` of ``params`` to ``path`` (an uncompressed ``.npz``, atomically); returns its bytes."""
    flat = {name: np.asarray(x) for name, x in tree.named_leaves(artifact(params))}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)
    return os.path.getsize(path)


def load_artifact(path: str) -> dict:
    """Params read back from a file written by :func:`save_artifact`."""
    art: dict = {}
    with np.load(path) as z:
        for key in z.files:
            node = art
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = z[key]
    return from_artifact(art)


def artifact_bytes(params, linear_only: bool = False) -> int:
    """Bytes of :func:`artifact` (``linear_only``: only the six linear layers of every block)."""
    art = artifact(params)
    if linear_only:
        art = {k: {n: v[n] for n in LINEARS} for k, v in art.items() if k.startswith("layer_")}
    return tree.nbytes(art)


__all__ = ["LINEARS", "INPUT_OF", "blocks", "calibration_batches", "block_statistics", "sequential",
           "calibrate_activation_scales", "quantize_w8a8", "int8_embedding", "quantize_embedding_rows",
           "quantize_weights", "prune", "make_student", "distill_student", "student_model", "pack_kernel", "unpack_kernel", "artifact",
           "from_artifact", "artifact_bytes", "save_artifact", "load_artifact"]
