"""Feature-based distillation: FitNets hints (MSE / cosine, learned projection) and attention transfer.

Features are the named intermediate arrays :mod:`jaxcompress.distillation.features`
captures, laid out channels-last: ``(batch, features)`` for dense layers and
``(batch, *spatial, channels)`` for conv layers.

* ``mse`` / ``cosine`` (FitNets, Romero et al. 2015): when the student's width differs
  from the teacher's (or ``project=True``) a learned linear map (a 1x1 conv for feature
  maps) takes the student's last axis to the teacher's; it is trained with the student.
* ``attention`` (Zagoruyko & Komodakis 2017): the spatial map ``mean_c |f|^2`` of each conv
  feature map, flattened and L2-normalised; the loss is the mean squared difference, so
  channel counts may differ but spatial sizes must agree.

>>> import jax, jax.numpy as jnp
>>> s, t = jnp.ones((2, 5, 3)), jnp.ones((2, 5, 8))
>>> proj = init_projection(jax.random.key(0), 3, 8)
>>> project(proj, s).shape
(2, 5, 8)
>>> float(attention_loss(s, t))
0.0
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxcompress.distillation.losses import DistillLoss, Outputs

KINDS = ("mse", "cosine", "attention")


def init_projection(rng, in_features: int, out_features: int) -> dict:
    """A linear map ``in -> out`` on the last axis: LeCun-normal ``kernel``, zero ``bias``."""
    kernel = jax.random.normal(rng, (in_features, out_features), jnp.float32) / jnp.sqrt(float(in_features))
    return {"kernel": kernel, "bias": jnp.zeros((out_features,), jnp.float32)}


def project(proj: dict | None, x: jax.Array) -> jax.Array:
    """Apply a projection from :func:`init_projection` to the last axis (identity if None)."""
    if proj is None:
        return x
    return x @ proj["kernel"] + proj["bias"].reshape((1,) * (x.ndim - 1) + (-1,))


def mse_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """Mean squared difference of two feature arrays of equal shape."""
    _check_same_shape(student, teacher, "mse")
    return jnp.mean(jnp.square(student.astype(jnp.float32) - teacher.astype(jnp.float32)))


def cosine_loss(student: jax.Array, teacher: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Mean of ``1 - cos(student, teacher)`` over the last (feature/channel) axis."""
    _check_same_shape(student, teacher, "cosine")
    s, t = student.astype(jnp.float32), teacher.astype(jnp.float32)
    dot = jnp.sum(s * t, -1)
    norm = jnp.sqrt(jnp.sum(s * s, -1) * jnp.sum(t * t, -1))
    return jnp.mean(1.0 - dot / jnp.maximum(norm, eps))


def attention_map(features: jax.Array, p: float = 2.0, eps: float = 1e-12) -> jax.Array:
    """``(batch, *spatial, C) -> (batch, prod(spatial))``: ``mean_c |f|^p``, L2-normalised."""
    if features.ndim < 3:
        raise ValueError(f"attention transfer needs conv feature maps (batch, *spatial, channels), "
                         f"got shape {features.shape}")
    a = jnp.mean(jnp.abs(features.astype(jnp.float32)) ** p, axis=-1).reshape(features.shape[0], -1)
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)


def attention_loss(student: jax.Array, teacher: jax.Array, p: float = 2.0) -> jax.Array:
    """Attention transfer: mean squared difference of the normalised attention maps."""
    if student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(f"attention transfer needs equal batch/spatial shapes, got student "
                         f"{student.shape} and teacher {teacher.shape} (pool one of them first)")
    return jnp.mean(jnp.square(attention_map(student, p) - attention_map(teacher, p)))


def _check_same_shape(s, t, kind):
    if s.shape != t.shape:
        raise ValueError(f"{kind} feature loss needs equal shapes after projection, got student "
                         f"{s.shape} and teacher {t.shape}")


def feature_loss(student_path: str, teacher_path: str, kind: str = "mse", weight: float = 1.0,
                 name: str | None = None, project_features: bool | None = None, teacher: int = 0) -> DistillLoss:
    """A :class:`DistillLoss` term matching one student feature to one teacher feature.

    Args:
      student_path / teacher_path: feature paths (see ``features.available_features``).
      kind: ``"mse"``, ``"cosine"`` or ``"attention"``.
      weight: default of the traced hyperparameter ``f"{name}_weight"``.
      name: term name (default ``kind``); must differ between terms of one :func:`combine`.
      project_features: learn a linear projection student -> teacher width (``None``: only
        when the widths differ; never for ``attention``).
      teacher: which teacher (index) when there are several.

    >>> term = feature_loss("Conv_1", "Conv_1", "attention", weight=100.0)
    >>> term.hparams
    {'attention_weight': 100.0}
    """
    if kind not in KINDS:
        raise ValueError(f"unknown feature loss kind {kind!r}; valid kinds: {list(KINDS)}")
    if kind == "attention" and project_features:
        raise ValueError("attention transfer compares spatial maps; it takes no projection")
    key = f"{name or kind}_weight"

    def validate(h):
        w = h[key]
        if not isinstance(w, jax.core.Tracer) and not bool(jnp.asarray(w) >= 0):
            raise ValueError(f"{key} must be >= 0, got {w!r}")

    def _pair(s: Outputs, ts: Sequence[Outputs]):
        if teacher >= len(ts):
            raise ValueError(f"feature loss uses teacher {teacher} but there are {len(ts)} teacher(s)")
        if teacher_path not in ts[teacher].features:
            raise ValueError(f"teacher {teacher} returned no feature {teacher_path!r}; it returned "
                             f"{sorted(ts[teacher].features)}")
        return s.features[student_path], ts[teacher].features[teacher_path]

    def init(rng, s, ts):
        fs, ft = _pair(s, ts)
        if kind == "attention":
            return None
        if fs.shape[:-1] != ft.shape[:-1]:
            raise ValueError(f"feature {student_path!r} {fs.shape} and teacher feature {teacher_path!r} "
                             f"{ft.shape} differ in batch/spatial shape; only the last axis can be projected")
        if project_features or (project_features is None and fs.shape[-1] != ft.shape[-1]):
            return init_projection(rng, fs.shape[-1], ft.shape[-1])
        return None

    def apply(proj, h, s, ts, labels):
        del labels
        fs, ft = _pair(s, ts)
        ft = jax.lax.stop_gradient(ft)
        if kind == "attention":
            value = attention_loss(fs, ft)
        else:
            value = (mse_loss if kind == "mse" else cosine_loss)(project(proj, fs), ft)
        return jnp.asarray(h[key], jnp.float32) * value, {f"{name or kind}_loss": value}

    hparams = {key: weight}
    validate(hparams)
    return DistillLoss(hparams, (student_path,), (teacher_path,), init, apply, validate)
