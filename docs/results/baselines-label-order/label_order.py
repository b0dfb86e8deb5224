"""How much do Math-Shepherd's labels of a record depend on the labelling order? Label world 0's quarter
(data seed 1) into an empty cache, as a run alone would, and compare with the shared cache, where the sweep
labelled these records in chunks with other records first."""
import sys, tempfile
from pathlib import Path
from iprm.data.datamodule import load_data
from iprm.data.knobs import subsample_instructions
from iprm.scorers.labels import LabellingContext, MonteCarloLabels, LabelCache, record_key
from iprm.tasks.arithmetic import grade

world = Path("/work/main/.cache/iprm/worlds/world-f3e0cd2d8efa")
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
records = subsample_instructions(load_data(str(world / "train.jsonl"), None, True, "\n"), 0.25, seed)
labeller = MonteCarloLabels(8, "hard")
shared = LabellingContext(str(world / "reference"), "\n", grade, world / "labels")
cache = LabelCache(shared.cache_dir / f"math_shepherd-{labeller._digest(shared)}")
assert all(record_key(r) in cache for r in records), "the shared cache lacks some records"
with tempfile.TemporaryDirectory() as tmp:
    alone, cost = labeller.label(records, LabellingContext(str(world / "reference"), "\n", grade, Path(tmp)))
distinct = {record_key(r): r for r in records}
same = total = same_records = 0
for r in alone:
    a, b = list(r.step_values), cache[record_key(r)]["values"]
    same += sum(x == y for x, y in zip(a[:-1], b[:-1])); total += len(a) - 1
    same_records += a == b
print(f"data seed {seed}: {len(alone)} training records ({len(distinct)} distinct), {total} prefix labels (the outcome step left out)")
print(f"labels equal to the shared cache's: {same}/{total} = {same/total:.3f}; records with every label equal: {same_records}/{len(alone)}")
print(f"share good: alone {sum(v for r in alone for v in r.step_values[:-1])/total:.3f}, shared {sum(v for r in alone for v in cache[record_key(r)]['values'][:-1])/total:.3f}")
