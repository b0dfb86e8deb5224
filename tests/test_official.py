"""Official candidate files scored the official way: the "Step k:" re-split and how votes treat a candidate
without an answer, checked by hand on a small file in the official format."""

import json
import math
import string

import pytest
import torch

from iprm.data import PRMDataModule
from iprm.data.collate import encode
from iprm.data.datamodule import eval_items
from iprm.data.official import official_response, official_steps
from iprm.errors import ConfigError
from iprm.eval.callback import BestOfNEvaluation
from iprm.eval.metrics import SelectionMetrics
from iprm.eval.selection import majority, weighted_majority
from iprm.tasks.tokenizer import build_char_tokenizer

OFFICIAL_SEPARATOR = "\n\nStep "


def candidate(idx: int, response: str, correct: bool, answer, reference: str) -> dict:
    return {
        "idx": idx,
        "prompt": f"Problem {idx}",
        "response": response,
        "correctness": correct,
        "extracted_output": answer,
        "reference": reference,
    }


# Problem 0: the right answer once, no answer twice (one with blank lines inside its steps), a wrong one
# given as a number; problem 1: every candidate answers (one without any "Step" marker); problem 2: none does.
CANDIDATES = [
    candidate(0, "Step 1: Add 2 and 3.\n\nStep 2: The answer is $\\boxed{5}$.", True, "5", "5"),
    candidate(0, "Let me think. Step 1: Multiply.\nStep 2: Stuck.", False, None, "5"),
    candidate(
        0, "## Step 1: Add.\nSo 2 + 3 = 6.\n\n## Step 2: Hmm, Step back.\n\nI give up.", False, None, "5"
    ),
    candidate(0, "Step 1: 3 + 4 = 7.\nStep 2: The answer is 7.", False, 7, "5"),
    candidate(1, "Step 1: 1 + 1 = 2.", False, "2", "3"),
    candidate(1, "Step 1: 1 + 2 = 3.", True, "3", "3"),
    candidate(1, "The answer is 3.", True, "3", "3"),
    candidate(2, "Step 1: I do not know.", False, None, "1"),
    candidate(2, "Step 1: Nothing.", False, "", "1"),
]

# The official re-split of each response, derived by hand from `get_dataloader`: split on "Step <n>:",
# strip, "Step" → "step" inside a piece, drop empty pieces, number afresh, join with a blank line.
RESPLIT = [
    "Step 1: Add 2 and 3.\n\nStep 2: The answer is $\\boxed{5}$.",
    "Step 1: Let me think.\n\nStep 2: Multiply.\n\nStep 3: Stuck.",
    "Step 1: ##\n\nStep 2: Add.\nSo 2 + 3 = 6.\n\n##\n\nStep 3: Hmm, step back.\n\nI give up.",
    "Step 1: 3 + 4 = 7.\n\nStep 2: The answer is 7.",
    "Step 1: 1 + 1 = 2.",
    "Step 1: 1 + 2 = 3.",
    "Step 1: The answer is 3.",
    "Step 1: I do not know.",
    "Step 1: Nothing.",
]


@pytest.fixture()
def official_file(tmp_path) -> str:
    path = tmp_path / "math-official-4.json"
    path.write_text(json.dumps(CANDIDATES, indent=4))
    return str(path)


def test_official_steps_resplit_by_hand():
    assert [official_response(c["response"]) for c in CANDIDATES] == RESPLIT
    assert official_steps(CANDIDATES[2]["response"]) == [
        "Step 1: ##",
        "Step 2: Add.\nSo 2 + 3 = 6.\n\n##",
        "Step 3: Hmm, step back.\n\nI give up.",
    ]
    assert all(official_response(text) == text for text in RESPLIT)  # idempotent


def test_data_module_resplits_scored_files_and_reads_answers_as_the_official_code(
    tiny_model_dir, official_file
):
    dm = PRMDataModule(
        model_path=tiny_model_dir,
        eval_paths={"official": official_file},
        step_separator=OFFICIAL_SEPARATOR,
        official_steps=True,
    )
    dm.setup("validate")
    records = dm.eval_records["official"]
    assert [r.response for r in records] == RESPLIT
    assert [r.answer for r in records] == ["5", None, None, "7", "2", "3", "3", None, ""]
    # Answer ids per problem; a missing or empty answer is −1 (the voting option decides what −1 does).
    assert [item["answer_id"] for item in eval_items(records)] == [0, -1, -1, 1, 0, 1, 1, -1, -1]


