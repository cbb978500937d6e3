"""The compact final artifact: sparse + low-bit weights as real bytes on disk, loaded without pickle.

The selected kernels (default: kernels) are converted to integer codes and float32 scales by
:func:`jaxcompress.quantization.convert` (symmetric, one scale per output channel: exactly the
grid of ``quantization.quantize_weights``, so QAT weights are stored without further error).
Each code tensor is stored as a bitmask of its nonzeros (``np.packbits``) plus the nonzero codes
as ``bits``-bit unsigned integers in a packed bit stream; scales as float32, other leaves
(biases) as raw little-endian floats. The payload is then entropy coded (lzma or zlib). The file
is ``b"JXC1" | uint32 header length | JSON header | compressed payload`` - no pickle.

>>> import numpy as np
>>> w = {"Dense_0": {"kernel": np.array([[0.5, 0.0], [-1.0, 0.25]], np.float32), "bias": np.zeros(2, np.float32)}}
>>> blob, dq = compress(w, bits=4)
>>> back = decompress(blob)
>>> bool(np.array_equal(back["Dense_0/kernel"], dq["Dense_0/kernel"]))
True
>>> back["Dense_0/kernel"][1].tolist()
[-1.0, 0.25]
"""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from typing import Any

import jax
import numpy as np

from jaxcompress import tree as jtree

MAGIC = b"JXC1"
CODECS = {"lzma": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
          "zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
          "none": (lambda b: b, lambda b: b)}


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    v = values.astype(np.uint32)
    planes = (v[:, None] >> np.arange(bits - 1, -1, -1, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).ravel()).tobytes()


def _unpack_bits(raw: bytes, n: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(raw, np.uint8))[: n * bits].reshape(n, bits).astype(np.uint32)
    return (planes << np.arange(bits - 1, -1, -1, dtype=np.uint32)).sum(1)


def _q_parts(q, bits: int) -> tuple[list[bytes], dict, np.ndarray]:
    codes = np.asarray(q.codes()).astype(np.int32)
    scale = np.asarray(q.scale, np.float32)
    zp = np.asarray(q.zero_point, np.float32)
    mask = codes != 0
    parts = [np.packbits(mask.ravel()).tobytes(), _pack_bits(codes[mask] + 2 ** (bits - 1), bits),
             scale.astype("<f4").tobytes(), zp.astype("<f4").tobytes()]
    meta = {"bits": bits, "nnz": int(mask.sum()), "scale_shape": list(scale.shape)}
    return parts, meta, _dequantize(codes, scale, zp)


