"""Over-optimisation on a hand-made predictions file: who wins as N grows, and remedies chosen on dev."""

import json

import pytest

from iprm.analysis.overoptimisation import main, problem_outcomes, read_predictions, remedies_table, winners
from iprm.errors import IPRMError

# (problem, answer, correct, first wrong step's tag or None, PRM score, reference score)
CANDIDATES = [
    ("a", "5", True, None, 1.0, 0.0),
    ("a", "7", False, "", 0.0, 0.0),  # noise: an untagged wrong step
    ("a", "9", False, "borrow", 2.0, -10.0),  # the misconception
    ("a", "5", True, None, 0.5, 0.0),
    ("b", None, False, "", 3.0, -10.0),  # no answer extracted
    ("b", "12", True, None, 1.0, 0.0),
    ("b", "12", True, None, 0.2, 0.0),
    ("b", "13", False, "", 0.0, 0.0),
]


def _write(path) -> None:
    lines = []
    for problem, answer, correct, tag, prm, reference in CANDIDATES:
        labels, tags = [True, True, True], ["", "", ""]
        if tag is not None:
            labels[1], tags[1] = False, tag
        record = {
            "instruction_id": problem, "prompt": f"Q:{problem}", "response": "1+1=2\n2+2=4\nA:4",
            "label": correct, "answer": answer, "step_labels": labels, "step_tags": tags,
            "scores": {"prm_accumulative_min": prm, "reference_accumulative_last": reference},
        }  # fmt: skip
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def test_the_wrong_winners_are_told_apart_and_the_fall_is_counted(tmp_path):
    """N = 2: a picks its correct c0, b its unanswered noise c0 (margin 3 − 1). N = 4: a falls to the
    misconception c2 (margin 2 − 1), b stays wrong: 1 misconception + 1 noise; the misconception fell."""
    _write(tmp_path / "p.jsonl")
    rows = winners(read_predictions(tmp_path / "p.jsonl"), "prm_accumulative_min", [2, 4])
    assert [(r["N"], r["wrong picks"], r["misconception / noise / none"]) for r in rows] == [
        (2, 1, "0/1/0"), (4, 2, "1/1/0")
    ]  # fmt: skip
    assert rows[1]["fell since previous N (misc./noise/none)"] == "1/0/0"
    assert (rows[0]["margin over best correct (mean)"], rows[1]["margin over best correct (mean)"]) == (
        2.0,
        1.5,
    )
    assert rows[1]["wrong picks without an answer"] == 1 and rows[1]["wrong picks' steps"] == 3


def test_remedies_are_chosen_on_dev_and_reported_on_test_at_every_n(tmp_path, capsys):
    """Plain best-of-N: 1/2 at N = 2, 0 at N = 4. Weighted majority is right on both at both N (a: σ(1) +
    σ(.5) for "5" against σ(2) for "9"; b: the unanswered candidate abstains), as is plain majority voting:
    the tie goes to the simpler rule, majority, listed first. Mixing in the reference's likelihood (λ = 1)
    sinks both high-scoring wrong candidates: right on both at N = 4."""
    _write(tmp_path / "p.jsonl")
    data = read_predictions(tmp_path / "p.jsonl")
    rows = {r["remedy"]: r for r in remedies_table(data, data, "prm_accumulative_min",
                                                   "reference_accumulative_last", [2, 4], [1.0])}  # fmt: skip
    assert (rows["best"]["test@2"], rows["best"]["test@4"]) == (0.5, 0.0)
    assert (rows["weighted_majority"]["test@2"], rows["weighted_majority"]["test@4"]) == (1.0, 1.0)
    assert rows["mix λ=1"]["test@4"] == 1.0
    assert (rows["majority"]["test@2"], rows["majority"]["test@4"]) == (1.0, 1.0)
    assert [name for name, r in rows.items() if r["chosen on dev"]] == ["majority"]
    text = main([str(tmp_path / "p.jsonl"), "--dev", str(tmp_path / "p.jsonl"), "--ns", "2", "4"])
    assert "| majority | 1.000 | 1.000 | 1.000 | ✓ |" in text


