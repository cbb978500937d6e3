"""Response-based distillation losses: Hinton KD, its mix with cross-entropy, several teachers.

``kd_loss`` is ``T^2 * KL(softmax(t / T) || softmax(s / T))`` averaged over the batch
(Hinton et al. 2015: the ``T^2`` keeps gradient magnitudes comparable across temperatures).
:func:`kd` packages it with the label loss as a :class:`DistillLoss` term whose
``temperature`` and ``alpha`` are *hyperparameters*: the distillation step keeps them as
traced arrays in its state, so a sweep over them compiles once.

Labels ``< 0`` mark unlabeled transfer examples (inputs only the teacher labels): they add
to the KD term but not to the cross-entropy.

>>> import jax.numpy as jnp
>>> s = jnp.array([[1.0, 0.0, -1.0]]); t = jnp.array([[2.0, 0.0, -2.0]])
>>> round(float(kd_loss(s, t, temperature=2.0)), 4)
0.2411
>>> float(kd_loss(t, t, temperature=4.0))
0.0
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp


class Outputs(NamedTuple):
    """What a forward pass hands to a loss: ``logits`` and named intermediate ``features``."""

    logits: jax.Array
    features: dict = {}


class DistillLoss(NamedTuple):
    """One distillation objective (or a sum of them, see :func:`combine`).

    Attributes:
      hparams: ``{name: default}`` - swept values; the step stores them as float32 arrays.
      student_features / teacher_features: feature paths the forward passes must capture.
      init: ``init(rng, student: Outputs, teacher: list[Outputs]) -> loss_params`` (learned
        projections; the outputs may be ``jax.ShapeDtypeStruct``\\ s).
      apply: ``apply(loss_params, hparams, student, teachers, labels) -> (loss, metrics)``.
      validate: ``validate(hparams)`` raises ``ValueError`` on bad concrete values.
    """

    hparams: dict
    student_features: tuple = ()
    teacher_features: tuple = ()
    init: Callable = lambda rng, s, t: ()
    apply: Callable = None
    validate: Callable = lambda hparams: None


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_temperature(temperature) -> None:
    """Raise ``ValueError`` unless a concrete ``temperature`` is > 0 (traced values pass)."""
    if _is_concrete(temperature):
        t = jnp.asarray(temperature)
        if t.ndim != 0 or not bool(t > 0):
            raise ValueError(f"temperature must be a positive scalar, got {temperature!r}")


def check_unit_interval(name: str, value) -> None:
    """Raise ``ValueError`` unless a concrete scalar ``value`` lies in ``[0, 1]``."""
    if _is_concrete(value):
        v = jnp.asarray(value)
        if v.ndim != 0 or not bool((v >= 0) & (v <= 1)):
            raise ValueError(f"{name} must be a scalar in [0, 1], got {value!r}")


def _check_logits(student_logits, teacher_logits) -> None:
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student and teacher logits have different class counts: "
            f"{student_logits.shape[-1]} vs {teacher_logits.shape[-1]}")
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(f"student logits {student_logits.shape} and teacher logits "
                         f"{teacher_logits.shape} have different batch shapes")


def kd_loss(student_logits: jax.Array, teacher_logits, temperature=4.0, teacher_weights=None) -> jax.Array:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.

    Args:
      student_logits: ``(..., classes)``.
      teacher_logits: an array like ``student_logits``, or a sequence of them (several
        teachers): the result is then the ``teacher_weights``-weighted mean of the
        per-teacher KD terms (uniform by default; weights are normalised to sum to 1).
      temperature: softening temperature ``T > 0`` (a float or traced scalar).
      teacher_weights: optional non-negative weights, one per teacher.

    Returns:
      A float32 scalar.
    """
    check_temperature(temperature)
    teachers = list(teacher_logits) if isinstance(teacher_logits, (list, tuple)) else [teacher_logits]
    if not teachers:
        raise ValueError("teacher_logits is an empty sequence")
    for t in teachers:
        _check_logits(student_logits, t)
    w = _teacher_weights(teacher_weights, len(teachers))
    temp = jnp.asarray(temperature, jnp.float32)
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temp, axis=-1)
    total = jnp.zeros((), jnp.float32)
    for i, t in enumerate(teachers):
        log_t = jax.nn.log_softmax(t.astype(jnp.float32) / temp, axis=-1)
        kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
        total = total + w[i] * jnp.mean(kl)
    return temp * temp * total


