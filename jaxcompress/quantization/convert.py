"""Real integer arrays: :class:`QArray`, conversion of a params tree, packed int4, save/load.

``convert`` turns the selected float weights into ``QArray`` s (integer codes + float32
scales + zero points) using exactly the scales of :func:`..transform.quantize_weights`
(the same ``spec`` / ``where`` / ``layout`` give the same grid; a QArray's ``spec`` has
concrete axes);
codes of 4 bits or fewer are packed two per byte (2 bits: four per byte). ``save`` writes
an ``.npz`` (no pickle) whose ``__meta__`` entry is JSON; ``load`` reads it back bit-exactly.

>>> import jax.numpy as jnp
>>> from jaxcompress.quantization.spec import QuantSpec
>>> art = convert({"d": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}, QuantSpec(bits=4))
>>> art["d"]["kernel"].values.dtype, art["d"]["kernel"].values.shape
(dtype('uint8'), (4,))
>>> dequantize_tree(art)["d"]["kernel"].tolist()
[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
>>> v = {"params": {"d": {"kernel": jnp.ones((4, 2))}}, "batch_stats": {"bn": {"mean": jnp.zeros(2)}}}
>>> art = convert(v, QuantSpec(bits=8))                    # a linen variables dict: params converted
>>> type(art["params"]["d"]["kernel"]).__name__, type(art["batch_stats"]["bn"]["mean"]).__name__
('QArray', 'ArrayImpl')

Sparsity encoding (``save``): every float leaf and the codes of every QArray that are not
bit-packed (int8 / int16) are stored either dense or, when that makes the file smaller, as
``{nonzero values, bitmask}``: the entries whose bits are not all zero in row-major order
(``-0.0`` counts as non-zero, so the round trip is bit-exact) plus ``np.packbits`` of the
flattened non-zero mask (1 bit per entry). A pruned kernel (50 % unstructured or 2:4) thus
costs about ``(1 - sparsity) + 1/(8 * itemsize)`` of its dense bytes (zeros of an asymmetric grid
are the code ``zero_point``, not 0, so there only symmetric codes shrink). Packed (<= 4-bit)
codes, scales, zero points and ``in_scale`` are stored as they are. ``__meta__`` records per
leaf the encoding, shape and dtype (``"enc": "dense" | "bitmask"``; for a QArray under
``"values"``); a dtype the ``.npy`` format does not keep (bfloat16) is stored as its bits;
``load`` checks them against the stored arrays and raises ``ValueError`` naming the file and
the leaf for a missing array or a disagreeing shape. Files written without this record
(all dense) still load.

>>> import os, tempfile
>>> w = jnp.where(jnp.arange(64 * 64).reshape(64, 64) % 2 == 0, 1.5, 0.0)   # 50 % zeros
>>> d = tempfile.mkdtemp()
>>> sparse_bytes = save(os.path.join(d, "s.npz"), {"d": {"kernel": w}})
>>> dense_bytes = save(os.path.join(d, "f.npz"), {"d": {"kernel": w}}, sparse=False)
>>> sparse_bytes < 0.6 * dense_bytes
True
>>> back = load(os.path.join(d, "s.npz"))["d"]["kernel"]
>>> bool((back == w).all()), back.dtype, back.shape
(True, dtype('float32'), (64, 64))
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import tree as jtree
from jaxcompress.quantization import grid
from jaxcompress.quantization.spec import QuantSpec, storage_dtype
from jaxcompress.quantization.transform import resolve_specs, weight_scale_zero_point


def _per_byte(bits: int) -> int:
    return 4 if bits <= 2 else 2 if bits <= 4 else 1


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack signed codes of ``bits <= 4`` into uint8 (2 per byte; 4 per byte for 2 bits), flattened."""
    per = _per_byte(bits)
    width = 8 // per
    flat = np.asarray(q).astype(np.int64).reshape(-1)
    pad = (-flat.size) % per
    u = (np.concatenate([flat, np.zeros(pad, np.int64)]) & ((1 << width) - 1)).reshape(-1, per)
    out = np.zeros(u.shape[0], np.int64)
    for k in range(per):
        out |= u[:, k] << (k * width)
    return out.astype(np.uint8)


