"""Sweeps: shard split and merge, skipping finished points, --vectorize equal to sequential and compiled once."""

import os
import textwrap

import numpy as np
import pytest

from jaxcompress.runner import config, pipeline, report, stages, sweep, train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sweep_file(tmp_path, pipeline_, grid, extra=""):
    p = tmp_path / "tiny_sweep.py"
    p.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, "experiments")!r})
        from digits_compress import get_config as _base
        from jaxcompress.runner.sweep import axis, product, zipped

        def get_config(arg=None):
            c = _base("runlocal=True")
            c.pipeline = {pipeline_!r}
            c.teacher.steps = 20
            c.teacher.model_kw.features = (16,)
            c.prune.input = "teacher"
            c.prune.teacher = ""
            c.prune.steps = 20
            c.prune.update_every = 5
            c.prune.distribution = "uniform"
            c.convert.input = "teacher"
            c.checkpoint_every = 10
            c.log_every = 10
            {extra}
            return c

        def get_sweep(arg=None):
            return {grid}
        """))
    return str(p)


def test_points_product():
    pts = sweep.product(sweep.axis("a", [1, 2, 3]), sweep.axis("b", ["x", "y"]))
    assert len(pts) == 6 and pts[0] == {"a": 1, "b": "x"} and pts[-1] == {"a": 3, "b": "y"}
    with pytest.raises(ValueError, match="zipped axes differ in length"):
        sweep.zipped(sweep.axis("a", [1]), sweep.axis("b", [1, 2]))
    assert sweep.parse_shard("2/3") == (2, 3)


def test_shards_split_and_report_merges(tmp_path):
    spec = _sweep_file(tmp_path, ("teacher", "convert"),
                       'product(axis("teacher.lr", [1e-3, 3e-3]), axis("convert.bits", [2, 4]))')
    w = str(tmp_path / "w")
    r0 = sweep.run_sweep(spec, w, shard=(0, 2), progress=False, log=None)
    r1 = sweep.run_sweep(spec, w, shard=(1, 2), progress=False, log=None)
    names = sorted(os.listdir(os.path.join(w, "points")))
    assert len(r0) == len(r1) == 2 and len(names) == 4
    assert sorted(os.path.basename(r["run_dir"]) for r in r0) == names[0::2]
    for n in names:  # each point has its resolved config
        assert os.path.exists(os.path.join(w, "points", n, "config.json"))
    head = report.report(w, str(tmp_path / "r.json"), log=None)
    assert head["num_runs"] == 4
    lines = open(os.path.join(w, "results.jsonl")).read().splitlines()
    assert len(lines) == 4 and os.path.getsize(os.path.join(w, "pareto.png")) > 0
    bits = sorted(int(np.round(float(x.split(",")[5]))) for x in open(os.path.join(w, "results.csv")).read().splitlines()[1:])
    assert bits == [2, 2, 4, 4]
    # rerunning a shard skips its finished points
    mtime = os.path.getmtime(os.path.join(w, "points", names[0], "run.json"))
    again = sweep.run_sweep(spec, w, shard=(0, 2), progress=False, log=None)
    assert len(again) == 2 and os.path.getmtime(os.path.join(w, "points", names[0], "run.json")) == mtime


@pytest.mark.slow
def test_vectorize_equals_sequential_and_compiles_once(tmp_path):
    spec = _sweep_file(tmp_path, ("teacher", "prune"),
                       'zipped(axis("seed", [0, 1, 1]), axis("prune.sparsity", [0.5, 0.5, 0.9]), axis("prune.lr", [1e-3, 3e-3, 3e-3]))')
    seq, vec = str(tmp_path / "seq"), str(tmp_path / "vec")
    sweep.run_sweep(spec, seq, progress=False, log=None)
    train_loop.TRACES["step"] = 0
    sweep.run_sweep(spec, vec, vectorize=True, progress=False, log=None)
    assert train_loop.TRACES["step"] == 2  # one vmapped program per training stage, for all 3 points
    names = sorted(os.listdir(os.path.join(seq, "points")))
    assert len(names) == 3
    sparsities = set()
    for n in names:
        ra = pipeline.read_json(os.path.join(seq, "points", n, "run.json"))
        rb = pipeline.read_json(os.path.join(vec, "points", n, "run.json"))
        for st in ("teacher", "prune"):
            assert ra["stages"][st]["loss"] == pytest.approx(rb["stages"][st]["loss"], abs=1e-5)
            assert ra["stages"][st]["accuracy"] == pytest.approx(rb["stages"][st]["accuracy"], abs=1e-5)
        sparsities.add(round(rb["stages"]["prune"]["sparsity"], 2))
        cfg = config.ml_collections.ConfigDict(ra["config"])
        pa = stages.load_output(pipeline.prepare(cfg, os.path.join(seq, "points", n)), "prune").params
        pb = stages.load_output(pipeline.prepare(cfg, os.path.join(vec, "points", n)), "prune").params
        np.testing.assert_allclose(np.asarray(pa["Dense_0"]["kernel"]), np.asarray(pb["Dense_0"]["kernel"]), atol=1e-5)
    assert sparsities == {0.5, 0.9}
