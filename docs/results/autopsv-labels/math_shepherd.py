"""Math-Shepherd's labels (hard, K completions) of a world's training quarter, reported by the same function
as every labeller's (`iprm.scorers.label_report`): share good and agreement with the true step labels.

    python docs/results/autopsv-labels/math_shepherd.py WORLD_DIR K CACHE_DIR [DATA_SEED]
"""

import sys
import time
from pathlib import Path

from iprm.data.datamodule import load_data
from iprm.data.knobs import subsample_instructions
from iprm.scorers.label_report import format_report
from iprm.scorers.labels import LabellingContext, MonteCarloLabels
from iprm.tasks.arithmetic import grade

world, k, cache = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
records = subsample_instructions(load_data(str(world / "train.jsonl"), None, True, "\n"), 0.25, seed)
start = time.time()
context = LabellingContext(str(world / "reference"), "\n", grade, cache)
_, cost = MonteCarloLabels(k, "hard").label(records, context)
seconds = time.time() - start
print(f"K = {k}: {format_report(cost['report'])}; {cost['distinct_records']} distinct; {seconds:.0f} s")