def unpack(packed, bits: int, shape) -> jax.Array:
    """Inverse of :func:`pack`: int8 codes of ``shape`` (jit-able)."""
    per = _per_byte(bits)
    width = 8 // per
    b = jnp.asarray(packed).astype(jnp.int32)
    parts = [(b >> (k * width)) & ((1 << width) - 1) for k in range(per)]
    u = jnp.stack(parts, axis=1).reshape(-1)
    half = 1 << (width - 1)
    signed = (u ^ half) - half
    n = int(np.prod(shape))
    return signed[:n].reshape(shape).astype(jnp.int8)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """The one quantized-weight type: integer codes, scale, zero point, and what they mean.

    Attributes:
      values: the signed codes of ``spec`` (``grid.quantize``), packed by :func:`pack` if ``packed``.
      scale, zero_point: ``spec.scale_shape(shape)`` (per tensor, per output position or per group).
      shape: the weight's shape. spec: the grid (bits, symmetric, granularity, axes, group size).
      packed: codes of 4 bits or fewer stored 2 (or 4) per byte.
      in_scale: optional per-input-channel factor (shape broadcastable to ``shape``, 1 on the output
        axes): the weight is ``dequantize(codes) * in_scale``. AWQ and SmoothQuant quantize
        ``diag(s) W`` and store ``in_scale = 1 / s`` (an integer kernel scales its input by it).
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    spec: QuantSpec = dataclasses.field(metadata=dict(static=True))
    packed: bool = dataclasses.field(metadata=dict(static=True))
    in_scale: jax.Array | None = None

    def codes(self) -> jax.Array:
        """The integer codes in the array's shape (int8/int16)."""
        if self.packed:
            return unpack(self.values, self.spec.bits, self.shape)
        return jnp.asarray(self.values).reshape(self.shape)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        w = grid.dequantize(self.codes(), self.spec, self.scale, self.zero_point, jnp.float32)
        return (w if self.in_scale is None else w * self.in_scale).astype(dtype)

    @property
    def nbytes(self) -> int:
        z = 0 if self.spec.symmetric else self.zero_point.size * self.zero_point.dtype.itemsize
        extra = 0 if self.in_scale is None else self.in_scale.size * 4
        return int(self.values.size * self.values.dtype.itemsize + self.scale.size * 4 + z + extra)


def _is_q(x) -> bool:
    return isinstance(x, QArray)


def quantize_array(w, spec: QuantSpec, scale=None, zero_point=None, observer: str = "minmax") -> QArray:
    """One array to a :class:`QArray` (scales from ``observer`` unless given)."""
    if scale is None:
        scale, zero_point = weight_scale_zero_point(w, spec, None, observer)
    if zero_point is None:
        zero_point = jnp.zeros_like(scale)
    return from_codes(grid.quantize(w, spec, scale, zero_point), spec, scale, zero_point)


def from_codes(codes, spec: QuantSpec, scale, zero_point, in_scale=None) -> QArray:
    """A :class:`QArray` of given signed ``codes`` (the weight's shape) on the grid ``(spec, scale, zero_point)``.

    The one constructor: codes of ``bits <= 4`` are packed (:func:`pack`), others stored as int8/int16.
    """
    q = np.asarray(codes)
    vals = pack(q, spec.bits) if spec.bits <= 4 else q.astype(storage_dtype(spec.bits))
    zp = np.asarray(zero_point, np.float32).astype(storage_dtype(spec.bits))
    return QArray(jnp.asarray(vals), jnp.asarray(scale, jnp.float32), jnp.asarray(zp), tuple(q.shape), spec,
                  spec.bits <= 4, None if in_scale is None else jnp.asarray(in_scale, jnp.float32))


def _is_variables(tree, layout) -> bool:
    """A linen variables dict ``{"params": ..., "batch_stats": ...}`` (not a params dict)."""
    if not (isinstance(tree, dict) and isinstance(tree.get("params"), dict)):
        return False
    return layout is None or not any(p == "params" or p.startswith("params/") for p in layout)


def convert(params, spec: QuantSpec | None = None, where=None, overrides=None, observer: str = "minmax",
            scales: dict | None = None, layout: dict | None = None):
    """Replace the selected leaves of ``params`` by :class:`QArray` s (others unchanged).

    Args:
      params: float params (linen dict or ``nnx.State``), e.g. after QAT; or a linen variables
        dict ``{"params": ..., "batch_stats": ...}``, whose ``params`` are converted (paths,
        ``where``, ``overrides`` and ``layout`` relative to them) and other collections kept.
      spec, where, overrides, observer, layout: as in :func:`..transform.quantize_weights`.
      scales: optional ``{path: scale}`` (e.g. LSQ's learned ``lsq_scales``).
    """
    if _is_variables(params, layout):
        return {**params, "params": convert(params["params"], spec, where, overrides, observer, scales, layout)}
    spec = spec or QuantSpec()
    specs = resolve_specs(params, spec, where, overrides, layout)

    def f(path, w):
        if path not in specs:
            return w
        s = None if scales is None or path not in scales else jnp.abs(scales[path]) + grid.TINY
        return quantize_array(w, specs[path], s, None, observer)

    return jtree.map_with_path(f, params)


