"""`iprm label-probe`: AutoPSV's labels and the verifier's confidence along solutions against the true step
labels, and Math-Shepherd's labels, on hand-worked curves and on tiny worlds built in code."""

import math
import re

import pytest
import torch

from iprm.analysis import labels as probe
from iprm.data.records import Record, write_records
from iprm.errors import MissingPathError
from iprm.scorers import ExplicitPRM
from iprm.scorers.labels import AutoPSVLabels, LabellingContext, MonteCarloLabels
from iprm.tasks.arithmetic import grade, parse_problem, verify

# Three responses with confidences c_0..c_S in binary fractions (exact Δs) and their true step labels:
#   A  c = 0.5, 0.5, 0.25, 0.375, 0.125   Δ = 0, −0.5, +0.5, −2/3   steps right/wrong/right/wrong: error at 1
#   B  c = 0.5, 0.75, 0.375               Δ = +0.5, −0.5            every step right
#   C  c = 0.5, 0.125, 0.25               Δ = −0.75, +1             steps wrong/right: error at 0
CONFIDENCES = [[0.5, 0.5, 0.25, 0.375, 0.125], [0.5, 0.75, 0.375], [0.5, 0.125, 0.25]]
TRUTH = [(True, False, True, False), (True, True), (False, True)]


def test_relative_changes_by_hand_and_from_zero():
    """Δ of curve A; from c = 0 a rise is +∞ and no change is 0, never a fall (nor a division by zero)."""
    assert probe.relative_changes(CONFIDENCES[0]) == pytest.approx([0.0, -0.5, 0.5, -2 / 3])
    assert probe.relative_changes([0.0, 0.5, 0.0, 0.0]) == [math.inf, -1.0, 0.0]


def test_auroc_counts_ties_half():
    """Positives 0.5, 0.75 against negatives 0, −0.5, 0.5: 0.5 beats two and ties one (2.5 of 3), 0.75
    beats all three: (2.5 + 3)/6 = 11/12. Perfectly separated: 1; reversed: 0; one side empty: NaN."""
    assert probe.auroc([0.5, 0.75], [0.0, -0.5, 0.5]) == pytest.approx(11 / 12)
    assert probe.auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert probe.auroc([0.0], [1.0, 2.0]) == 0.0
    assert math.isnan(probe.auroc([], [1.0]))


def test_first_error_profile_by_hand():
    """A's first error is step 1: Δ there −0.5, before it Δ_1 = 0, c before it c_1 = 0.5, at it c_2 = 0.25.
    C's is step 0: Δ −0.75, nothing before it, c 0.5 before and 0.125 at it. B's two Δs are all-correct
    steps. A response without true labels is left out."""
    deltas, levels = probe.first_error_profile([*CONFIDENCES, [0.9, 0.1]], [*TRUTH, None])
    at_error, before_error, all_correct = (deltas[name] for name in probe.DELTA_GROUPS)
    assert at_error == [-0.5, -0.75]
    assert before_error == [0.0]
    assert all_correct == [0.5, -0.5]
    assert levels == {
        "c_0": [0.5, 0.5, 0.5],
        "c before the first error": [0.5, 0.5],
        "c at the first error": [0.25, 0.125],
        "c at the last step": [0.125, 0.375, 0.25],
    }