def _teacher_weights(teacher_weights, n: int) -> jax.Array:
    if teacher_weights is None:
        return jnp.full((n,), 1.0 / n, jnp.float32)
    w = jnp.asarray(teacher_weights, jnp.float32)
    if w.shape != (n,):
        raise ValueError(f"teacher_weights has shape {w.shape}, expected ({n},) for {n} teacher(s)")
    if _is_concrete(teacher_weights) and not bool(jnp.all(w >= 0) & (jnp.sum(w) > 0)):
        raise ValueError(f"teacher_weights must be non-negative with a positive sum, got {teacher_weights!r}")
    return w / jnp.sum(w)


def labeled_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over examples with ``label >= 0`` (0 if none is labeled)."""
    labels = jnp.asarray(labels)
    mask = labels >= 0
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None].astype(jnp.int32), axis=-1)[..., 0]
    n = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    return jnp.sum(jnp.where(mask, nll, 0.0)) / n


def kd_objective(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9, teacher_weights=None):
    """``alpha * kd_loss + (1 - alpha) * cross-entropy(labels)``; returns ``(loss, {"kd", "ce"})``.

    With one teacher this is one fused function with a hand-written gradient (w.r.t. the
    student and teacher logits, ``temperature`` and ``alpha``): a few elementwise passes
    instead of autodiff's chain of softmax graphs (it is what makes the cached-logits step
    cost about a plain train step).
    """
    check_unit_interval("alpha", alpha)
    check_temperature(temperature)
    several = isinstance(teacher_logits, (list, tuple))
    if several and len(teacher_logits) == 1 and teacher_weights is None:
        teacher_logits, several = teacher_logits[0], False
    if several:
        kd = kd_loss(student_logits, teacher_logits, temperature, teacher_weights)
        ce = labeled_cross_entropy(student_logits, labels)
        a = jnp.asarray(alpha, jnp.float32)
        return a * kd + (1.0 - a) * ce, {"kd": kd, "ce": ce}
    _check_logits(student_logits, teacher_logits)
    loss, kd, ce = _kd_ce(student_logits.astype(jnp.float32), teacher_logits.astype(jnp.float32),
                          jnp.asarray(labels), jnp.asarray(temperature, jnp.float32), jnp.asarray(alpha, jnp.float32))
    return loss, {"kd": kd, "ce": ce}


def _kd_ce_parts(s, t, labels, temp, alpha):
    # The three log-softmaxes (s/T, t/T, s) share one pair of row reductions, and the three
    # totals (KL, CE, #labeled) one more: few kernels, which is what costs on CPU at small sizes.
    lz = jax.nn.log_softmax(jnp.stack([s / temp, t / temp, s]), axis=-1)
    lps, lpt, ls = lz[0], lz[1], lz[2]
    pt = jnp.exp(lpt)
    onehot = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.float32)  # all zero where label < 0
    sums = jnp.sum(jnp.stack([pt * (lpt - lps), onehot * ls, onehot]), axis=tuple(range(1, s.ndim + 1)))
    batch = s.size // s.shape[-1]
    kd = temp * temp * sums[0] / batch
    n = jnp.maximum(sums[2], 1.0)
    ce = -sums[1] / n
    loss = alpha * kd + (1.0 - alpha) * ce
    return (loss, kd, ce), (lps, lpt, pt, ls, onehot, n)


@jax.custom_vjp
def _kd_ce(s, t, labels, temp, alpha):
    return _kd_ce_parts(s, t, labels, temp, alpha)[0]


def _kd_ce_fwd(s, t, labels, temp, alpha):
    out, res = _kd_ce_parts(s, t, labels, temp, alpha)
    return out, (res, s, t, labels, temp, alpha, out)


def _kd_ce_bwd(resid, cts):
    (lps, lpt, pt, ls, onehot, n), s, t, labels, temp, alpha, (_, kd, ce) = resid
    batch = s.size // s.shape[-1]
    g, g_kd, g_ce = cts  # cotangents of loss, kd, ce
    w_kd = g * alpha + g_kd  # d/d(kd)
    w_ce = g * (1.0 - alpha) + g_ce  # d/d(ce)
    ps_t = jnp.exp(lps)
    labeled = (labels >= 0).astype(jnp.float32)[..., None]
    d_s = (w_kd * temp / batch) * (ps_t - pt) + (w_ce / n) * (jnp.exp(ls) * labeled - onehot)
    # Teacher, temperature and alpha cotangents (XLA drops them when nothing asks for them).
    diff = lpt - lps
    kl = jnp.sum(pt * diff, axis=-1, keepdims=True)
    du = pt * (diff - kl)  # dKL/d(t / T)
    d_t = (w_kd * temp / batch) * du
    # d(T^2 mean KL)/dT = mean(2 T KL - sum_j [du_j t_j + (ps_j - pt_j) s_j])
    d_temp = w_kd * jnp.sum(2.0 * temp * kl[..., 0] - jnp.sum(du * t + (ps_t - pt) * s, -1)) / batch
    d_alpha = g * (kd - ce)
    return d_s, d_t, None, d_temp, d_alpha


_kd_ce.defvjp(_kd_ce_fwd, _kd_ce_bwd)


def kd(temperature: float = 4.0, alpha: float = 0.9, teacher_weights: Sequence[float] | None = None) -> DistillLoss:
    """Hinton KD mixed with the label loss: ``alpha * KD_T + (1 - alpha) * CE``.

    ``temperature``, ``alpha`` (and ``teacher_weights`` when given) are defaults of the
    step state's traced ``hparams``; change them there without recompiling. With several
    teachers the KD term is their weighted mean.

    >>> loss = kd(temperature=2.0, alpha=0.5)
    >>> sorted(loss.hparams)
    ['alpha', 'temperature']
    >>> kd(temperature=0.0)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a positive scalar, got 0.0
    """
    hparams = {"temperature": temperature, "alpha": alpha}
    if teacher_weights is not None:
        hparams["teacher_weights"] = tuple(float(w) for w in teacher_weights)

    def validate(h):
        check_temperature(h["temperature"])
        check_unit_interval("alpha", h["alpha"])
        if "teacher_weights" in h:
            _teacher_weights(h["teacher_weights"], len(jnp.atleast_1d(jnp.asarray(h["teacher_weights"]))))

    def apply(loss_params, h, student: Outputs, teachers: Sequence[Outputs], labels):
        del loss_params
        return kd_objective(student.logits, [t.logits for t in teachers], labels,
                            h["temperature"], h["alpha"], h.get("teacher_weights"))

    validate(hparams)
    return DistillLoss(hparams=hparams, apply=apply, validate=validate)


def combine(*terms: DistillLoss) -> DistillLoss:
    """Sum several :class:`DistillLoss` terms (e.g. ``kd(...)`` and a feature loss).

    Hyperparameter names must be distinct across terms (give feature terms distinct
    ``name=``); metrics are merged the same way.
    """
    if not terms:
        raise ValueError("combine needs at least one loss term")
    hparams: dict[str, Any] = {}
    for term in terms:
        for k, v in term.hparams.items():
            if k in hparams:
                raise ValueError(f"hyperparameter {k!r} appears in two loss terms; give the terms distinct name=")
            hparams[k] = v
    sf = tuple(dict.fromkeys(p for t in terms for p in t.student_features))
    tf = tuple(dict.fromkeys(p for t in terms for p in t.teacher_features))

    def init(rng, s, ts):
        return tuple(t.init(jax.random.fold_in(rng, i), s, ts) for i, t in enumerate(terms))

    def apply(loss_params, h, s, ts, labels):
        total, metrics = jnp.zeros((), jnp.float32), {}
        for t, lp in zip(terms, loss_params):
            value, m = t.apply(lp, {k: h[k] for k in t.hparams}, s, ts, labels)
            total = total + value
            metrics.update(m)
        return total, metrics

    def validate(h):
        for t in terms:
            t.validate({k: h[k] for k in t.hparams})

    return DistillLoss(hparams, sf, tf, init, apply, validate)
