#!/bin/bash
# one process per world, one thread each; seed 0 of every point first, then seeds 1 and 2
w=$1
cd /work/wt-run
export OMP_NUM_THREADS=1 PYTHONPATH=/work/wt-run
for s in 1 3; do
  /work/main/.venv/bin/python -m iprm.sweep /work/main/runs/tmp/baselines_worlds-w$w.yaml --seeds $s \
    --output /work/main/runs/sweeps/baselines_worlds-w$w --trainer.limit_val_batches 0 \
    --data.world.root /work/main/.cache/iprm/worlds
done