def test_autopsv_lines_by_hand():
    """θ = 0.3: A's Δ_2 = −0.5 is bad → 1, 0, 0, 0 (truly 1, 0, 0, 0); B's Δ_2 = −0.5 → 1, 0 (truly 1, 1);
    C's Δ_1 = −0.75 → 0, 0 (truly 0, 0). Of 8 prefixes 2 labelled good (25 %), 3 truly (37.5 %); all agree
    but B's second (7/8); good precision 2/2, recall 2/3; bad precision 5/6, recall 5/5.
    θ = 0.7: only C's −0.75 is bad → A 1, 1, 1, 1; B 1, 1; C 0, 0: 6 good (75 %), agreeing on A's first, B's
    two, C's two (5/8); good precision 3/6, recall 3/3; bad precision 2/2, recall 2/5.
    Δ at the first error −0.5, −0.75: median and mean −0.625, all below −0.1 and −0.3, half below −0.5 (−0.5
    is not below it). Before it 0: nothing below. All-correct +0.5, −0.5: median 0, half below −0.1 and −0.3.
    AUROC 11/12 (`test_auroc_counts_ties_half`). Mean c: 0.5 at the prompt, 0.5 before the first error,
    (0.25 + 0.125)/2 at it, (0.125 + 0.375 + 0.25)/3 = 0.25 at the last step."""
    lines = probe.autopsv_lines(CONFIDENCES, TRUTH)
    by_theta = {line.split(":")[0]: line for line in lines[: len(probe.THRESHOLDS)]}
    assert list(by_theta) == [f"θ = {t}" for t in probe.THRESHOLDS]
    assert by_theta["θ = 0.3"] == (
        "θ = 0.3: 25.0% of 8 estimated step prefixes labelled good (truly good: 37.5%); agreement with the "
        "true labels 87.5%, good precision 1.000 recall 0.667, bad precision 0.833 recall 1.000"
    )
    assert by_theta["θ = 0.7"] == (
        "θ = 0.7: 75.0% of 8 estimated step prefixes labelled good (truly good: 37.5%); agreement with the "
        "true labels 62.5%, good precision 0.500 recall 1.000, bad precision 1.000 recall 0.400"
    )
    assert lines[len(probe.THRESHOLDS) :] == [
        "first errors: 2; correct steps before them: 1; steps of responses with every step right: 2",
        "Δ at the first error: median -0.625, mean -0.625, share below −0.1 / −0.3 / −0.5: "
        "1.00 / 1.00 / 0.50",
        "Δ at correct steps before it: median +0.000, mean +0.000, share below −0.1 / −0.3 / −0.5: "
        "0.00 / 0.00 / 0.00",
        "Δ at steps of all-correct responses: median +0.000, mean +0.000, share below −0.1 / −0.3 / −0.5: "
        "0.50 / 0.50 / 0.00",
        "AUROC of −Δ, first error against every correct step: 0.917",
        "mean c_0: 0.500",
        "mean c before the first error: 0.500",
        f"mean c at the first error: {0.1875:.3f}",
        "mean c at the last step: 0.250",
    ]


def test_a_group_with_no_steps_prints_nan_not_a_crash():
    assert (
        probe.delta_summary("Δ", [])
        == "Δ: median +nan, mean +nan, share below −0.1 / −0.3 / −0.5: nan / nan / nan"
    )


# --- the command on tiny worlds ------------------------------------------------------------------------

PROMPT = "Q:12-5+3\n"  # 12 − 5 = 7, 7 + 3 = 10


def _world(directory, reference: str | None = None):
    """A world directory: one instruction, three distinct responses (R1 sampled twice); true labels
    R1 12-5=7, 7+3=10, A:10 → right, right, right; R2 12-5=13, 13+3=16, A:16 → wrong ×3; R3 12-5=7, 7+3=11,
    A:11 → right, wrong, wrong."""
    responses = [
        "12-5=7\n7+3=10\nA:10",
        "12-5=13\n13+3=16\nA:16",
        "12-5=7\n7+3=11\nA:11",
        "12-5=7\n7+3=10\nA:10",
    ]
    records = []
    for response in responses:
        verdict = verify(parse_problem(PROMPT), response)
        records.append(Record("0", PROMPT, response, verdict.label, step_labels=verdict.step_labels))
    assert [r.step_labels for r in records[:3]] == [(True,) * 3, (False,) * 3, (True, False, False)]
    directory.mkdir()
    write_records(records, directory / "train.jsonl")
    if reference is not None:
        (directory / "reference").symlink_to(reference)
    return directory


@pytest.fixture()
def orm_dir(tiny_model_dir, char_tokenizer, tmp_path) -> str:
    """An ORM (trained at the last step only) whose value head is zero: every confidence is σ(0) = ½."""
    module = ExplicitPRM(model_path=tiny_model_dir, name="orm", target="outcome").eval()
    module.configure_model()
    torch.nn.init.zeros_(module.value_head.weight)
    torch.nn.init.zeros_(module.value_head.bias)
    module.export(tmp_path / "orm")
    char_tokenizer.save_pretrained(tmp_path / "orm")
    return str(tmp_path / "orm")