def test_a_blank_line_inside_an_official_step_refuses_the_blank_line_separator(tiny_model_dir, official_file):
    """Candidate 2's official step 2 holds blank lines: split on "\\n\\n" it is 5 steps, officially 3."""
    dm = PRMDataModule(
        model_path=tiny_model_dir,
        eval_paths={"official": official_file},
        step_separator="\n\n",
        official_steps=True,
    )
    with pytest.raises(ConfigError, match=r"1 of 9 responses \(first: record 2\)"):
        dm.setup("validate")
    # Without the option the file is read as written (and split on whatever separator is set).
    plain = PRMDataModule(
        model_path=tiny_model_dir, eval_paths={"official": official_file}, step_separator="\n\n"
    )
    plain.setup("validate")
    assert [r.response for r in plain.eval_records["official"]] == [c["response"] for c in CANDIDATES]


def test_step_ends_fall_after_each_official_step_and_the_separator_closing_it():
    """With the separator "\\n\\nStep ", the tokens up to step k's end decode to the prompt, official steps
    1..k and, as iprm's convention gives a separator to the step it closes, "\\n\\nStep " (officially
    step k ends at the "\\n\\n": docs/official_eval.md); the last step ends at the <eos>. Blank lines
    inside a step notwithstanding."""
    tokenizer = build_char_tokenizer(string.printable)
    prompt, steps = "Problem 0\n", official_steps(CANDIDATES[2]["response"])
    encoded = encode(tokenizer, prompt, RESPLIT[2], OFFICIAL_SEPARATOR)
    assert len(encoded.step_ends) == len(steps) == 3
    for k, end in enumerate(encoded.step_ends, start=1):
        text = tokenizer.decode(encoded.input_ids[: end + 1], skip_special_tokens=True)
        assert text == prompt + "\n\n".join(steps[:k]) + (OFFICIAL_SEPARATOR if k < 3 else "")
    assert encoded.input_ids[encoded.step_ends[-1]] == tokenizer.eos_token_id


# Scores chosen so that σ is easy: σ(ln 4) = 0.8 for the first candidate, σ(0) = 0.5 for every other.
SCORES = [math.log(4)] + [0.0] * 8


def voting_set(records) -> dict[str, torch.Tensor]:
    items = eval_items(records)
    return {
        "problem": torch.tensor([i["problem"] for i in items]),
        "candidate": torch.tensor([i["candidate"] for i in items]),
        "answer": torch.tensor([i["answer_id"] for i in items]),
        "label": torch.tensor([r.label for r in records]),
    }


def test_votes_abstain_by_default_and_pool_missing_answers_as_the_official_code(
    tiny_model_dir, official_file
):
    """Weights σ(score): problem 0 "5" (right) 0.8, "7" 0.5, no answer 0.5 + 0.5; problem 1 "2" 0.5,
    "3" (right) 0.5 + 0.5; problem 2 only no answers.

    Weighted, abstain: "5" 0.8 > "7" 0.5 ✓; "3" 1.0 ✓; nobody votes ✗ → 2/3.
    Weighted, pool:    no answer 1.0 > 0.8 wins ✗; "3" ✓; no answer wins ✗ → 1/3.
    Majority, abstain: "5" 1 ties "7" 1, the earlier ("5") ✓; "3" 2 ✓; ✗ → 2/3.
    Majority, pool:    no answer 2 ✗; "3" ✓; ✗ → 1/3.
    """
    dm = PRMDataModule(
        model_path=tiny_model_dir,
        eval_paths={"o": official_file},
        step_separator=OFFICIAL_SEPARATOR,
        official_steps=True,
    )
    dm.setup("validate")
    s = voting_set(dm.eval_records["o"])
    score = torch.tensor(SCORES)
    columns = (s["problem"], s["candidate"], s["answer"], s["label"])
    assert weighted_majority(*columns, score, 4) == pytest.approx(2 / 3)
    assert weighted_majority(*columns, score, 4, missing_answers="pool") == pytest.approx(1 / 3)
    assert majority(*columns, 4) == pytest.approx(2 / 3)
    assert majority(*columns, 4, missing_answers="pool") == pytest.approx(1 / 3)
    # The option reaches the torchmetrics wrapper the evaluation callback uses: on problem 0 alone (its four
    # candidates) "5" wins when missing answers abstain, "no answer" when they are pooled.
    first = s["problem"] == 0
    for option, expected in (("abstain", 1.0), ("pool", 0.0)):
        metric = SelectionMetrics(["prm"], ns=(4,), missing_answers=option)
        metric.update(*(column[first] for column in columns), score[first][:, None])
        values = metric.compute()
        assert values["wmaj@4/prm"].item() == values["maj@4"].item() == expected


def test_the_evaluation_callback_refuses_an_unknown_treatment():
    assert BestOfNEvaluation(missing_answers="pool").missing_answers == "pool"
    with pytest.raises(ConfigError, match="evaluation.missing_answers"):
        BestOfNEvaluation(missing_answers="ignore")
    with pytest.raises(ValueError, match="missing_answers"):
        weighted_majority(*(torch.zeros(1, dtype=torch.long),) * 4, torch.zeros(1), 1, missing_answers="x")
