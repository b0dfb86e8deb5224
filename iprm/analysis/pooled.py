"""The over-optimisation analysis (`iprm.analysis.overoptimisation`) pooled over runs (worlds × seeds): which
wrong candidates win, summed; each remedy's test accuracy as mean ± std with the runs above best-of-N and one
rule chosen on the runs' mean dev accuracy; and that rule against best-of-N and majority voting as paired
differences with the two-way bootstrap interval of `iprm.analysis.interval`."""

import math
import statistics

import numpy as np

from iprm.analysis.interval import paired_difference


def pooled_winners(per_run: list[list[dict]]) -> list[dict]:
    """`winners` over several runs, in its columns: counts summed, the wrong picks' shape and margin averaged
    over every wrong pick (each run's mean weighted by its wrong picks)."""
    pooled = []
    for rows in zip(*per_run, strict=True):
        out: dict = {}
        for key, first in rows[0].items():
            if key == "N" or first == "–":
                out[key] = first
            elif isinstance(first, str):  # "misconception/noise/none" counts
                counts = [list(map(int, r[key].split("/"))) for r in rows]
                out[key] = "/".join(str(sum(c[i] for c in counts)) for i in range(3))
            elif key in ("problems", "wrong picks", "wrong picks without an answer"):
                out[key] = sum(r[key] for r in rows)
            else:
                weighted = [
                    (r[key], r["wrong picks"]) for r in rows if r["wrong picks"] and not math.isnan(r[key])
                ]
                total = sum(w for _, w in weighted)
                out[key] = sum(v * w for v, w in weighted) / total if total else math.nan
        pooled.append(out)
    return pooled


def pooled_remedies(tables: list[list[dict]], ns: list[int]) -> list[dict]:
    """The remedies over runs: mean dev accuracy (chooses), test mean ± std at every N, runs above `best`."""
    rows = []
    for i, first in enumerate(tables[0]):
        per_run = [table[i] for table in tables]
        row: dict = {"remedy": first["remedy"]}
        if "dev (mean over N)" in first:
            row["dev (mean over runs and N)"] = statistics.fmean(r["dev (mean over N)"] for r in per_run)
        for n in ns:
            values = [r[f"test@{n}"] for r in per_run]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            above = sum(
                r[f"test@{n}"] > table[0][f"test@{n}"] for r, table in zip(per_run, tables, strict=True)
            )
            row[f"test@{n}"] = f"{statistics.fmean(values):.3f} ± {spread:.3f} ({above}/{len(values)} > best)"
        rows.append(row)
    if "dev (mean over runs and N)" in rows[0]:
        chosen = max(range(len(rows)), key=lambda i: (rows[i]["dev (mean over runs and N)"], -i))
        for i, row in enumerate(rows):
            row["chosen on dev"] = "✓" if i == chosen else ""
    return rows


def chosen_differences(
    outcomes: list[dict[tuple[str, int], np.ndarray]], worlds: list[str], chosen: str, ns: list[int]
) -> list[dict]:
    """The dev-chosen rule against plain best-of-N and against majority voting, and best-of-N against
    majority, at every N: paired differences over the runs with the two-way bootstrap interval of
    `iprm.analysis.interval` (worlds as strata, seeds and problems resampled)."""
    rows = []
    for n in ns:
        row: dict = {"N": n}
        for a, b in ((chosen, "best"), (chosen, "majority"), ("best", "majority")):
            per_world = []
            for world in dict.fromkeys(worlds):
                runs = [o for o, w in zip(outcomes, worlds, strict=True) if w == world]
                per_world.append((np.stack([o[a, n] for o in runs]), np.stack([o[b, n] for o in runs])))
            d = paired_difference(per_world, paired=True)
            row[f"{a} − {b}"] = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
        rows.append(row)
    return rows
