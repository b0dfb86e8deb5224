#!/bin/bash
# AutoPSV's threshold θ and Math-Shepherd's K, chosen on the dev sets (validation after the epoch), world 0,
# seed 0, a quarter of the instructions; the test sets are not touched. Starts when driver B has finished.
while kill -0 8008 2>/dev/null; do sleep 20; done
cd /work/wt-run
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=/work/wt-run
ORM=/work/main/runs/sweeps/baselines-eos/orm,instruction_fraction=0.25/seed0/orm
run() {  # name, extra flags
  out=/work/main/runs/tune/$1; shift
  [ -e $out/done ] && return
  rm -rf $out; mkdir -p $out
  /work/main/.venv/bin/python -m iprm fit --config configs/quickstart.yaml "$@" \
    --data.instruction_fraction 0.25 --data.world.root /work/main/.cache/iprm/worlds \
    --trainer.default_root_dir $out --trainer.logger.init_args.save_dir $out > $out/fit.log 2>&1 && touch $out/done
  echo "$out $(date)"
}
echo "== tune $(date) at $(git rev-parse --short HEAD)"
for t in 0.05 0.1 0.2 0.3 0.5; do run autopsv-$t --config configs/baselines/autopsv.yaml --data.step_labels.orm $ORM --data.step_labels.threshold $t; done
for k in 8 4 16; do run math_shepherd-K$k --config configs/baselines/math_shepherd.yaml --data.step_labels.completions $k; done
echo "== tune done $(date)"