def test_a_file_without_scores_is_refused_with_its_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "Q", "response": "A:1", "label": True}) + "\n")
    with pytest.raises(IPRMError, match=r"bad.jsonl, line 1, field 'scores'"):
        read_predictions(tmp_path / "bad.jsonl")


def test_several_runs_choose_one_rule_on_dev_and_report_mean_and_spread(tmp_path):
    """Two runs (the same candidates twice): one rule chosen on the runs' mean dev accuracy, test accuracy as
    mean ± std with on how many runs it beats plain best-of-N; majority voting is a rule like the others."""
    _write(tmp_path / "p.jsonl")
    files = [str(tmp_path / "p.jsonl")] * 2
    csv_path = tmp_path / "remedies.csv"
    text = main([*files, "--dev", *files, "--ns", "2", "4", "--lambdas", "1", "--csv", str(csv_path)])
    pooled = text.split("## Which wrong candidates win")[0]
    assert "## Remedies over 2 runs (one rule chosen on dev for all)" in pooled
    assert "| weighted_majority | 1.000 | 1.000 ± 0.000 (2/2 > best) | 1.000 ± 0.000 (2/2 > best) |" in pooled
    assert "| best | 0.250 | 0.500 ± 0.000 (0/2 > best) | 0.000 ± 0.000 (0/2 > best) |" in pooled
    # The wrong winners summed over the two runs: at N = 4 each has a misconception and a noise winner, and
    # the misconception fell since N = 2; shape and margin averaged over the wrong picks (1.5, as each run's).
    assert "| 4 | 4 | 4 | 2/2/0 | 2/0/0 | 3.000 | 15.000 | 2 | 1.500 |" in text
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "predictions,remedy,split,N,accuracy"
    assert len(rows) == 1 + 2 * 5 * 3  # 2 runs × 5 rules × (test at 2 N, and dev)
    with pytest.raises(SystemExit):
        main([*files, "--dev", files[0]])


def test_per_problem_outcomes_average_to_the_table_and_the_chosen_rule_gets_an_interval(tmp_path):
    """Every rule's per-problem outcomes average to its accuracy in the remedies table; over runs labelled
    WORLD/SEED the dev-chosen rule is set against best-of-N and majority with a paired interval: majority
    − best is +1 at N = 4 on every run, so its interval is [+1, +1]."""
    _write(tmp_path / "p.jsonl")
    data = read_predictions(tmp_path / "p.jsonl")
    table = remedies_table(data, None, "prm_accumulative_min", "reference_accumulative_last", [2, 4], [1.0])
    found = problem_outcomes(data, "prm_accumulative_min", "reference_accumulative_last", [2, 4], [1.0])
    for row in table:
        for n in (2, 4):
            assert found[row["remedy"], n].mean() == row[f"test@{n}"]
    files = [str(tmp_path / "p.jsonl")] * 3
    text = main([*files, "--dev", *files, "--ns", "2", "4", "--lambdas", "1", "--runs", "0/0", "0/1", "1/0"])
    assert (
        "## `majority` against best-of-N and majority voting (paired, 95 % interval; worlds: 2, runs: 3)"
        in text
    )
    assert "| 4 | +1.000 [+1.000, +1.000] | +0.000 [+0.000, +0.000] | -1.000 [-1.000, -1.000] |" in text


def test_another_scorer_of_the_same_predictions_is_a_rule_too(tmp_path):
    """`--other-scorers reference_accumulative_last`: best-of-N by the reference's score (ties → the earliest)
    picks a's c0 and b's c1, right on both at N = 2 and 4; a scorer the file lacks is refused."""
    _write(tmp_path / "p.jsonl")
    text = main(
        [str(tmp_path / "p.jsonl"), "--ns", "2", "4", "--other-scorers", "reference_accumulative_last"]
    )
    assert "| bon:reference_accumulative_last | 1.000 | 1.000 |" in text
    with pytest.raises(SystemExit):
        main([str(tmp_path / "p.jsonl"), "--other-scorers", "policy_accumulative_min"])