def dequantize_tree(artifact):
    """Float params with every :class:`QArray` dequantized."""
    return jax.tree.map(lambda x: x.dequantize() if _is_q(x) else x, artifact, is_leaf=_is_q)


def _spec_dict(s: QuantSpec) -> dict:
    return dataclasses.asdict(s)


_MEMBER_BYTES = 232  # what one more array costs in an .npz beyond its data and 2x its name (zip64 + npy header)


def _member_bytes(key: str) -> int:
    return _MEMBER_BYTES + 2 * len(key + ".npy")


def _storable(a: np.ndarray) -> np.ndarray:
    """``a`` itself if the .npy format keeps its dtype, else its bits as unsigned ints (e.g. bfloat16)."""
    fmt = np.lib.format
    if a.dtype.kind == "V" or fmt.descr_to_dtype(fmt.dtype_to_descr(a.dtype)) != a.dtype:
        return a.view(np.dtype(f"u{a.dtype.itemsize}"))
    return a


def _nonzero_mask(a: np.ndarray) -> np.ndarray | None:
    """Flat mask of the entries whose bits are not all zero (``-0.0`` is non-zero); ``None`` if not viewable."""
    if a.dtype.itemsize not in (1, 2, 4, 8) or a.dtype.kind == "O" or a.dtype.fields is not None:
        return None
    return np.ascontiguousarray(a).reshape(-1).view(np.dtype(f"u{a.dtype.itemsize}")) != 0


def _put(arrays: dict, key: str, a, sparse: bool) -> dict:
    """Store ``a`` under ``key`` dense or as ``key::nz`` + ``key::mask`` (whichever file is smaller); its meta."""
    a = np.asarray(a)
    meta = {"enc": "dense", "shape": list(a.shape), "dtype": str(a.dtype)}
    mask = _nonzero_mask(a) if sparse else None
    if mask is not None:
        nz, bits = a.reshape(-1)[mask], np.packbits(mask)
        cost = nz.nbytes + bits.nbytes + _member_bytes(key + "::nz") + _member_bytes(key + "::mask") + 2
        if cost < a.nbytes + _member_bytes(key):
            arrays[key + "::nz"], arrays[key + "::mask"] = _storable(nz), bits
            return {**meta, "enc": "bitmask"}
    arrays[key] = _storable(a)
    return meta


def _fail(path: str, leaf: str, msg: str):
    raise ValueError(f"{path}: leaf {leaf!r}: {msg}")


def _read(z, path: str, leaf: str, key: str) -> np.ndarray:
    if key not in z.files:
        _fail(path, leaf, f"array {key!r} is missing from the file")
    return z[key]


def _as_dtype(a: np.ndarray, dtype, path: str, leaf: str, key: str) -> np.ndarray:
    if dtype is None or a.dtype == dtype:
        return a
    if a.dtype == _storable(np.empty(0, dtype)).dtype or a.dtype.kind == "V" and a.dtype.itemsize == dtype.itemsize:
        return a.view(dtype)  # stored as its bits (a dtype the .npy format does not keep, e.g. bfloat16)
    _fail(path, leaf, f"header dtype {dtype} but stored {key!r} has dtype {a.dtype}")


