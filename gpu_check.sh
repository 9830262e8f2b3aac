#!/usr/bin/env bash
# The GPU check: one call on a lent GPU (at most 10 minutes), run from a clone:
#     bash gpu_check.sh [DATA]
# DATA is the CIFAR-10 folder (default ./data, downloaded there as train.py does when it holds
# none). On a machine without internet, carry a folder that holds cifar-10-batches-bin (or the
# official cifar-10-binary.tar.gz) and pass it. Everything it measures lands under $OUT.
#   1. reads the data (downloading it if needed);
#   2. runs the CUDA tests (tests/test_cuda.py: loader invariants, CUDA against the CPU in
#      float64, --amp and --compile against eager, no host-device sync in the loop, resume);
#   3. times bench.py on CUDA at full width: eager float32, --amp, and --compile (torch.compile
#      mode reduce-overhead: CUDA graphs, if torch manages to capture the step);
#   4. runs the study (--iters 50000 --batch 32, full width) on the fastest path that the tests
#      of step 2 passed, stopped by SIGTERM when its time is up (it then saves, and a second
#      call continues it with --resume), and prints Table 1 from the checkpoint.
#
# The next step, once the eager measurement shows the step is launch-bound (at batch 32 a
# ResNet-18 step is some 60 small kernels, microseconds each, and the GPU waits on Python):
# a hand-captured torch.cuda.CUDAGraph of the whole step. Static input buffers (x, y) that
# the loader copies into; forward, backward and the multi-tensor SGD update captured as one
# graph, after a few warm-up steps on a side stream; the learning rate as a 0-dim device tensor
# (so the drop at 32,000 is a fill_, not a recapture) and the BatchNorm running statistics
# updated in place inside the graph. Exactness: the graph replays the same kernels as eager,
# so it must match eager float32 within the eager-vs-textbook tolerance, and resume must stay
# bit-exact (the checkpoint holds the same tensors). Where capture fails (an op that syncs,
# an old driver), train.py falls back to eager with one line saying so. It is not written
# yet: code that has never run on a GPU does not ship.
set -uo pipefail
DATA_ARG="$(realpath -m "${1:-./data}")"
cd "$(dirname "$0")"
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
PY=python3
{
  date
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== 1. data"
DATA="$DATA_ARG"
$PY cifar.py "$DATA" 2>&1 | tail -2 || exit 1

echo "== 2. CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/tests.log" 2>&1
tests=$?
tail -5 "$OUT/tests.log"

echo "== 3. bench.py on CUDA, width 64, batch 32"
for flags in "" "--amp" "--compile"; do
  timeout 90 $PY bench.py --device cuda --width 64 --rounds 5 --steps 50 $flags \
    > "$OUT/bench${flags:-_eager}.log" 2>&1
  echo "-- ${flags:-eager}"; tail -6 "$OUT/bench${flags:-_eager}.log"
done

echo "== 4. the study, --iters 50000 --batch 32, full width"
FAST=""  # eager float32 unless --compile passed its test; --amp changes the numbers: not used
if [ $tests = 0 ] && grep -q "speed-up" "$OUT/bench--compile.log"; then FAST="--compile"; fi
RESUME=""; [ -f "$OUT/study.pt" ] && RESUME="--resume"
timeout -s TERM "${STUDY_SECONDS:-300}" $PY train.py --data "$DATA" --no-download --iters 50000 \
  --batch 32 --ckpt "$OUT/study.pt" $FAST $RESUME > "$OUT/study.log" 2>&1
echo "train.py exit status $? (124: stopped by the time limit, and saved; continue with --resume)"
tail -3 "$OUT/study.log"
$PY -c "
import checkpoint, study, resnet18
ckpt, run = checkpoint.load_valid('$OUT/study.pt')
print(resnet18.describe(run), 'at iteration', ckpt['iteration'], 'flags', '$FAST' or 'eager')
print(study.table(ckpt['history']))"