def _dequantize(codes, scale, zp) -> np.ndarray:
    return ((codes.astype(np.float32) - zp.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


def compress(params: Any, bits: int = 4, where=None, codec: str = "lzma", float_dtype: str = "float32",
             layout: dict | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """Encode ``params`` (linen dict or ``nnx.State``) as artifact bytes.

    Args:
      params: the float weights to ship (e.g. ``finalize(params, tstate, transform)``).
      bits: code width for the selected kernels, 2..8.
      where: which leaves to quantize (a :func:`jaxcompress.tree.select` selector; default kernels).
      codec: ``"lzma"``, ``"zlib"`` or ``"none"``.
      float_dtype: storage of the other leaves, ``"float32"`` or ``"float16"``.
      layout: the model's weight layout (:func:`jaxcompress.layout.trace`), for ``quantization.convert``.

    Returns:
      ``(blob, weights)``: the bytes, and ``{path: np.ndarray}`` of exactly the values they decode to.
    """
    if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in [2, 8], got {bits!r}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    if float_dtype not in ("float32", "float16"):
        raise ValueError(f"float_dtype must be 'float32' or 'float16', got {float_dtype!r}")
    from jaxcompress import quantization

    for path, leaf in jtree.named_leaves(params):
        if not np.all(np.isfinite(np.asarray(jax.device_get(leaf)))):
            raise ValueError(f"params leaf {path!r} has non-finite values; cannot export")
    qtree = quantization.convert(params, quantization.QuantSpec(bits=int(bits)), where=where, layout=layout)
    is_q = lambda x: isinstance(x, quantization.QArray)
    header, chunks, out, offset = [], [], {}, 0
    for path, leaf in jtree.named_leaves(qtree, is_leaf=is_q):
        if is_q(leaf):
            parts, meta, out[path] = _q_parts(leaf, int(bits))
            entry = {"path": path, "kind": "q", "shape": list(leaf.shape), **meta, "sizes": [len(p) for p in parts]}
        else:
            w = np.asarray(jax.device_get(leaf))
            stored = w.astype(float_dtype)
            parts = [stored.astype(stored.dtype.newbyteorder("<")).tobytes()]
            entry = {"path": path, "kind": "f", "shape": list(w.shape), "dtype": float_dtype, "sizes": [len(parts[0])]}
            out[path] = stored.astype(np.float32)
        entry["offset"] = offset
        offset += sum(entry["sizes"])
        header.append(entry)
        chunks.extend(parts)
    head = json.dumps({"codec": codec, "leaves": header}, separators=(",", ":")).encode()
    blob = MAGIC + struct.pack("<I", len(head)) + head + CODECS[codec][0](b"".join(chunks))
    return blob, out


def decompress(blob: bytes) -> dict[str, np.ndarray]:
    """Decode artifact bytes into ``{path: float32 array}``; raises ValueError on a damaged blob."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise ValueError("not a jaxcompress artifact (bad magic)")
    (n,) = struct.unpack("<I", blob[4:8])
    try:
        head = json.loads(blob[8 : 8 + n])
        payload = CODECS[head["codec"]][1](blob[8 + n :])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"damaged jaxcompress artifact: {type(e).__name__}: {e}") from None
    out = {}
    for e in head["leaves"]:
        pos, shape = e["offset"], tuple(e["shape"])
        raw = [payload[pos + sum(e["sizes"][:i]) : pos + sum(e["sizes"][: i + 1])] for i in range(len(e["sizes"]))]
        if e["kind"] == "q":
            size = int(np.prod(shape))
            mask = np.unpackbits(np.frombuffer(raw[0], np.uint8))[:size].astype(bool).reshape(shape)
            codes = np.zeros(shape, np.int32)
            codes[mask] = _unpack_bits(raw[1], e["nnz"], e["bits"]).astype(np.int32) - 2 ** (e["bits"] - 1)
            sshape = tuple(e["scale_shape"])
            out[e["path"]] = _dequantize(codes, np.frombuffer(raw[2], "<f4").reshape(sshape),
                                         np.frombuffer(raw[3], "<f4").reshape(sshape))
        else:
            out[e["path"]] = np.frombuffer(raw[0], "<" + ("f4" if e["dtype"] == "float32" else "f2")).reshape(shape).astype(np.float32)
    return out


def save(path: str, params: Any, **kwargs) -> tuple[int, dict[str, np.ndarray]]:
    """:func:`compress` and write atomically to ``path``; returns ``(bytes on disk, decoded weights)``."""
    from jaxcompress.runner.checkpoint import atomic_write_bytes

    blob, weights = compress(params, **kwargs)
    atomic_write_bytes(path, blob)
    return len(blob), weights


def load(path: str, like: Any = None) -> Any:
    """Read an artifact; with ``like`` (a params tree) return a tree of that structure, else ``{path: array}``."""
    with open(path, "rb") as f:
        weights = decompress(f.read())
    if like is None:
        return weights
    missing = sorted(set(jtree.paths(like)) - set(weights))
    if missing:
        raise ValueError(f"artifact {path!r} lacks params {missing[:5]}")
    return jtree.map_with_path(lambda p, x: jax.numpy.asarray(weights[p], x.dtype), like)
