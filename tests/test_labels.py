"""Step labellers: AutoPSV by hand and from a trained verifier, the label report, one-class refusal, and
checksummed label-cache shards."""

import json
import logging
import math
import random

import pytest
import torch
from conftest import collate
from transformers import AutoTokenizer

from iprm.data.collate import Collator
from iprm.data.records import Record
from iprm.scorers import ExplicitPRM
from iprm.scorers.explicit import every_step_targets, load_exported, prompt_and_step_ends, step_target_loss
from iprm.scorers.label_cache import LabelCache, record_key
from iprm.scorers.label_report import DegenerateLabelsError, check_two_classes, label_report
from iprm.scorers.labels import (
    AutoPSVLabels,
    LabellingContext,
    StepLabeller,
    autopsv_values,
    threshold_shares,
)
from iprm.tasks.arithmetic import grade, sample_problem, solve, verify

NAN = math.nan


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(0.05, [0, 0, 0, 0]), (0.3, [1, 0, 0, 0]), (0.6, [1, 1, 1, 0]), (0.8, [1, 1, 1, 1])],
)
def test_autopsv_labels_of_a_hand_worked_confidence_curve(threshold, expected):
    """Verifier confidences c_0..c_4 = 0.80 (prompt), 0.72, 0.36, 0.40, 0.10. Relative changes
    Δ_k = (c_k − c_{k−1})/c_{k−1}: Δ_1 = −0.08/0.80 = −0.10, Δ_2 = −0.36/0.72 = −0.50,
    Δ_3 = +0.04/0.36 = +0.11, Δ_4 = −0.30/0.40 = −0.75. Step k is bad when Δ_k < −θ, and every prefix
    from the first bad step on is 0:
    θ = 0.05 → step 1 bad; θ = 0.3 → step 2 bad; θ = 0.6 → step 4 bad (the rise at step 3 does not matter);
    θ = 0.8 → none."""
    assert autopsv_values([0.80, 0.72, 0.36, 0.40, 0.10], threshold) == [float(v) for v in expected]


def test_share_good_by_threshold_from_confidences():
    """Two curves: [0.8, 0.72, 0.36, 0.40, 0.10] (the hand example, 4 prefixes) and [0.5, 0.6] (1 prefix,
    never bad): good prefixes at θ = 0.05, 0.3, 0.6, 0.8 are 0+1, 1+1, 3+1, 4+1 of 5."""
    shares = threshold_shares([[0.80, 0.72, 0.36, 0.40, 0.10], [0.5, 0.6]], (0.05, 0.3, 0.6, 0.8))
    assert shares == pytest.approx({0.05: 0.2, 0.3: 0.4, 0.6: 0.8, 0.8: 1.0})


def test_label_report_by_hand():
    """Response A, steps correct/correct/wrong (true prefixes 1, 1, 0), labelled 1, 0.75 (→ good), 0.25
    (→ bad). Response B, steps wrong/correct (true prefixes 0, 0), labelled 1, 0. Response C has no true
    labels, labelled 0, 0. Every step estimated: 7 prefixes, 3 good → 3/7. Against the 5 true ones: A all
    right, B's first wrong (labelled good, truly bad), B's second right: agreement 4/5; good precision 2/3
    (A1, A2 of A1, A2, B1), good recall 2/2; bad precision 2/2, bad recall 2/3.
    With the last step the outcome (left out): A's first two, B's first, C's first: 4 prefixes, 3 good; true
    3: agreement 2/3, bad recall 0/1."""
    values = [[1.0, 0.75, 0.25], [1.0, 0.0], [0.0, 0.0]]
    truth = [(True, True, False), (False, True), None]
    report = label_report(values, truth, last_is_outcome=False)
    assert report == pytest.approx({
        "prefixes": 7, "good_share": 3 / 7, "true_prefixes": 5, "true_good_share": 2 / 5,
        "agreement": 4 / 5, "good_precision": 2 / 3, "good_recall": 1.0, "bad_precision": 1.0,
        "bad_recall": 2 / 3,
    })  # fmt: skip
    outcome_left_out = label_report(values, truth, last_is_outcome=True)
    assert outcome_left_out["prefixes"] == 4 and outcome_left_out["good_share"] == 3 / 4
    assert outcome_left_out["agreement"] == pytest.approx(2 / 3)
    assert outcome_left_out["bad_recall"] == 0.0 and math.isnan(outcome_left_out["bad_precision"])


