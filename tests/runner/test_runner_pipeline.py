"""A whole pipeline end to end (runlocal sizes), its report, and 1 vs 8 devices."""

import json
import os

import jax
import numpy as np
import pytest

from jaxcompress import export, tree
from jaxcompress.runner import config, pipeline, report, stages
from jaxcompress.runner.metrics_log import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "experiments", "digits_compress.py") + ":runlocal=True"
TINY = ["teacher.steps=30", "teacher.model_kw.features=(32,)", "student.steps=30", "student.model_kw.features=(16,)",
        "prune.steps=30", "prune.update_every=5", "qat.steps=20", "checkpoint_every=10", "log_every=5",
        "evaluate.latency_repeats=2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("run"))
    cfg = config.get_config(DEMO, TINY)
    summary = pipeline.run(cfg, d, progress=False, log=None)
    return cfg, d, summary


@pytest.mark.slow
def test_pipeline_end_to_end(tiny_run):
    cfg, d, summary = tiny_run
    res = summary["stages"]
    assert list(res) == list(cfg.pipeline)
    assert res["student"]["params_count"] < res["teacher"]["params_count"]
    assert abs(res["prune"]["sparsity"] - cfg.prune.sparsity) < 0.01 and res["qat"]["sparsity"] >= res["prune"]["sparsity"]
    assert res["qat"]["bits"] == 4 and res["teacher"]["bits"] == 32
    # the convert stage evaluated the weights read back from the bytes on disk
    art = os.path.join(d, "stages", "convert", "model.jxc")
    assert os.path.getsize(art) == res["convert"]["artifact_bytes"]
    assert res["convert"]["compression_ratio"] if "compression_ratio" in res["convert"] else True
    rows = summary["rows"]
    assert [r["stage"] for r in rows] == ["teacher", "student", "prune", "qat", "convert"]
    assert rows[-1]["compression"] == pytest.approx(4 * res["teacher"]["params_count"] / os.path.getsize(art))
    assert summary["final"]["stage"] == "convert"
    # stage outputs are orbax trees readable by later stages; metrics logged as JSON lines + TensorBoard
    ctx = pipeline.prepare(cfg, d)
    out = stages.load_output(ctx, "convert")
    loaded = export.load(art, like=out.params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(out.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [r["step"] for r in read_jsonl(os.path.join(d, "stages", "prune", "metrics.jsonl")) if r["split"] == "train"]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(d, "stages", "prune", "tb")))


def test_rerun_skips_finished_stages(tiny_run):
    cfg, d, summary = tiny_run
    before = os.path.getmtime(os.path.join(d, "stages", "teacher", "result.json"))
    again = pipeline.run(cfg, d, progress=False, log=None)
    assert os.path.getmtime(os.path.join(d, "stages", "teacher", "result.json")) == before
    assert again["final"] == summary["final"]


def test_report_files_and_json(tiny_run, tmp_path):
    _, d, summary = tiny_run
    j = str(tmp_path / "r.json")
    head = report.report(d, j, log=None)
    for f in ("results.csv", "results.jsonl", "pareto.png"):
        assert os.path.getsize(os.path.join(d, f)) > 0
    written = json.load(open(j))
    assert written["compression_ratio"] == pytest.approx(summary["final"]["compression_ratio"])
    assert written["acc_drop_points"] == pytest.approx(summary["final"]["acc_drop_points"])
    assert written["demo_seconds"] > 0 and head["num_runs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("devices", [8])
def test_one_vs_many_devices_identical(tmp_path, devices):
    assert jax.device_count() >= devices
    sets = TINY + ["pipeline=('teacher', 'prune', 'convert')", "prune.input='teacher'", "prune.teacher=''",
                   "convert.input='prune'"]
    results = {}
    for n in (1, devices):
        cfg = config.get_config(DEMO, sets + [f"num_devices={n}"])
        s = pipeline.run(cfg, str(tmp_path / f"d{n}"), progress=False, log=None)
        ctx = pipeline.prepare(cfg, str(tmp_path / f"d{n}"))
        results[n] = (s, stages.load_output(ctx, "prune").params)
    (s1, p1), (s8, p8) = results[1], results[devices]
    assert s8["devices"] == devices and s1["devices"] == 1
    for st in ("teacher", "prune", "convert"):
        assert s1["stages"][st]["loss"] == pytest.approx(s8["stages"][st]["loss"], abs=1e-5)
        assert s1["stages"][st]["accuracy"] == pytest.approx(s8["stages"][st]["accuracy"], abs=1e-5)
    for (path, a), (_, b) in zip(tree.named_leaves(p1), tree.named_leaves(p8)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=path)


def test_added_ptq_stage_reuses_finished_stages(tiny_run):
    import ml_collections

    from jaxcompress import quantization
    from jaxcompress.runner import schema

    cfg, d, summary = tiny_run
    cfg = config.get_config(DEMO, TINY)
    cfg.ptq8 = ml_collections.ConfigDict({"type": "ptq", "input": "student", "bits": 8})
    cfg.pipeline = ("teacher", "student", "ptq8")
    schema.fill_defaults(cfg)
    before = os.path.getmtime(os.path.join(d, "stages", "student", "result.json"))
    s = pipeline.run(cfg, d, force=True, progress=False, log=None)  # a changed config: needs --force
    assert os.path.getmtime(os.path.join(d, "stages", "student", "result.json")) == before
    ctx = pipeline.prepare(cfg, d)
    student, ptq = stages.load_output(ctx, "student").params, stages.load_output(ctx, "ptq8").params
    ref = quantization.dequantize_tree(quantization.convert(student, quantization.QuantSpec(bits=8)))
    for a, b in zip(jax.tree.leaves(ptq), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert s["stages"]["ptq8"]["bits"] == 8
    assert abs(s["stages"]["ptq8"]["accuracy"] - s["stages"]["student"]["accuracy"]) <= 0.02
