"""`iprm regimes` on hand-made predictions whose answer is known: a scorer sharp on misconceptions and blind
to noise falls as the noise share grows, the reference's likelihood rises, majority voting stays flat; files
that disagree are refused with their line."""

import csv
import json

import pytest

from iprm.analysis.overoptimisation import read_predictions
from iprm.analysis.regimes import Run, draw, main, merge, pools, randomness, regime_rows
from iprm.errors import IPRMError

# kind → (answer, implicit PRM score, reference log-likelihood, Math-Shepherd score). Every wrong candidate
# answers "20", so a vote only counts correct against wrong: majority cannot see the kind of error.
KINDS = {
    "correct": ("10", 0.0, -1.0, 0.9),
    "misconception": ("20", -5.0, 0.0, 0.1),  # the reference believes it; the log-ratio is sharp on it
    "noise": ("20", 1.0, -10.0, 0.5),  # the reference sees it; the log-ratio, blind, ranks it first
}
SCORERS = {"implicit": "prm_accumulative_min", "reference": "reference_accumulative_last"}
SCORERS["math_shepherd"] = "math_shepherd_step_min"


def _record(problem: str, kind: str, index: int, shepherd: bool = False) -> dict:
    answer, implicit, reference, ms = KINDS[kind]
    labels, tags = [True, True], ["", ""]
    if kind != "correct":
        labels[1], tags[1] = False, "borrow" if kind == "misconception" else ""
    scores = {"math_shepherd_step_min": ms} if shepherd else {
        "prm_accumulative_min": implicit, "reference_accumulative_last": reference,
    }  # fmt: skip
    return {
        "instruction_id": problem, "prompt": f"Q:{problem}\n", "response": f"{kind} {index}\nA:{answer}",
        "label": kind == "correct", "answer": answer, "source": "medium", "step_labels": labels,
        "step_tags": tags, "scores": scores,
    }  # fmt: skip