def test_one_class_labels_are_refused_naming_the_labeller_setting_and_share():
    report = label_report([[1.0, 1.0], [1.0]], [None, None], last_is_outcome=False)
    with pytest.raises(DegenerateLabelsError, match=r"autopsv \(θ = 0.5\): 100.0% of 3 .* labelled good"):
        check_two_classes(report, "autopsv (θ = 0.5)", 0.0)
    almost = label_report([[1.0] * 99 + [0.0]], [None], last_is_outcome=False)
    check_two_classes(almost, "x", 0.0)  # two classes: accepted by default
    with pytest.raises(DegenerateLabelsError, match="99.0% of 100"):
        check_two_classes(almost, "x", 0.02)


# --- AutoPSV from a trained every-step verifier ------------------------------------------------------


def test_every_step_verifier_loss_reads_the_prompt_end_and_every_step_end(tiny_model_dir, char_tokenizer):
    """Two responses: 3 steps (label 1) and 2 steps (label 0). The loss is the mean cross-entropy of the
    logit at the prompt's end and at every step end against the response's outcome label, 4 + 3 = 7 terms,
    checked against the hand formula on the module's own logits; one optimiser step moves the head."""
    records = [
        Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True),
        Record("a", "Q:12-5+3\n", "12-5=13\nA:13", False),
    ]
    module = ExplicitPRM(model_path=tiny_model_dir, name="osv", target="outcome_every_step")
    module.configure_model()
    torch.nn.init.normal_(module.value_head.weight)
    batch = collate(char_tokenizer, records)
    ends = prompt_and_step_ends(batch)
    assert ends[:, 0].tolist() == [len("Q:12-5+3\n")] * 2  # <bos> + prompt: its last token's index
    logits = module.step_logits({**batch, "step_ends": ends})
    assert (~logits.isnan()).sum() == 7
    terms = [
        -torch.nn.functional.logsigmoid(h if label else -h)
        for row, label in zip(logits, (1, 0), strict=True)
        for h in row[~row.isnan()]
    ]
    loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    targets = every_step_targets(logits, batch["labels"])
    assert step_target_loss(logits, targets)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert module.method_scorer == "osv_step_last"
    before = module.value_head.weight.clone()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-1)
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, module.value_head.weight)


def _world_records(count: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for i in range(count):
        problem = sample_problem(rng, 2, 4, 200)
        verdict = verify(problem, response := solve(problem, rng, misconception_rate=0.6))
        records.append(
            Record(str(i), problem.prompt, response, verdict.label, step_labels=verdict.step_labels)
        )
    return records


def _export(module: ExplicitPRM, directory, char_tokenizer) -> str:
    module.export(directory)
    char_tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture()
def verifier_dir(tiny_model_dir, char_tokenizer, tmp_path) -> str:
    module = ExplicitPRM(model_path=tiny_model_dir, name="osv", target="outcome_every_step").eval()
    module.configure_model()
    torch.manual_seed(1)
    torch.nn.init.normal_(module.value_head.weight, std=2.0)  # confidences that move from step to step
    return _export(module, tmp_path / "osv", char_tokenizer)


def test_autopsv_labels_are_its_rule_on_the_verifiers_confidences(verifier_dir, tiny_model_dir, tmp_path):
    """The labels are `autopsv_values` of the exported verifier's σ(h) at the prompt end and step ends; the
    confidences are cached, so a second θ reads no model; the report counts every step; the world's true
    labels never reach the PRM."""
    records = _world_records(24)
    context = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "labels")
    labeller = AutoPSVLabels(verifier_dir, threshold=0.2, batch_size=5)
    labelled, cost = labeller.label(records, context)
    verifier = load_exported(verifier_dir)
    batch = Collator(AutoTokenizer.from_pretrained(verifier_dir), "\n")(
        [{"record": r, "index": i, "group": 0} for i, r in enumerate(records)]
    )
    with torch.no_grad():
        confidence = torch.sigmoid(verifier.step_logits({**batch, "step_ends": prompt_and_step_ends(batch)}))
    for row, (record, out) in enumerate(zip(records, labelled, strict=True)):
        c = confidence[row][~confidence[row].isnan()].tolist()
        assert len(c) == len(record.step_labels) + 1
        assert list(out.step_values) == pytest.approx(autopsv_values(c, 0.2))
        assert out.step_labels is None
    report = cost["report"]
    assert report["prefixes"] == report["true_prefixes"] == sum(len(r.step_labels) for r in records)
    assert 0 < report["good_share"] < 1 and 0 <= report["agreement"] <= 1

    class NoModel(AutoPSVLabels):
        def _label(self, records, context):
            raise AssertionError("the cached confidences were not reused")

    other, _ = NoModel(verifier_dir, threshold=0.6).label(records, context)
    for record, out in zip(records, other, strict=True):
        before = labelled[records.index(record)].step_values
        assert all(a >= b for a, b in zip(out.step_values, before, strict=True))  # a larger θ: fewer bad