def test_autopsv_command_reads_an_orm_too_and_counts_distinct_responses(orm_dir, tiny_model_dir, tmp_path):
    """Every c is ½, so every Δ is 0 and every prefix labelled good at every θ: 9 prefixes, truly good
    R1's 3 and R3's first (4/9 = 44.4 %), agreement 4/9, bad recall 0 and bad precision NaN. First errors:
    R2's step 0 and R3's step 1, one correct step before them, R1's 3 all-correct steps; every −Δ ties, so
    AUROC ½. Training still refuses the ORM after the command (the bypass does not leak)."""
    world = _world(tmp_path / "world")
    lines = probe.main(["autopsv", str(world), orm_dir, "--fraction", "1"])
    assert lines[0] == f"{orm_dir}: 4 training records, 3 distinct"
    expected = (
        "100.0% of 9 estimated step prefixes labelled good (truly good: 44.4%); agreement with the true "
        "labels 44.4%, good precision 0.444 recall 1.000, bad precision nan recall 0.000"
    )
    assert lines[1:10] == [f"θ = {t}: {expected}" for t in probe.THRESHOLDS]
    assert (
        lines[10]
        == "first errors: 2; correct steps before them: 1; steps of responses with every step right: 3"
    )
    assert lines[11].startswith("Δ at the first error: median +0.000, mean +0.000")
    assert lines[14:] == [
        "AUROC of −Δ, first error against every correct step: 0.500",
        "mean c_0: 0.500",
        "mean c before the first error: 0.500",
        "mean c at the first error: 0.500",
        "mean c at the last step: 0.500",
    ]
    context = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "labels")
    with pytest.raises(ValueError, match="trained with target 'outcome'"):
        AutoPSVLabels(orm_dir).label(probe.training_records(world, 1.0, 0), context)


def test_math_shepherd_command_with_an_oracle_reference_reproduces_the_truth(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The completions are replaced by an oracle that answers right exactly from a truly good prefix, so the
    hard labels are the truth: of the 6 estimated prefixes (the last step, the outcome, left out) R1's two
    and R3's first are good, 50 %, agreement 100 %; K = 2 completions per prefix; 3 distinct responses."""

    def oracle(self, prompts, seed, context):
        answers = []
        for prompt in prompts:
            steps = prompt.removeprefix(PROMPT).rstrip("\n").split("\n")
            good = steps[0] == "12-5=7" and steps[1:] in ([], ["7+3=10"])
            answers.append("A:10" if good else "A:9")
        return answers

    monkeypatch.setattr(MonteCarloLabels, "sample", oracle)
    world = _world(tmp_path / "world", reference=tiny_model_dir)
    lines = probe.main(["math-shepherd", str(world), "2", str(tmp_path / "cache")])
    assert re.fullmatch(
        r"K = 2: 50\.0% of 6 estimated step prefixes labelled good \(truly good: 50\.0%\); agreement with "
        r"the true labels 100\.0%, good precision 1\.000 recall 1\.000, bad precision 1\.000 recall 1\.000; "
        r"3 distinct; \d+ s",
        lines[0],
    )
    assert any((tmp_path / "cache").iterdir())  # the labels are cached where asked


def test_user_errors_name_the_path(tmp_path, tiny_model_dir):
    with pytest.raises(MissingPathError, match=r"nowhere: no such world directory"):
        probe.main(["autopsv", str(tmp_path / "nowhere"), tiny_model_dir])
    world = _world(tmp_path / "world")
    with pytest.raises(MissingPathError, match=rf"{re.escape(tiny_model_dir)}: not an exported verifier"):
        probe.main(["autopsv", str(world), tiny_model_dir])
    with pytest.raises(MissingPathError, match=rf"{re.escape(str(world / 'reference'))}: the world has no"):
        probe.main(["math-shepherd", str(world), "2", str(tmp_path / "cache")])
    with pytest.raises(SystemExit):
        probe.main(["autopsv", str(world), tiny_model_dir, "--fraction", "0"])
