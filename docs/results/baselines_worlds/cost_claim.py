"""Per world: the implicit PRM at 1/4 of the instructions against every explicit PRM at all of them."""
import csv, statistics as st
from collections import defaultdict
dirs = ["runs/sweeps/baselines-eos", "runs/sweeps/baselines_worlds", "runs/sweeps/baselines_worlds-w1", "runs/sweeps/baselines_worlds-w2"]
g = defaultdict(list)
for d in dirs:
    for r in csv.DictReader(open(f"{d}/results.csv")):
        parts = r["point"].split(","); m = parts[0]
        w = next((p.split("=")[1] for p in parts if p.startswith("seed=")), "0")
        f = next(p.split("=")[1] for p in parts if p.startswith("instruction_fraction="))
        g[(m, f, w)].append(r)
mean = lambda rows, k: st.fmean(float(r[k]) for r in rows)
for w in "012":
    imp = g[("implicit_ce", "0.25", w)]
    line = [f"world {w}: implicit 1/4 {mean(imp,'medium/bon@16/method'):.3f} ({len(imp)} seeds, {mean(imp,'flops/total'):.1e})"]
    for m in ["math_shepherd", "oracle", "orm", "autopsv"]:
        rows = g[(m, "1.0", w)]
        if rows:
            line.append(f"{m} all {mean(rows,'medium/bon@16/method'):.3f} ({len(rows)}, {mean(rows,'flops/total'):.1e}, x{mean(rows,'flops/total')/mean(imp,'flops/total'):.1f})")
    print("; ".join(line))