def test_labelling_leaves_the_runs_random_state_as_it_found_it(verifier_dir, tiny_model_dir, tmp_path):
    """Labelling in the training process (a cold label cache) loads a verifier, whose head is built by drawing
    random numbers; the run's random state must come back untouched, or the PRM trained next would start
    from other weights than the same run with the labels already cached."""
    import numpy as np

    records = _world_records(8)
    context = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "labels")
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    cold = AutoPSVLabels(verifier_dir, threshold=0.3, batch_size=4).label(records, context)
    after_cold = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    warm = AutoPSVLabels(verifier_dir, threshold=0.3, batch_size=4).label(records, context)  # cached now
    after_warm = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    untouched = torch.rand(3), random.random(), np.random.rand()
    assert [r.step_values for r in cold[0]] == [r.step_values for r in warm[0]]
    for found in (after_cold, after_warm):
        assert torch.equal(found[0], untouched[0]) and found[1:] == untouched[1:]


def test_autopsv_refuses_a_verifier_trained_at_the_last_step_only(tiny_model_dir, char_tokenizer, tmp_path):
    module = ExplicitPRM(model_path=tiny_model_dir, name="orm", target="outcome")
    module.configure_model()
    orm = _export(module, tmp_path / "orm", char_tokenizer)
    context = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "labels")
    with pytest.raises(ValueError, match="trained with target 'outcome'.*outcome_every_step"):
        AutoPSVLabels(orm).label(_world_records(4), context)


def test_autopsv_refusal_lists_the_share_each_threshold_gives(verifier_dir, tiny_model_dir, tmp_path):
    context = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "labels")
    with pytest.raises(DegenerateLabelsError, match=r"autopsv \(θ = 0.9\).*labelled good.*0.01: .*%"):
        # θ = 0.9: a step is bad only where confidence falls by 90 %; this verifier's curves never do
        AutoPSVLabels(verifier_dir, threshold=0.9, min_class_share=0.2).label(_world_records(24), context)


# --- the cache vouches for itself ---------------------------------------------------------------------


class Counting(StepLabeller):
    """Labels each step 1 except the first (0), counting the records it labels."""

    method = "counting"

    def __init__(self):
        self.labelled = 0

    def settings(self) -> dict:
        return {}

    def _label(self, records, context):
        self.labelled += len(records)
        steps = [len(r.response.split("\n")) for r in records]
        return [{"values": [0.0] + [1.0] * (n - 1), "flops": 1.0, "tokens": 1} for n in steps]


