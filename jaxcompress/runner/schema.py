"""What a pipeline config may contain: top-level fields, stage types and their fields, and checks.

A config names its stages in ``pipeline`` (an ordered tuple) and holds one sub-config per stage
at the top level (``config.prune.sparsity``), each with a ``type`` from :data:`STAGES`. Missing
fields get the defaults below; an unknown field names the nearest valid one; a wrong type names
the field.

>>> import ml_collections
>>> c = ml_collections.ConfigDict({"pipeline": ("t",), "t": {"type": "train", "steps": 10}})
>>> fill_defaults(c).t.lr
0.001
>>> c.t.lrr = 0.1
>>> fill_defaults(c)
Traceback (most recent call last):
...
jaxcompress.runner.config.ConfigError: unknown config key 't.lrr'; did you mean 't.lr'?
"""

from __future__ import annotations

import ml_collections

from jaxcompress.runner.config import ConfigError, coerce, unknown_key_error

TOP = dict(name="experiment", dataset="digits", seed=0, num_devices=0, distributed=False, log_every=50,
           checkpoint_every=500, keep_checkpoints=3, pipeline=())

_FIT = dict(steps=1000, lr=1e-3, batch_size=128)
_KD = dict(teacher="", temperature=4.0, alpha=0.9)
STAGES = {
    "train": dict(type="train", model="mlp", model_kw={}, init="", **_FIT),
    "distill": dict(type="distill", model="mlp", model_kw={}, init="", **_FIT, **_KD),
    "prune": dict(type="prune", input="", sparsity=0.9, begin_frac=0.0, end_frac=0.6, update_every=50,
                  distribution="uniform", scope="layer", **_FIT, **_KD),
    "qat": dict(type="qat", input="", bits=4, keep_sparsity=True, **_FIT, **_KD),
    "ptq": dict(type="ptq", input="", bits=8),
    "convert": dict(type="convert", input="", bits=4, codec="lzma", float_dtype="float32"),
    "evaluate": dict(type="evaluate", reference="", latency_batch=128, latency_repeats=20, latency_length=128),
    # sentence-encoder pipelines (dataset "stdlib_text"; see jaxcompress.runner.text_stages)
    "encoder": dict(type="encoder", weights="minilm", model_kw={}, n_eval=1000, n_calib=256, calib_length=64),
    "w8a8": dict(type="w8a8", input="", activations="token", observer="minmax", smooth_alpha=0.5),
    "weight_quant": dict(type="weight_quant", input="", method="gptq", bits=4, group_size=128, damp=0.01),
    "oneshot_prune": dict(type="oneshot_prune", input="", score="wanda", sparsity=0.5, nm=()),
    "layer_distill": dict(type="layer_distill", input="", layers=(1, 3, 5), steps=400, lr=2e-4, batch_size=32,
                          max_length=48, n_sentences=0),
}
TRAINING = ("train", "distill", "prune", "qat")
TEXT = ("encoder", "w8a8", "weight_quant", "oneshot_prune", "layer_distill")
TEXT_DATASETS = ("stdlib_text",)
#: Fields that are traced arrays in the compiled step: points differing only in these vectorize.
TRACED = {"lr", "sparsity", "temperature", "alpha", "bits", "seed"}
_FREE_FORM = {"model_kw"}


