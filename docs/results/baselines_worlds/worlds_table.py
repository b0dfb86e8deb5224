"""Per method × fraction: per-world means over seeds, then mean ± std over worlds, with seed counts."""
import csv, statistics as st, sys
from collections import defaultdict
dirs = {"0": "runs/sweeps/baselines-eos", "1": "runs/sweeps/baselines_worlds", "1b": "runs/sweeps/baselines_worlds-w1", "2b": "runs/sweeps/baselines_worlds-w2", "p": "runs/sweeps/baselines_parameterisation"}
cols = [("medium@16", "medium/bon@16/method"), ("strong@16", "strong/bon@16/method"), ("weak@16", "weak/bon@16/method"),
        ("F1 medium", "medium/process/method/f1"), ("AUROC medium", "medium/process/method/step_auroc"), ("FLOPs", "flops/total")]
data = defaultdict(lambda: defaultdict(list))  # (method, fraction) -> world -> rows
for d in dirs.values():
    for r in csv.DictReader(open(f"{d}/results.csv")):
        parts = r["point"].split(",")
        method = parts[0]
        world = next((p.split("=")[1] for p in parts if p.startswith("seed=")), "0")
        frac = next(p.split("=")[1] for p in parts if p.startswith("instruction_fraction="))
        data[(method, frac)][world].append(r)
names = {"implicit_oracle_labels": "log-ratio on the true step labels", "implicit_mc_labels": "log-ratio on Math-Shepherd's labels", "implicit_ce": "implicit PRM (CE)", "orm": "ORM", "math_shepherd": "Math-Shepherd", "autopsv": "AutoPSV", "oracle": "oracle-label PRM"}
fr = {"0.25": "¼", "0.5": "½", "1.0": "all"}
print("| method · instructions | seeds per world | " + " | ".join(c for c, _ in cols) + " |")
print("|:---|:---|" + "|".join([":---"] * (len(cols) - 1)) + "|---:|")
fracs = sys.argv[1].split(",") if len(sys.argv) > 1 else ["0.25", "0.5", "1.0"]
for frac in fracs:
    for m in names:
        worlds = data[(m, frac)]
        if not worlds: continue
        cells = []
        for c, k in cols:
            means = [st.fmean(float(r[k]) for r in rows) for w, rows in sorted(worlds.items())]
            if c == "FLOPs":
                cells.append(f"{st.fmean(means):.1e}")
            else:
                cells.append(f"{st.fmean(means):.3f} ± {st.stdev(means):.3f}" if len(means) > 1 else f"{means[0]:.3f}")
        seeds = "/".join(str(len(rows)) for w, rows in sorted(worlds.items()))
        print(f"| {names[m]} · {fr[frac]} | {seeds} | " + " | ".join(cells) + " |")
