"""The paper's Table 1 layout and the step-level table, from the flat metrics of every best-of-N set.

Table 1: one row per method (reference-only, the implicit PRM's best-of-N, majority voting, weighted
majority voting with the PRM, oracle), one column per generator × N, plus the average over columns. The
columns are the N a set was really evaluated at: those of `TABLE1_NS` it has, and its largest N besides
when that is not among them (a set of 8 candidates per problem gets @4 and @8, never an empty @64).
Step table: one row per step scorer, per generator the ProcessBench F1 (at τ chosen on the dev sets,
`iprm.eval.callback`), that τ, the step AUROC and the step AUROC restricted to steps where the
misconception applies.
"""

import math

from iprm.eval.report import finite_mean

TABLE1_NS = (4, 16, 64)
PROCESS_COLUMNS = {
    "f1": "F1",
    "tau": "τ",
    "step_auroc": "AUROC",
    "step_auroc_tagged": "AUROC (misconception)",
}


def evaluated_ns(metrics: dict[str, float]) -> list[int]:
    """The Table 1 columns of one set: the N of `TABLE1_NS` its metrics have, then its largest N if that
    is not among them."""
    available = sorted({int(key.split("@")[1].split("/")[0]) for key in metrics if "@" in key})
    ns = [n for n in TABLE1_NS if n in available]
    return ns + available[-1:] if available and available[-1] not in ns else ns


def table1(
    results: dict[str, dict[str, float]],
    prm_scorers: list[str],
    reference_scorer: str | None,
    label: str = "PRM",
) -> list[dict]:
    """`results` maps each set (generator) to its flat selection metrics (`bon@16/<scorer>`, `maj@16`, …);
    no reference-only row where `reference_scorer` is None (a model without one)."""
    methods = []
    if reference_scorer is not None:
        methods += [(f"reference-only ({reference_scorer})", f"bon@{{n}}/{reference_scorer}")]
    methods += [(f"{label} best-of-N ({s})", f"bon@{{n}}/{s}") for s in prm_scorers]
    methods += [("majority voting", "maj@{n}")]
    methods += [(f"{label} weighted majority ({s})", f"wmaj@{{n}}/{s}") for s in prm_scorers]
    methods += [("oracle (pass@N)", "oracle@{n}")]
    rows = []
    for name, pattern in methods:
        row: dict = {"method": name}
        for generator, metrics in results.items():
            for n in evaluated_ns(metrics):
                row[f"{generator}@{n}"] = float(metrics.get(pattern.format(n=n), math.nan))
        row["avg"] = finite_mean([v for k, v in row.items() if k != "method"])
        rows.append(row)
    return rows


def step_table(results: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """`results` maps each set to {step scorer: {"f1", "tau", "step_auroc", "step_auroc_tagged"}}."""
    scorers = list(dict.fromkeys(s for by_scorer in results.values() for s in by_scorer))
    rows = []
    for scorer in scorers:
        row: dict = {"step scorer": scorer}
        for generator, by_scorer in results.items():
            for key, title in PROCESS_COLUMNS.items():
                row[f"{generator} {title}"] = float(by_scorer.get(scorer, {}).get(key, math.nan))
        rows.append(row)
    return rows


def split_by_set(metrics: dict[str, float], stage: str) -> tuple[dict, dict]:
    """A run's flat metrics (`<stage>/<set>/<key>`, as in its `<stage>-metrics.json`) per best-of-N set,
    in the inputs' forms: {set: selection metrics (`bon@16/<scorer>`, `maj@16`, …)} for `table1` and
    `iprm.eval.report.best_of_n_figure`, and {set: {step scorer: {"f1", "tau", …}}} for `step_table`."""
    selection: dict[str, dict[str, float]] = {}
    process: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        prefix, _, rest = key.partition("/")
        name, _, metric = rest.partition("/")
        if prefix != stage or not metric:
            continue
        if metric.startswith("process/"):
            _, scorer, field = metric.split("/")
            process.setdefault(name, {}).setdefault(scorer, {})[field] = value
        else:
            selection.setdefault(name, {})[metric] = value
    return selection, process