def _fill(node: ml_collections.ConfigDict, defaults: dict, prefix: str) -> None:
    for k in list(node.keys()):
        if k not in defaults:
            raise unknown_key_error(prefix + k, [prefix + d for d in defaults])
        if k in _FREE_FORM:
            if not isinstance(node[k], (ml_collections.ConfigDict, dict)):
                raise ConfigError(f"wrong type for config key {prefix + k!r}: expected dict, got {type(node[k]).__name__}")
            continue
        value = coerce(prefix + k, defaults[k], node[k])
        with node.ignore_type():
            node[k] = value
    for k, v in defaults.items():
        if k not in node:
            node[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v


def fill_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every key of ``cfg`` against the schema and add missing defaults (in place)."""
    pipeline = cfg.get("pipeline", ())
    if not isinstance(pipeline, (tuple, list)) or not pipeline or not all(isinstance(p, str) for p in pipeline):
        raise ConfigError("config key 'pipeline' must be a non-empty tuple of stage names")
    stage_names = [k for k in cfg.keys() if isinstance(cfg[k], ml_collections.ConfigDict)]
    for k in list(cfg.keys()):
        if k in stage_names:
            continue
        if k not in TOP:
            raise unknown_key_error(k, list(TOP) + stage_names)
        value = coerce(k, TOP[k], cfg[k])
        with cfg.ignore_type():
            cfg[k] = value
    for k, v in TOP.items():
        if k not in cfg:
            cfg[k] = v
    for name in pipeline:
        if name not in stage_names:
            raise unknown_key_error(name, stage_names, "pipeline stage (no config section)")
    for name in stage_names:
        typ = cfg[name].get("type")
        if typ not in STAGES:
            raise ConfigError(f"config key '{name}.type' must be one of {sorted(STAGES)}, got {typ!r}")
        _fill(cfg[name], STAGES[typ], name + ".")
    return cfg


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r} {msg}")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Values and references: positive steps, sparsity in [0, 1), bits in 2..8, known references."""
    from jaxcompress import data, models

    datasets = sorted(data.DATASETS) + list(TEXT_DATASETS)
    _check(cfg.dataset in datasets, "dataset", f"must be one of {datasets}, got {cfg.dataset!r}")
    text = cfg.dataset in TEXT_DATASETS
    _check(cfg.num_devices >= 0, "num_devices", "must be >= 0 (0 = all local devices)")
    for k in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _check(cfg[k] > 0, k, f"must be positive, got {cfg[k]}")
    stages = [k for k in cfg.keys() if isinstance(cfg[k], ml_collections.ConfigDict) and "type" in cfg[k]]
    for name in stages:
        s, typ = cfg[name], cfg[name].type
        if typ != "evaluate":
            _check((typ in TEXT) == text, f"{name}.type",
                   f"{typ!r} does not fit dataset {cfg.dataset!r} (text stages {list(TEXT)} need a dataset in "
                   f"{list(TEXT_DATASETS)}, the others a classification dataset)")
        if typ in TEXT:
            _validate_text(cfg, name, stages)
            continue
        if typ in TRAINING:
            for k in ("steps", "batch_size"):
                _check(s[k] > 0, f"{name}.{k}", f"must be positive, got {s[k]}")
            _check(s.lr > 0, f"{name}.lr", f"must be positive, got {s.lr}")
        if "model" in s:
            _check(s.model in models.MODELS, f"{name}.model", f"must be one of {list(models.MODELS)}, got {s.model!r}")
        if typ == "prune":
            _check(0.0 <= s.sparsity < 1.0, f"{name}.sparsity", f"must be in [0, 1), got {s.sparsity}")
            _check(0.0 <= s.begin_frac <= s.end_frac <= 1.0, f"{name}.begin_frac",
                   f"and end_frac must satisfy 0 <= begin_frac <= end_frac <= 1, got {s.begin_frac}, {s.end_frac}")
            _check(s.update_every > 0, f"{name}.update_every", "must be positive")
            _check(s.scope in ("layer", "global"), f"{name}.scope", f"must be 'layer' or 'global', got {s.scope!r}")
            _check(s.distribution in ("uniform", "erk", "first_last_dense"), f"{name}.distribution",
                   f"must be 'uniform', 'erk' or 'first_last_dense', got {s.distribution!r}")
        if "bits" in s:
            _check(2 <= s.bits <= 8, f"{name}.bits", f"must be in [2, 8], got {s.bits}")
        if "temperature" in s:
            _check(s.temperature > 0, f"{name}.temperature", f"must be positive, got {s.temperature}")
            _check(0.0 <= s.alpha <= 1.0, f"{name}.alpha", f"must be in [0, 1], got {s.alpha}")
        for ref in ("input", "teacher", "init", "reference"):
            if ref in s and s[ref]:
                _check(s[ref] in stages and s[ref] != name, f"{name}.{ref}",
                       f"names no other stage: {s[ref]!r} (stages: {sorted(set(stages) - {name})})")
        if typ in ("prune", "qat", "ptq", "convert"):
            _check(bool(s.input), f"{name}.input", "must name the stage whose output this stage starts from")
        if typ == "distill":
            _check(bool(s.teacher), f"{name}.teacher", "must name the teacher stage")


def _validate_text(cfg: ml_collections.ConfigDict, name: str, stages: list[str]) -> None:
    """Values of a sentence-encoder stage (see :mod:`jaxcompress.runner.text_stages`)."""
    from jaxcompress.runner import text_stages
    from jaxcompress.quantization.observers import OBSERVERS

    s, typ = cfg[name], cfg[name].type
    choice = lambda key, valid: _check(s[key] in valid, f"{name}.{key}", f"must be one of {list(valid)}, got {s[key]!r}")
    if typ == "encoder":
        choice("weights", ("minilm", "random"))
        _check(s.n_eval >= 2, f"{name}.n_eval", f"must be >= 2, got {s.n_eval}")
        _check(s.n_calib >= 1, f"{name}.n_calib", f"must be >= 1, got {s.n_calib}")
        _check(8 <= s.calib_length <= 512, f"{name}.calib_length", f"must be in [8, 512], got {s.calib_length}")
        return
    _check(s.input in stages and s.input != name, f"{name}.input",
           f"must name the stage whose output this stage starts from, got {s.input!r}")
    _check(cfg[s.input].type in ("encoder", "oneshot_prune", "layer_distill"), f"{name}.input",
           f"names stage {s.input!r} of type {cfg[s.input].type!r}, whose weights are already quantized; "
           "start from an encoder, oneshot_prune or layer_distill stage")
    if typ == "w8a8":
        choice("activations", text_stages.ACTIVATIONS)
        choice("observer", OBSERVERS)
        _check(0.0 <= s.smooth_alpha <= 1.0, f"{name}.smooth_alpha", f"must be in [0, 1], got {s.smooth_alpha}")
    elif typ == "weight_quant":
        choice("method", text_stages.METHODS)
        _check(2 <= s.bits <= 8, f"{name}.bits", f"must be in [2, 8], got {s.bits}")
        _check(s.group_size >= 0, f"{name}.group_size", f"must be >= 0 (0 = per channel), got {s.group_size}")
        _check(s.damp > 0, f"{name}.damp", f"must be positive, got {s.damp}")
    elif typ == "oneshot_prune":
        choice("score", text_stages.SCORES)
        _check(0.0 <= s.sparsity < 1.0, f"{name}.sparsity", f"must be in [0, 1), got {s.sparsity}")
        _check(len(s.nm) == 0 or (len(s.nm) == 2 and 0 < s.nm[0] < s.nm[1]), f"{name}.nm",
               f"must be () (unstructured) or (n, m) with 0 < n < m, got {tuple(s.nm)}")
    else:  # layer_distill
        _check(len(s.layers) > 0 and all(isinstance(v, int) and v >= 0 for v in s.layers), f"{name}.layers",
               f"must be a non-empty tuple of teacher block indices, got {tuple(s.layers)}")
        for k in ("steps", "batch_size", "max_length"):
            _check(s[k] > 0, f"{name}.{k}", f"must be positive, got {s[k]}")
        _check(s.n_sentences >= 0, f"{name}.n_sentences", f"must be >= 0 (0 = the whole calibration split), "
               f"got {s.n_sentences}")
        _check(s.lr > 0, f"{name}.lr", f"must be positive, got {s.lr}")