def _write(path, problems: dict[str, list[str]], shepherd: bool = False):
    lines = [
        json.dumps(_record(p, k, i, shepherd)) for p, kinds in problems.items() for i, k in enumerate(kinds)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# "a": 4 correct, 2 misconception-first, 2 noise-first; "b" has no noise-first candidate, "c" no wrong one:
# both are dropped.
PROBLEMS = {
    "a": ["correct", "misconception", "correct", "noise", "correct", "misconception", "correct", "noise"],
    "b": ["correct", "misconception", "misconception", "correct"],
    "c": ["correct", "correct"],
}
# Wrong candidates among a random 4 of "a"'s 8 (hypergeometric): C(4, w)·C(4, 4 − w) / C(8, 4).
WRONG_OF_4 = [1 / 70, 16 / 70, 36 / 70, 16 / 70, 1 / 70]


def _data(tmp_path):
    implicit = read_predictions(_write(tmp_path / "implicit.jsonl", PROBLEMS))
    shepherd_path = _write(tmp_path / "shepherd.jsonl", PROBLEMS, shepherd=True)
    return merge(implicit, read_predictions(shepherd_path), shepherd_path, "math_shepherd_step_min")


def test_pools_keep_problems_with_both_wrong_kinds_and_draws_follow_the_share(tmp_path):
    data = _data(tmp_path)
    p = pools(data)
    assert p.dropped == 2 and p.sizes.tolist() == [[2, 2]] and p.members.tolist() == [list(range(8))]
    assert p.counts == {"correct": 8, "misconception": 4, "noise": 2, "none": 0}
    assert p.kept_counts == {"correct": 4, "misconception": 2, "noise": 2, "none": 0}
    kinds = {r: data.records[r]["response"].split()[0] for r in range(len(data.records))}
    random = randomness(p, 4, 4000, seed=0)
    for share in (0.0, 0.25, 1.0):
        drawn = [kinds[r] for r in draw(p, share, random).flatten().tolist()]
        wrong = [k for k in drawn if k != "correct"]
        assert drawn.count("correct") / len(drawn) == pytest.approx(0.5, abs=0.01)
        assert wrong.count("noise") / len(wrong) == pytest.approx(share, abs=0.01)
    # N = all candidates: every set holds exactly the problem's correct candidates, once each.
    for rows in draw(p, 0.5, randomness(p, 8, 50, seed=1))[0].tolist():
        assert sorted(r for r in rows if kinds[r] == "correct") == [0, 2, 4, 6]
    with pytest.raises(IPRMError, match="N = 9 exceeds a problem's candidates"):
        randomness(p, 9, 1, seed=0)


def test_blind_to_noise_falls_reference_rises_majority_stays_flat(tmp_path):
    """A random 4 of "a" holds w wrong candidates (`WRONG_OF_4`), each noise-first with probability s. The
    implicit PRM picks a correct one iff w < 4 and none is noise: Σ P(w)(1 − s)^w; the reference's likelihood
    iff w < 4 and none is a misconception: Σ P(w) s^w. Majority counts correct against wrong whatever the
    kind: with the same random numbers at every s it is exactly the same number."""
    run = Run("w", "0", "medium", _data(tmp_path))
    shares = [0.0, 0.25, 0.5, 1.0]
    rows = regime_rows(run, [4], shares, draws=4000, seed=0, scorers=SCORERS)
    acc = {(r["noise_share"], r["method"]): r["accuracy"] for r in rows}
    for s in shares:
        implicit = sum(p * (1 - s) ** w for w, p in enumerate(WRONG_OF_4[:4]))
        assert acc[s, "implicit_bon"] == pytest.approx(implicit, abs=0.02)
        assert acc[s, "reference_bon"] == pytest.approx(
            sum(p * s**w for w, p in enumerate(WRONG_OF_4[:4])), abs=0.02
        )
        assert acc[s, "pass"] == pytest.approx(1 - WRONG_OF_4[4], abs=0.01)
    implicit = [acc[s, "implicit_bon"] for s in shares]
    assert implicit == sorted(implicit, reverse=True) and implicit[0] - implicit[-1] > 0.9
    assert len({acc[s, "majority"] for s in shares}) == 1
    # Math-Shepherd ranks correct > noise > misconception: it only loses when no correct candidate is drawn.
    assert all(acc[s, "math_shepherd_bon"] == acc[s, "pass"] for s in shares)
    assert {r["problems"] for r in rows} == {1}


def test_the_same_seed_gives_the_same_numbers(tmp_path):
    run = Run("w", "0", "medium", _data(tmp_path))
    first, second = (regime_rows(run, [2, 4], [0.5], 50, 3, SCORERS) for _ in range(2))
    assert first == second
    assert first != regime_rows(run, [2, 4], [0.5], 50, 4, SCORERS)


def test_mismatched_text_is_refused_with_file_and_line(tmp_path):
    implicit = read_predictions(_write(tmp_path / "implicit.jsonl", PROBLEMS))
    path = _write(tmp_path / "shepherd.jsonl", PROBLEMS, shepherd=True)
    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    record["response"] = "something else"
    lines[2] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IPRMError, match=r"shepherd\.jsonl, line 3, field 'response'"):
        merge(implicit, read_predictions(path), path, "math_shepherd_step_min")


def test_a_candidate_missing_from_either_file_is_refused(tmp_path):
    implicit = read_predictions(_write(tmp_path / "implicit.jsonl", PROBLEMS))
    fewer = _write(tmp_path / "fewer.jsonl", {**PROBLEMS, "c": ["correct"]}, shepherd=True)
    with pytest.raises(IPRMError, match=r"fewer\.jsonl: no candidate 1 of instruction 'c'"):
        merge(implicit, read_predictions(fewer), fewer, "math_shepherd_step_min")
    more = _write(tmp_path / "more.jsonl", {**PROBLEMS, "d": ["correct"]}, shepherd=True)
    with pytest.raises(IPRMError, match=r"more\.jsonl, line 15: candidate 0 of instruction 'd'"):
        merge(implicit, read_predictions(more), more, "math_shepherd_step_min")
    with pytest.raises(IPRMError, match="no scorer 'math_shepherd_step_min'"):
        merge(implicit, implicit, tmp_path / "implicit.jsonl", "math_shepherd_step_min")


