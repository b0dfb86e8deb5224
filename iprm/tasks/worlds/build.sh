#!/usr/bin/env bash
# How the shipped worlds were made, on a machine with a GPU, from the repository root:
#   OUT=/tmp/out bash iprm/tasks/worlds/build.sh
# 1. calibrate the weak generator: train each candidate policy and keep the one whose pass@1 is closest
#    to 0.2 (iprm.tasks.calibrate); 2. build worlds 0, 1, 2 with it, and world 0 a second time under other
#    matmul kernels (TF32), to measure how far two realisations of one seed drift; 3. pack worlds 0-2 into
#    OUT with their checksums.
set -uo pipefail
OUT=${OUT:?set OUT to an output folder}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=2
LOGS=/tmp/iprm-logs
mkdir -p "$OUT" "$LOGS/calibration"
# A first round (5000-20000 problems, 1-2 epochs, lr 1e-3-2e-3, misconception 0.7-0.9, widths 96-128)
# reached pass@1 0.01-0.09, mostly noise: the weak policy needs more training than that.
WEAK=(
  '{"misconception_rate": 0.8, "problems": 30000, "epochs": 2, "lr": 1e-3}'
  '{"misconception_rate": 0.7, "problems": 20000, "epochs": 2, "lr": 1e-3}'
  '{"misconception_rate": 0.7, "problems": 30000, "epochs": 2, "lr": 1e-3}'
  '{"misconception_rate": 0.6, "problems": 20000, "epochs": 2, "lr": 1e-3}'
  '{"misconception_rate": 0.8, "problems": 20000, "epochs": 3, "lr": 1e-3}'
  '{"misconception_rate": 0.6, "problems": 30000, "epochs": 2, "lr": 1e-3}'
  '{"misconception_rate": 0.7, "problems": 40000, "epochs": 1, "lr": 1e-3}'
  '{"misconception_rate": 0.8, "problems": 40000, "epochs": 2, "lr": 1e-3}'
)
for i in "${!WEAK[@]}"; do
  python -m iprm.tasks.calibrate --candidates "[${WEAK[$i]}]" --target 0.2 --device "$DEVICE" \
    --output "$LOGS/calibration/$i.json" >"$LOGS/calibration-$i.log" 2>&1 &
done
wait
GENERATORS=$(python - <<'PY'
import glob, json
results = [json.load(open(p))["best"] for p in sorted(glob.glob("/tmp/iprm-logs/calibration/*.json"))]
best = min(results, key=lambda r: abs(r["pass@1"] - 0.2))
print(json.dumps({"weak": {"policy": best["policy"]}, "medium": {"policy": None},
                  "strong": {"policy": {"misconception_rate": 0.3, "problems": 60000}}}))
PY
)
echo "generators: $GENERATORS" | tee "$LOGS/generators.log"
build() {  # seed, root, log name, pack (yes/no), [extra environment]
  env ${5:-} python -m iprm.tasks.world --seed "$1" --device "$DEVICE" --root "$2" --generators "$GENERATORS" \
    >"$LOGS/$3.log" 2>&1
  # The build prints its directory first; a root reused from an earlier round may hold other worlds.
  [ "$4" = no ] || python -m iprm.tasks.shipped pack "$(head -n 1 "$LOGS/$3.log")" --destination "$OUT/$3" \
    >>"$LOGS/$3.log" 2>&1
  echo "$3 finished: $?"
}
for seed in 0 1 2; do build "$seed" "/tmp/iprm-worlds/$seed" "world$seed" yes & done
build 0 /tmp/iprm-worlds/0-tf32 world0-tf32 no TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 &
wait
cp "$(head -n 1 "$LOGS/world0-tf32.log")/manifest.json" "$OUT/manifest-world0-tf32.json"
tail -n 60 "$LOGS"/*.log "$LOGS"/calibration/*.json >"$OUT/logs.txt"