def _get(z, path: str, leaf: str, key: str, m: dict | None) -> np.ndarray:
    """The array :func:`_put` stored under ``key`` with meta ``m`` (``None``: an old, plain dense entry)."""
    m = m or {"enc": "dense"}
    dtype = np.dtype(m["dtype"]) if "dtype" in m else None
    shape = tuple(m["shape"]) if "shape" in m else None
    if m["enc"] == "dense":
        a = _as_dtype(_read(z, path, leaf, key), dtype, path, leaf, key)
        if shape is not None and a.shape != shape:
            _fail(path, leaf, f"header shape {shape} but stored {key!r} has shape {a.shape}")
        return a
    if m["enc"] != "bitmask":
        _fail(path, leaf, f"unknown encoding {m['enc']!r}")
    nz = _as_dtype(_read(z, path, leaf, key + "::nz"), dtype, path, leaf, key + "::nz")
    bits = _read(z, path, leaf, key + "::mask")
    n = int(np.prod(shape))
    if bits.dtype != np.uint8 or bits.shape != (-(-n // 8),):
        _fail(path, leaf, f"header shape {shape} ({n} entries) needs a uint8 bitmask of {-(-n // 8)} bytes, "
                          f"stored {key + '::mask'!r} has shape {bits.shape} and dtype {bits.dtype}")
    mask = np.unpackbits(bits, count=n).astype(bool)
    if nz.ndim != 1 or nz.size != int(mask.sum()):
        _fail(path, leaf, f"bitmask marks {int(mask.sum())} non-zeros but stored {key + '::nz'!r} has shape {nz.shape}")
    out = np.zeros(n, nz.dtype)
    out[mask] = nz
    return out.reshape(shape)


def save(path: str, artifact, *, sparse: bool = True) -> int:
    """Write ``artifact`` to ``path`` (``.npz``, no pickle); returns the file size in bytes.

    ``sparse``: store float leaves and unpacked QArray codes as non-zero values + bitmask where
    that is smaller (the module docstring); ``False`` stores everything dense.
    """
    arrays, meta = {}, {}
    for p, x in jtree.named_leaves(artifact, is_leaf=_is_q):
        if _is_q(x):
            vm = _put(arrays, p + "::values", x.values, sparse and not x.packed)
            arrays[p + "::scale"] = np.asarray(x.scale)
            if not x.spec.symmetric:
                arrays[p + "::zero_point"] = np.asarray(x.zero_point)
            if x.in_scale is not None:
                arrays[p + "::in_scale"] = np.asarray(x.in_scale)
            meta[p] = {"kind": "q", "shape": list(x.shape), "spec": _spec_dict(x.spec), "packed": x.packed,
                       "zp_shape": list(x.zero_point.shape), "zp_dtype": str(np.asarray(x.zero_point).dtype),
                       "values": vm}
        else:
            meta[p] = {"kind": "f", **_put(arrays, p, x, sparse)}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return os.path.getsize(path)


def _load_q(z, path: str, p: str, m: dict) -> QArray:
    spec = QuantSpec(**m["spec"])
    shape = tuple(m["shape"])
    vals = _get(z, path, p, p + "::values", m.get("values"))
    n = int(np.prod(shape))
    want = -(-n // _per_byte(spec.bits)) if m["packed"] else n
    if vals.size != want:
        _fail(path, p, f"header shape {shape} ({'packed ' if m['packed'] else ''}{want} codes) but stored "
                       f"{p + '::values'!r} has shape {vals.shape}")
    zp_shape = tuple(m["zp_shape"])
    if spec.symmetric and p + "::zero_point" not in z.files:
        zp = jnp.zeros(zp_shape, m["zp_dtype"])
    else:
        zp = _read(z, path, p, p + "::zero_point")
        if zp.shape != zp_shape:
            _fail(path, p, f"header zero-point shape {zp_shape} but stored {p + '::zero_point'!r} has shape {zp.shape}")
        zp = jnp.asarray(zp)
    ins = jnp.asarray(z[p + "::in_scale"]) if p + "::in_scale" in z.files else None
    return QArray(jnp.asarray(vals), jnp.asarray(_read(z, path, p, p + "::scale")), zp, shape, spec, m["packed"], ins)


def load(path: str, like=None):
    """Read a :func:`save` d artifact; ``like`` (a params tree) restores its exact structure.

    Raises ``ValueError`` (naming ``path`` and the leaf) when an array the header lists is
    missing or its stored shape disagrees with the header.
    """
    with np.load(path, allow_pickle=False) as z:
        if "__meta__" not in z.files:
            raise ValueError(f"{path}: no '__meta__' entry (not written by jaxcompress.quantization.save)")
        meta = json.loads(bytes(z["__meta__"]).decode())
        flat = {}
        for p, m in meta.items():
            if m["kind"] == "f":
                flat[p] = jnp.asarray(_get(z, path, p, p, m if "enc" in m else None))
            else:
                flat[p] = _load_q(z, path, p, m)
    if like is not None:
        missing = set(jtree.paths(like)) ^ set(flat)
        if missing:
            raise ValueError(f"artifact and `like` differ at paths {sorted(missing)}")
        return jtree.map_with_path(lambda p, _: flat[p], like)
    out: dict = {}
    for p, v in flat.items():
        d = out
        *head, last = p.split("/")
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    return out
