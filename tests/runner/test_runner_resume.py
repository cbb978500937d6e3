"""kill -9 in the middle of a training stage, rerun the same command: bit-identical results."""

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMD = [sys.executable, "-m", "jaxcompress.cli", "run", os.path.join(ROOT, "experiments", "digits_compress.py") + ":runlocal=True",
       "--set", "pipeline=('teacher', 'prune', 'convert')", "--set", "teacher.steps=20",
       "--set", "teacher.model_kw.features=(16,)", "--set", "prune.input='teacher'", "--set", "prune.teacher=''",
       "--set", "prune.steps=1500", "--set", "prune.update_every=50", "--set", "checkpoint_every=100",
       "--set", "log_every=100", "--set", "convert.input='prune'"]


def _env(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAXCOMPRESS_PROGRESS="0")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _committed(ckpt_root):
    if not os.path.isdir(ckpt_root):
        return []
    out = []
    for key in os.listdir(ckpt_root):
        out += [int(d) for d in os.listdir(os.path.join(ckpt_root, key)) if d.isdigit()]
    return out


def test_kill_and_resume_is_bit_identical(tmp_path):
    env = _env(tmp_path)
    ref, w = str(tmp_path / "ref"), str(tmp_path / "killed")
    subprocess.run(CMD + ["--workdir", ref], env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(CMD + ["--workdir", w], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(w, "stages", "prune", "ckpt")
    t0 = time.time()
    while not _committed(ckpt) and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9 in the middle of the prune stage
    proc.wait()
    assert _committed(ckpt), "no checkpoint was written before the process ended"
    assert not os.path.exists(os.path.join(w, "stages", "prune", "result.json")), "the stage finished before the kill"

    out = subprocess.run(CMD + ["--workdir", w], env=env, check=True, capture_output=True, text=True, timeout=600)
    res = {d: json.load(open(os.path.join(d, "stages", "prune", "result.json"))) for d in (ref, w)}
    assert res[w]["resumed_from"] > 0 and res[ref]["resumed_from"] == 0
    for k in ("accuracy", "loss", "sparsity", "final_train_loss"):
        assert res[w][k] == res[ref][k], k
    with open(os.path.join(ref, "stages", "convert", "model.jxc"), "rb") as a, \
            open(os.path.join(w, "stages", "convert", "model.jxc"), "rb") as b:
        assert a.read() == b.read()  # bit-identical weights
    assert "[convert]" in out.stdout