def test_an_altered_label_shard_is_relabelled_with_a_warning_never_used(tiny_model_dir, tmp_path, caplog):
    records = _world_records(6)
    context = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "labels")
    first, _ = Counting().label(records, context)
    (shard,) = (tmp_path / "labels").glob("counting-*/labels-*.jsonl")
    text = shard.read_text()
    assert text.count('"values": [0.0,') == 6
    shard.write_text(text.replace('"values": [0.0,', '"values": [1.0,', 1))  # one label flipped on disk
    again = Counting()
    with caplog.at_level(logging.WARNING):
        relabelled, _ = again.label(records, context)
    assert again.labelled == 6 and relabelled == first  # recomputed, not read
    assert f"label cache shard {shard} is not used" in caplog.text
    assert shard.with_name(shard.name + ".corrupt").is_file()
    assert shard.read_text() == text  # relabelled: the same content, so the same digest and name
    third = Counting()
    third.label(records, context)
    assert third.labelled == 0  # the new shard checks out


def test_a_truncated_shard_is_relabelled_and_a_legacy_shard_is_used_with_a_warning(tmp_path, caplog):
    directory = tmp_path / "cache"
    cache = LabelCache(directory)
    shard = cache.add({"a": {"values": [1.0]}, "b": {"values": [0.0]}})
    assert LabelCache(directory).entries == {"a": {"values": [1.0]}, "b": {"values": [0.0]}}
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        assert LabelCache(directory).entries == {}
    (directory / "part-0123.jsonl").write_text(json.dumps({"key": "c", "values": [1.0]}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert LabelCache(directory).entries == {"c": {"values": [1.0]}}
    assert "written before label shards carried checksums (part-0123.jsonl" in caplog.text


def test_a_shard_moved_aside_by_another_rank_while_listed_is_skipped_not_a_crash(
    tmp_path, monkeypatch, caplog
):
    """Rank 0 lists the shards, rank 1 moves a corrupt one aside before rank 0 reads it: rank 0 goes on."""
    directory = tmp_path / "cache"
    kept = LabelCache(directory).add({"a": {"values": [1.0]}})
    gone = directory / f"labels-{'0' * 64}.jsonl"
    gone.write_text("not json\n")
    listed = sorted(directory.glob("labels-*.jsonl"))
    gone.rename(gone.with_name(gone.name + ".corrupt"))  # the other rank's move
    monkeypatch.setattr(
        type(directory), "glob", lambda self, pattern: iter(listed if "labels-" in pattern else [])
    )
    with caplog.at_level(logging.WARNING):
        cache = LabelCache(directory)
    assert cache.entries == {"a": {"values": [1.0]}} and kept in listed
    assert f"{gone} went away while the cache was read" in caplog.text


def test_under_ddp_a_rank_labels_its_chunks_and_gathers_the_others(tiny_model_dir, tmp_path, monkeypatch):
    """Rank 1 of 2, faked in one process: 6 distinct records in chunks of 2 are chunks 0, 1, 2; rank 1
    labels chunk 1 only, writes it as one shard, and takes rank 0's chunks 0 and 2 from the gather, ending
    with every record labelled as one process labels them."""
    import iprm.scorers.labels as labels

    records = _world_records(6)
    context = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "alone")
    alone, _ = Counting().label(records, context)
    keys = [record_key(r) for r in records]
    rank0 = {
        k: {"values": list(r.step_values), "flops": 1.0, "tokens": 1}
        for k, r in zip(keys, alone, strict=True)
    }
    rank0 = {k: v for i, (k, v) in enumerate(rank0.items()) if i // 2 != 1}  # chunks 0 and 2

    def gather(value):
        return [value, value] if isinstance(value, set) else [rank0, value]

    monkeypatch.setattr(labels, "world", lambda: (2, 1))
    monkeypatch.setattr(labels, "gather_objects", gather)
    rank1 = Counting()
    rank1.chunk_records = 2
    shared = LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "shared")
    labelled, _ = rank1.label(records, shared)
    assert rank1.labelled == 2 and labelled == alone
    (shard,) = (tmp_path / "shared").glob("counting-*/labels-*.jsonl")
    assert {json.loads(line)["key"] for line in shard.read_text().splitlines()} == set(keys[2:4])
