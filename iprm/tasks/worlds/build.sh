#!/usr/bin/env bash
# How the shipped worlds were made: build worlds 0, 1, 2 of the default settings (and a second build of
# world 0 under other matmul kernels, TF32, to measure how far two realisations of one seed drift), then
# pack each into OUT with its checksum. Run from the repository root on a machine with a GPU:
#   OUT=/tmp/out bash iprm/tasks/worlds/build.sh
set -uo pipefail
OUT=${OUT:?set OUT to an output folder}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$OUT" /tmp/iprm-logs
build() {  # seed, root, log name, pack (yes/no), [extra environment]
    env ${5:-} python -m iprm.tasks.world --seed "$1" --device "$DEVICE" --root "$2" >"/tmp/iprm-logs/$3.log" 2>&1
    [ "$4" = yes ] && python -m iprm.tasks.shipped pack "$2"/world-*/ --destination "$OUT/$3" >>"/tmp/iprm-logs/$3.log" 2>&1
    echo "$3 finished: $?"
}
for seed in 0 1 2; do build "$seed" "/tmp/iprm-worlds/$seed" "world$seed" yes & done
build 0 /tmp/iprm-worlds/0-tf32 world0-tf32 no TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 &
wait
cp /tmp/iprm-worlds/0-tf32/world-*/manifest.json "$OUT/manifest-world0-tf32.json" 2>/dev/null
tail -n 40 /tmp/iprm-logs/*.log >"$OUT/logs.txt"
