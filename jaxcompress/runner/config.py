"""Python config files (big_vision style), command-line overrides and validation.

A config is a Python file with ``get_config(arg)`` returning an ``ml_collections.ConfigDict``.
``path.py:key=val,...`` passes ``"key=val,..."`` as ``arg``; :func:`parse_arg` turns it into
typed values. ``--set a.b=v`` overrides any existing field. Every error is a
:class:`ConfigError` (a ``ValueError``) with one clear line: an unknown key names the nearest
valid key, a wrong type names the key and both types.

>>> c = parse_arg("sparsity=0.95,runlocal=True", sparsity=0.9, runlocal=False)
>>> c.sparsity, c.runlocal
(0.95, True)
>>> apply_overrides(ml_collections.ConfigDict({"prune": {"sparsity": 0.9}}), ["prune.sparsty=0.5"])
Traceback (most recent call last):
...
jaxcompress.runner.config.ConfigError: unknown config key 'prune.sparsty'; did you mean 'prune.sparsity'?
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
    """A bad config, override or workdir: the message is one line meant for the user."""


def _literal(text: str) -> Any:
    """``"0.9" -> 0.9``, ``"True" -> True``, ``"(1, 2)" -> (1, 2)``; anything else stays a string."""
    low = text.strip()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(low)
    except (ValueError, SyntaxError):
        return text


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a (nested) ConfigDict, e.g. ``["prune.sparsity", "seed"]``."""
    out = []
    for k in cfg.keys():
        v = cfg[k]
        key = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            out.append(key)
            out.extend(flat_keys(v, key + "."))
        else:
            out.append(key)
    return out


def unknown_key_error(key: str, valid: Iterable[str], what: str = "config key") -> ConfigError:
    valid = list(valid)
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown {what} {key!r}{hint}")


def coerce(key: str, old: Any, new: Any) -> Any:
    """Check that ``new`` may replace ``old`` (same type; int -> float and list <-> tuple allowed)."""
    if old is None or new is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    elif isinstance(old, int) and isinstance(new, int):
        return new
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return type(old)(new)
    elif isinstance(old, str) and isinstance(new, str):
        return new
    elif isinstance(old, dict) and isinstance(new, dict):
        return new
    raise ConfigError(f"wrong type for config key {key!r}: expected {type(old).__name__}, got {type(new).__name__} "
                      f"({new!r})")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parse ``"a=1,b=x"`` (the part after ``:`` of a config path) against typed defaults.

    A bare ``name`` means ``name=True``. Unknown names and wrong types raise :class:`ConfigError`.
    """
    out = dict(defaults)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        k, _, v = item.partition("=")
        k = k.strip()
        if k not in defaults:
            raise unknown_key_error(k, defaults, "config argument")
        out[k] = coerce(k, defaults[k], _literal(v) if _ else True)
    return ml_collections.ConfigDict(out)


def _set(cfg: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    node, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise unknown_key_error(dotted, flat_keys(cfg))
        if i == len(parts) - 1:
            new = coerce(dotted, node[part], value)
            with node.ignore_type():
                node[part] = new
        else:
            node = node[part]


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Apply ``["a.b=v", ...]`` to ``cfg`` in place (existing keys only) and return it."""
    for item in overrides or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        _set(cfg, key.strip(), _literal(value))
    return cfg


def load_module(path: str):
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as e:  # a config that fails to import is a config error
        raise ConfigError(f"config file {path!r} failed to import: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
    return module


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"dir/x.py:a=1" -> ("dir/x.py", "a=1")``."""
    head, sep, tail = spec.rpartition(".py:")
    if sep:
        return head + ".py", tail
    return spec, None


def get_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load ``path.py[:arg]``, call ``get_config(arg)``, apply ``--set`` overrides and validate.

    Args:
      spec: ``"experiments/digits_compress.py:runlocal=True"``.
      overrides: ``["prune.sparsity=0.95", ...]``.

    Returns:
      The resolved ``ConfigDict`` (defaults filled and validated by :mod:`jaxcompress.runner.schema`).
    """
    path, arg = split_spec(spec)
    module = load_module(path)
    try:
        cfg = module.get_config(arg)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"get_config({arg!r}) of {path!r} failed: {type(e).__name__}: {e}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"get_config of {path!r} must return an ml_collections.ConfigDict, got {type(cfg).__name__}")
    from jaxcompress.runner.schema import fill_defaults, validate

    fill_defaults(cfg)
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def to_plain(cfg: Any) -> Any:
    """A JSON-friendly copy of a config (tuples become lists)."""
    if isinstance(cfg, ml_collections.ConfigDict):
        return {k: to_plain(cfg[k]) for k in sorted(cfg.keys())}
    if isinstance(cfg, dict):
        return {k: to_plain(v) for k, v in sorted(cfg.items())}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg
