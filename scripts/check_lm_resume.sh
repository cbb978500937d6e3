# kill -9 the float-GPT training of bench_lm.py (--quick) after its step-20 checkpoint, rerun, and compare
# the final params with an uninterrupted run. Prints "bit-identical after kill -9: True" on success.
set -e
cd "$(dirname "$0")/.."
P=".venv/bin/python scripts/bench_lm.py --quick --train-only --steps 40 --checkpoint-every 10 --log-every 10"
rm -rf ${TMPDIR:-/tmp}/lm_resume_a_quick ${TMPDIR:-/tmp}/lm_resume_b_quick
$P --workdir ${TMPDIR:-/tmp}/lm_resume_a > ${TMPDIR:-/tmp}/lm_resume_a.log 2>&1
$P --workdir ${TMPDIR:-/tmp}/lm_resume_b > ${TMPDIR:-/tmp}/lm_resume_b.log 2>&1 &
PID=$!
while ! ls ${TMPDIR:-/tmp}/lm_resume_b_quick/float_ckpt 2>/dev/null | grep -q '^20$'; do sleep 0.2; done
sleep 1.5; kill -9 $PID || true; wait $PID || true
ls ${TMPDIR:-/tmp}/lm_resume_b_quick/float_ckpt
$P --workdir ${TMPDIR:-/tmp}/lm_resume_b > ${TMPDIR:-/tmp}/lm_resume_b2.log 2>&1
grep -h resumed ${TMPDIR:-/tmp}/lm_resume_b2.log
.venv/bin/python -c "
import numpy as np
a=np.load('${TMPDIR:-/tmp}/lm_resume_a_quick/float_params.npz'); b=np.load('${TMPDIR:-/tmp}/lm_resume_b_quick/float_params.npz')
print('bit-identical after kill -9:', all(np.array_equal(a[k], b[k]) for k in a.files), len(a.files))"
