"""Configs, overrides, validation and the CLI's bad-input contract (one error line, exit code 2)."""

import json
import os

import ml_collections
import pytest

from jaxcompress import cli
from jaxcompress.runner import config, schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "experiments", "digits_compress.py")


def test_get_config_with_arg_and_override():
    cfg = config.get_config(DEMO + ":runlocal=True,sparsity=0.8", ["qat.bits=3", "prune.lr=1e-2"])
    assert cfg.prune.sparsity == 0.8 and cfg.qat.bits == 3 and cfg.prune.lr == 0.01
    assert cfg.teacher.steps == 60  # runlocal
    assert cfg.prune.scope == "layer" and cfg.student.init == ""  # defaults filled in


def test_parse_arg_rejects_unknown_and_mistyped():
    with pytest.raises(config.ConfigError, match="unknown config argument 'sparsty'; did you mean 'sparsity'"):
        config.parse_arg("sparsty=0.5", sparsity=0.9)
    with pytest.raises(config.ConfigError, match="wrong type for config key 'runlocal'"):
        config.parse_arg("runlocal=3", runlocal=False)


@pytest.mark.parametrize("override, message", [
    ("prune.sparsty=0.5", "unknown config key 'prune.sparsty'; did you mean 'prune.sparsity'?"),
    ("teacher.stpes=5", "did you mean 'teacher.steps'?"),
    ("prune.steps=abc", "wrong type for config key 'prune.steps': expected int, got str"),
    ("qat.bits=2.5", "wrong type for config key 'qat.bits'"),
    ("prune.sparsity=1.5", "config key 'prune.sparsity' must be in [0, 1), got 1.5"),
    ("qat.input=nowhere", "config key 'qat.input' names no other stage: 'nowhere'"),
    ("noequals", "--set expects KEY=VALUE"),
])
def test_bad_overrides(override, message):
    with pytest.raises(config.ConfigError) as e:
        config.get_config(DEMO, [override])
    assert message in str(e.value)


def test_int_is_accepted_for_float_but_not_reverse():
    cfg = config.get_config(DEMO, ["prune.lr=1"])
    assert cfg.prune.lr == 1.0 and isinstance(cfg.prune.lr, float)


def test_schema_rejects_unknown_stage_field_and_type():
    c = ml_collections.ConfigDict({"pipeline": ("a",), "a": {"type": "train", "btach_size": 3}})
    with pytest.raises(config.ConfigError, match="'a.btach_size'; did you mean 'a.batch_size'"):
        schema.fill_defaults(c)
    c = ml_collections.ConfigDict({"pipeline": ("a",), "a": {"type": "trian"}})
    with pytest.raises(config.ConfigError, match="'a.type' must be one of"):
        schema.fill_defaults(c)
    c = ml_collections.ConfigDict({"pipeline": ("a", "b"), "a": {"type": "train"}})
    with pytest.raises(config.ConfigError, match="unknown pipeline stage"):
        schema.fill_defaults(c)


def _cli(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_cli_missing_file_and_missing_get_config(tmp_path, capsys):
    rc, err = _cli(["run", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: config file") and "does not exist" in err[0]
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    rc, err = _cli(["run", str(bad), "--workdir", str(tmp_path / "w")], capsys)
    assert rc == 2 and err == [f"error: config file {str(bad)!r} has no get_config(arg) function"]
    assert not (tmp_path / "w").exists()


def test_cli_unknown_key_wrong_type_bad_shard(tmp_path, capsys):
    w = str(tmp_path / "w")
    rc, err = _cli(["run", DEMO, "--workdir", w, "--set", "prune.sparsty=0.5"], capsys)
    assert rc == 2 and err == ["error: unknown config key 'prune.sparsty'; did you mean 'prune.sparsity'?"]
    rc, err = _cli(["run", DEMO + ":runlocal=maybe", "--workdir", w], capsys)
    assert rc == 2 and len(err) == 1 and "'runlocal'" in err[0]
    rc, err = _cli(["sweep", DEMO, "--workdir", w, "--shard", "3/2"], capsys)
    assert rc == 2 and err == ["error: --shard must be I/N with 0 <= I < N, got '3/2'"]
    rc, err = _cli(["sweep", DEMO, "--workdir", w], capsys)
    assert rc == 2 and "has no get_sweep" in err[0]
    rc, err = _cli(["report", str(tmp_path / "none")], capsys)
    assert rc == 2 and "does not exist" in err[0]
    assert not os.path.exists(w)


def test_cli_refuses_workdir_of_other_config_and_missing_input(tmp_path, capsys):
    w = tmp_path / "w"
    w.mkdir()
    (w / "config.json").write_text(json.dumps({"name": "something else"}))
    rc, err = _cli(["run", DEMO, "--workdir", str(w)], capsys)
    assert rc == 2 and err == [f"error: workdir {str(w)!r} belongs to a different config; use another --workdir or --force"]
    assert json.loads((w / "config.json").read_text()) == {"name": "something else"}  # nothing overwritten
    assert sorted(os.listdir(w)) == ["config.json"]
    rc, err = _cli(["run", DEMO, "--workdir", str(tmp_path / "w2"), "--set", "pipeline=('qat', 'convert')"], capsys)
    assert rc == 2 and len(err) == 1
    assert "stage 'qat' needs the output of stage 'prune'" in err[0]
    assert not (tmp_path / "w2" / "config.json").exists()