def test_command_writes_csv_table_and_figure_over_runs(tmp_path):
    """Two runs from a pairs CSV (the second scores misconceptions a little higher): the table shows the
    mean ± std over both, the CSV a row per run × N × share × method."""
    _write(tmp_path / "i0.jsonl", PROBLEMS)
    _write(tmp_path / "m.jsonl", PROBLEMS, shepherd=True)
    KINDS["misconception"] = ("20", 0.5, 0.0, 0.1)  # now above the correct candidates' 0
    try:
        _write(tmp_path / "i1.jsonl", PROBLEMS)
    finally:
        KINDS["misconception"] = ("20", -5.0, 0.0, 0.1)
    (tmp_path / "pairs.csv").write_text(
        "world,seed,implicit,math_shepherd\nw0,0,i0.jsonl,m.jsonl\nw0,1,i1.jsonl,m.jsonl\n"
    )
    out = tmp_path / "out"
    main(["--pairs", str(tmp_path / "pairs.csv"), "--output", str(out), "--ns", "2", "4",
          "--shares", "0", "1", "--draws", "20"])  # fmt: skip
    with (out / "regimes.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * 2 * 2 * 6
    assert set(rows[0]) == {"world", "seed", "set", "N", "noise_share", "method", "accuracy", "problems"}
    zero = {r["seed"]: float(r["accuracy"]) for r in rows if r["N"] == "4" and r["noise_share"] == "0.0"
            and r["method"] == "implicit_bon"}  # fmt: skip
    assert zero["0"] > zero["1"]  # run 1's PRM prefers the misconception at s = 0
    text = (out / "regimes.md").read_text()
    assert "## medium (mean ± std over 2 runs)" in text and "| 4 | implicit_bon |" in text
    assert f"{(zero['0'] + zero['1']) / 2:.3f} ± " in text
    assert (out / "regimes.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--implicit", "a.jsonl"], "same number of files"),
        (["--implicit", "a", "b", "--math-shepherd", "c", "d", "--runs", "w0"], "one WORLD/SEED label"),
        (["--pairs", "PAIRS"], r"pairs\.csv, line 1: missing column\(s\) \['math_shepherd'\]"),
        (["--implicit", "nowhere.jsonl", "--math-shepherd", "m.jsonl"], r"nowhere\.jsonl: no such"),
        (["--implicit", "a", "--math-shepherd", "b", "--shares", "1.5"], "--shares must lie in"),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path, argv, message):
    (tmp_path / "pairs.csv").write_text("world,seed,implicit\nw,0,a.jsonl\n")
    argv = [str(tmp_path / "pairs.csv") if a == "PAIRS" else a for a in argv]
    with pytest.raises(IPRMError, match=message):
        main([*argv, "--output", str(tmp_path / "out")])


def test_no_problem_with_both_kinds_is_refused(tmp_path):
    only = {"b": PROBLEMS["b"]}
    implicit = read_predictions(_write(tmp_path / "i.jsonl", only))
    path = _write(tmp_path / "m.jsonl", only, shepherd=True)
    run = Run("w", "0", "medium", merge(implicit, read_predictions(path), path, "math_shepherd_step_min"))
    with pytest.raises(IPRMError, match="no problem has both"):
        regime_rows(run, [4], [0.0], 2, 0, SCORERS)
    assert pools(run.data).sizes.shape == (0, 2) and pools(run.data).dropped == 1


def test_a_policy_scorer_adds_the_reference_free_line(tmp_path):
    """`--policy-scorer` adds `policy_bon`, best-of-N by that scorer: given the reference's own scorer, it
    must equal `reference_bon` in every cell."""
    _write(tmp_path / "i.jsonl", PROBLEMS)
    _write(tmp_path / "m.jsonl", PROBLEMS, shepherd=True)
    out = tmp_path / "out"
    main(["--implicit", str(tmp_path / "i.jsonl"), "--math-shepherd", str(tmp_path / "m.jsonl"), "--output",
          str(out), "--ns", "2", "--shares", "0", "1", "--draws", "8",
          "--policy-scorer", "reference_accumulative_last"])  # fmt: skip
    with (out / "regimes.csv").open() as file:
        rows = list(csv.DictReader(file))
    by = {(r["noise_share"], r["method"]): r["accuracy"] for r in rows}
    assert [by[s, "policy_bon"] for s in ("0.0", "1.0")] == [by[s, "reference_bon"] for s in ("0.0", "1.0")]
