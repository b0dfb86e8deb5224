"""The Table 1 layout and the step-level table, from hand-written metrics."""

import math

import pytest

from iprm.eval.tables import step_table, table1


def test_table1_has_one_row_per_method_and_one_column_per_generator_and_n():
    """weak: bon@4 = 0.2, bon@16 = 0.4 (evaluated up to N = 16 only); strong: bon@4/16/64 = 0.5/0.6/0.7.
    The average skips missing cells: (0.2 + 0.4 + 0.5 + 0.6 + 0.7) / 5 = 0.48."""
    results = {
        "weak": {"bon@4/prm": 0.2, "bon@16/prm": 0.4, "maj@4": 0.1, "oracle@4": 0.9, "bon@4/ref": 0.3},
        "strong": {"bon@4/prm": 0.5, "bon@16/prm": 0.6, "bon@64/prm": 0.7, "wmaj@16/prm": 0.65},
    }
    rows = table1(results, ["prm"], "ref", label="CE")
    assert [r["method"] for r in rows] == [
        "reference-only (ref)",
        "CE best-of-N (prm)",
        "majority voting",
        "CE weighted majority (prm)",
        "oracle (pass@N)",
    ]
    prm = rows[1]
    assert list(prm) == [
        "method",
        "weak@4",
        "weak@16",
        "strong@4",
        "strong@16",
        "strong@64",
        "avg",
    ]
    assert math.isnan(rows[2]["strong@4"])  # evaluated at N = 4, but without majority voting's metric
    assert prm["avg"] == pytest.approx(0.48)
    assert rows[3]["strong@16"] == 0.65 and math.isnan(rows[3]["avg"]) is False


def test_step_table_rows_are_scorers_and_columns_are_generator_metrics():
    results = {
        "weak": {"prm_single": {"f1": 0.5, "tau": 0.4, "step_auroc": 0.8, "step_auroc_tagged": 0.7}},
        "strong": {"prm_single": {"f1": 0.6}, "reference_single": {"f1": 0.1}},
    }
    rows = step_table(results)
    assert [r["step scorer"] for r in rows] == ["prm_single", "reference_single"]
    assert rows[0]["weak F1"] == 0.5 and rows[0]["weak AUROC (misconception)"] == 0.7
    assert rows[0]["strong F1"] == 0.6 and math.isnan(rows[0]["strong τ"])
    assert math.isnan(rows[1]["weak F1"])


def test_table1_columns_are_the_n_each_set_was_evaluated_at():
    """A set of 8 candidates per problem gets @4 and @8; one evaluated at N = 1 only (a problem with a
    single candidate) gets @1."""
    results = {
        "eight": {f"bon@{n}/prm": 0.5 for n in (1, 2, 4, 8)},
        "ragged": {"bon@1/prm": 0.25, "maj@1": 0.25},
    }
    row = table1(results, ["prm"], "ref")[1]
    assert list(row) == ["method", "eight@4", "eight@8", "ragged@1", "avg"]
