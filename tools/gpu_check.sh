#!/usr/bin/env bash
# The GPU check: what the study needs measured, in one call of at most 540 s on a lent GPU:
#     OUT=gpu_out bash tools/gpu_check.sh DATA          # from a clone
# DATA: a CIFAR-10 folder with all 50,000 training images (cifar.py downloads them there if it
# holds none). Everything measured lands in $OUT (default gpu_out), each file small: the
# machine, the CUDA tests' log, the three benchmark runs, the study's log and Table 1.
# The study's checkpoint (90 MB at full width) stays in a temporary folder.
#   1. no GPU (torch.cuda.is_available() is False): one line, and nothing else is run;
#   2. the CUDA tests (tests/test_cuda.py) must all pass, none skipped;
#   3. tools/bench.py on CUDA at full width, batch 32: eager float32, --amp, --compile (images/s);
#   4. the study (--iters 50000 --batch 32 --device cuda, full width) on the faster float32
#      path whose test passed, until its time is up: then SIGTERM, it saves, and the log says
#      how far it got and at what pace; Table 1 of what it ran.
# It exits 0 only when every step did its job. Each step's time limit is the smaller of its
# own and what is left of the 540 s.
set -uo pipefail
DATA="$(realpath -m "${1:-./data}")"
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-python3}"
$PY -c "import sys, torch
sys.exit(0 if torch.cuda.is_available() else
         'tools/gpu_check.sh: no GPU here (torch.cuda.is_available() is False): nothing was run')" \
  || exit 1

END=$((SECONDS + 540))
limit() {  # the smaller of $1 and what is left, and at least 1 (timeout 0 would mean none)
  local left=$((END - SECONDS)); left=$(( left < $1 ? left : $1 )); echo $(( left > 1 ? left : 1 ))
}
FAILED=()
mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== data: $DATA"
timeout "$(limit 45)" $PY cifar.py "$DATA" > "$OUT/data.log" 2>&1 || FAILED+=("data")
cat "$OUT/data.log"

echo "== CUDA tests"
timeout "$(limit 100)" $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
  > "$OUT/tests.log" 2>&1
summary="$(tail -1 "$OUT/tests.log")"
echo "$summary"
TESTS_OK=0
grep -Eq '^=* *[0-9]+ passed(, [0-9]+ warnings?)? in ' <<< "$summary" && TESTS_OK=1  # no skip
[ $TESTS_OK = 1 ] || FAILED+=("CUDA tests: $summary")

echo "== tools/bench.py on CUDA, width 64, batch 32"
declare -A IPS
for path in eager amp compile; do
  flag=""; [ $path = eager ] || flag="--$path"
  cap=35; [ $path = compile ] && cap=75  # compiling a CUDA graph takes a minute
  timeout "$(limit $cap)" $PY -m tools.bench --device cuda --width 64 --batch 32 --rounds 3 \
    --steps 50 $flag > "$OUT/bench_$path.log" 2>&1
  IPS[$path]="$(sed -n 's/^project: *\([0-9]*\) img\/s.*/\1/p' "$OUT/bench_$path.log")"
  echo "$path: ${IPS[$path]:-no figure} img/s (textbook loop:" \
       "$(sed -n 's/^textbook: *\([0-9]*\) img\/s.*/\1/p' "$OUT/bench_$path.log") img/s)"
  [ -n "${IPS[$path]}" ] || FAILED+=("tools/bench.py $flag: no figure (see bench_$path.log)")
done
FAST=""  # --amp changes the numbers: the study stays in float32
if [ $TESTS_OK = 1 ] && [ -n "${IPS[compile]}" ] && [ -n "${IPS[eager]}" ] \
   && [ "${IPS[compile]}" -gt "${IPS[eager]}" ]; then FAST="--compile"; fi

echo "== the study: --iters 50000 --batch 32 --device cuda ${FAST:-(eager)}"
TMP="$(mktemp -d)"
start=$SECONDS
timeout --preserve-status -s TERM -k 15 "$(limit $((END - SECONDS - 25)))" \
  $PY train.py --data "$DATA" --no-download --iters 50000 --batch 32 --device cuda \
  --ckpt "$TMP/study.pt" $FAST > "$OUT/study.log" 2>&1
status=$?
echo "train.py exit status $status after $((SECONDS - start)) s (143: stopped by the time" \
     "limit, and saved)" | tee -a "$OUT/study.log"
grep -E '^it ' "$OUT/study.log" | tail -1
timeout "$(limit 10)" $PY -c "
import train
ckpt, model = train.load('$TMP/study.pt')
print(model.name, 'at iteration', ckpt['iteration'], 'of 50000;', ckpt['provenance'])
print(train.table(ckpt['history']))" > "$OUT/table1.md" 2>&1 || FAILED+=("the study saved nothing")
cat "$OUT/table1.md"
rm -rf "$TMP"
[ $status = 0 ] || [ $status = 143 ] || FAILED+=("train.py exit status $status")

if [ ${#FAILED[@]} = 0 ]; then echo "tools/gpu_check.sh: every step did its job"; exit 0; fi
printf 'tools/gpu_check.sh: FAILED: %s\n' "${FAILED[@]}"
exit 1
