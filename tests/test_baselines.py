"""The explicit-PRM baselines: losses by hand, step labels against the verifier, labelling cost by hand."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from conftest import collate
from transformers import AutoModelForCausalLM

from iprm.analysis import as_policy
from iprm.cli import main
from iprm.data.records import Record
from iprm.flops import ForwardCost
from iprm.scorers import ExplicitPRM
from iprm.scorers.explicit import head_token_ids, load_exported, outcome_loss, step_target_loss
from iprm.scorers.labels import LabellingContext, MonteCarloLabels, autopsv_values, step_texts
from iprm.tasks.arithmetic import (
    STEP_PATTERN,
    apply,
    grade,
    needs_borrow,
    parse_problem,
    sample_problem,
    solve,
    subtract_without_borrowing,
    verify,
)
from iprm.tasks.world import World

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

NAN = math.nan


def test_outcome_loss_by_hand():
    """Rows end at their last non-NaN step: h = −2 (label 1) and h = 0.5 (label 0), so the loss is
    ½·[log(1 + e²) + log(1 + e^0.5)] = ½·(2.126928 + 0.974077) = 1.550502, and both signs are wrong."""
    logits = torch.tensor([[1.0, -2.0, NAN], [0.5, NAN, NAN]])
    loss, accuracy = outcome_loss(logits, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(1.550502, abs=1e-6)
    assert accuracy.item() == 0.0


def test_step_target_loss_by_hand_with_soft_targets():
    """Known steps (h, t): (0, ½) → log 2 = 0.693147; (2, 1) → log(1 + e⁻²) = 0.126928; (1, 0) →
    log(1 + e) = 1.313262; the mean is 0.711112. Signs against rounded targets: (0 > 0) ≠ (½ > ½) is
    False = False → right; right; wrong → 2/3."""
    logits = torch.tensor([[0.0, 2.0], [1.0, NAN]])
    targets = torch.tensor([[0.5, 1.0], [0.0, NAN]])
    loss, accuracy = step_target_loss(logits, targets)
    assert loss.item() == pytest.approx(0.711112, abs=1e-6)
    assert accuracy.item() == pytest.approx(2 / 3)


def test_step_targets_are_prefix_correctness_or_the_labelled_values(char_tokenizer):
    records = [
        Record("a", "Q:12-5+3\n", "12-5=13\n13+3=16\nA:16", False, step_labels=(False, True, False)),
        Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True, step_values=(0.5, 0.25, 1.0)),
        Record("b", "Q:4*2\n", "4*2=8\nA:8", True),
    ]
    targets = collate(char_tokenizer, records)["step_targets"]
    assert targets[0].tolist() == [0.0, 0.0, 0.0]  # steps 1..k all correct: never, after a wrong step 1
    assert targets[1].tolist() == [0.5, 0.25, 1.0]
    assert targets[2].isnan().all()


def _explicit(tiny_model_dir: str, char_tokenizer, **kwargs) -> ExplicitPRM:
    module = ExplicitPRM(model_path=tiny_model_dir, name="ms", **kwargs)
    module.configure_model()
    if module.hparams.head == "generative":
        module.head_tokens = head_token_ids(char_tokenizer, "+", "-")
    return module


RECORDS = [
    Record("a", "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10", True, step_labels=(True, True, True)),
    Record("a", "Q:12-5+3\n", "12-5=13\nA:13", False, step_labels=(False, False)),
]


@pytest.mark.parametrize("head", ["linear", "generative"])
def test_explicit_prm_scores_step_ends_and_one_step_trains_the_model(tiny_model_dir, char_tokenizer, head):
    module = _explicit(tiny_model_dir, char_tokenizer, head=head, lr=1e-2)
    batch = collate(char_tokenizer, RECORDS)
    scored = module.score(batch)
    steps = scored["steps"]["ms_step"]
    assert steps.shape == batch["step_ends"].shape
    assert ((steps > 0) & (steps < 1)).sum() == 5 and steps[1, 2].isnan()
    assert module.scorer_names() == [f"ms_step_{how}" for how in ("min", "sum", "mean", "last")]
    assert module.method_scorer == "ms_step_min"
    assert scored["scores"][:, 0].tolist() == pytest.approx(
        [steps[0].min().item(), steps[1, :2].min().item()]
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-1)
    module.training_step(batch, 0).backward()
    optimizer.step()
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("model.model.layers") for k in changed)
    assert head == "generative" or {"value_head.weight", "value_head.bias"} <= set(changed)


def test_export_and_load_give_the_same_scores(tiny_model_dir, char_tokenizer, tmp_path):
    module = _explicit(tiny_model_dir, char_tokenizer, target="outcome").eval()
    torch.nn.init.normal_(module.value_head.weight)
    module.export(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    loaded = load_exported(tmp_path)
    batch = collate(char_tokenizer, RECORDS)
    assert loaded.method_scorer == "ms_step_last"
    assert torch.allclose(loaded.step_logits(batch), module.step_logits(batch), equal_nan=True)


class StudentLabels(MonteCarloLabels):
    """Monte-Carlo labels whose completions come from the world's student, not a network: it carries on
    from the value the prefix reached, following the misconception on half of its borrowing subtractions."""

    def sample(self, prompts: list[str], seed: int, context) -> list[str]:
        rng, out = random.Random(seed), []
        for prompt in prompts:
            question, _, prefix = prompt.partition("\n")
            problem = parse_problem(question + "\n")
            done = [line for line in prefix.split("\n") if line]
            value = int(STEP_PATTERN.match(done[-1])[4])
            lines = []
            for op, operand in problem.operations[len(done) :]:
                buggy = op == "-" and needs_borrow(value, operand) and rng.random() < 0.5
                result = subtract_without_borrowing(value, operand) if buggy else apply(value, op, operand)
                lines.append(f"{value}{op}{operand}={result}")
                value = result
            out.append("\n".join([*lines, f"A:{value}"]))
        self.sampled = getattr(self, "sampled", []) + list(zip(prompts, out, strict=True))
        return out


def _world_records(count: int) -> list[Record]:
    rng = random.Random(0)
    records = []
    for i in range(count):
        problem = sample_problem(rng, 2, 4, 200)
        response = solve(problem, rng, misconception_rate=0.6)
        verdict = verify(problem, response)
        records.append(
            Record(str(i), problem.prompt, response, verdict.label, step_labels=verdict.step_labels)
        )
    return records


def _context(tiny_model_dir: str, tmp_path) -> LabellingContext:
    return LabellingContext(tiny_model_dir, "\n", grade, tmp_path / "labels")


def test_monte_carlo_hard_labels_with_many_completions_equal_prefix_solvable(tiny_model_dir, tmp_path):
    """With K = 64 completions, a prefix is labelled good exactly when it is still solvable: its steps are
    all correct (a completion carries on from a wrong value and cannot recover); the last step's value is the
    outcome. Soft labels are the fraction of good completions: 0 after a wrong step, in (0, 1] before."""
    records = _world_records(40)
    hard, _ = StudentLabels(completions=64).label(records, _context(tiny_model_dir, tmp_path))
    soft, _ = StudentLabels(completions=64, rule="soft").label(records, _context(tiny_model_dir, tmp_path))
    assert sum(not r.label for r in records) >= 10 and sum(r.label for r in records) >= 10
    for record, h, s in zip(records, hard, soft, strict=True):
        solvable = [float(all(record.step_labels[: k + 1])) for k in range(len(record.step_labels) - 1)]
        assert list(h.step_values) == [*solvable, float(record.label)]
        assert h.step_labels is None  # the world's true labels never reach the baseline
        for value, good in zip(s.step_values, solvable, strict=False):
            assert (value > 0) == bool(good) and 0 <= value <= 1


def test_monte_carlo_cost_is_every_prompt_and_sampled_token_once(tiny_model_dir, tmp_path, char_tokenizer):
    """Hand count with the character tokenizer: each completion costs <bos> + its prompt and prefix + its
    characters + the <eos> that ended it; each prefix's K completions are one KV-cached sampling."""
    records = _world_records(6)  # prefixes of both classes (labels of one class are refused)
    labeller = StudentLabels(completions=4)
    _, cost = labeller.label(records, _context(tiny_model_dir, tmp_path))
    forward = ForwardCost.of(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    prefixes = sum(len(step_texts(r.response, "\n")) - 1 for r in records)
    assert len(labeller.sampled) == 4 * prefixes
    tokens = [1 + len(prompt) + len(completion) + 1 for prompt, completion in labeller.sampled]
    groups = [tokens[i : i + 4] for i in range(0, len(tokens), 4)]
    assert cost["tokens"] == sum(tokens)
    assert cost["flops"] == pytest.approx(sum(forward.sampling(sum(g), 4) for g in groups), rel=1e-12)
    assert cost["records"] == cost["distinct_records"] == 6
    _, repeated = labeller.label([*records, records[0]], _context(tiny_model_dir, tmp_path))
    assert repeated["records"] == 7 and repeated["flops"] == cost["flops"]  # a repeat is labelled once


def test_labels_are_cached_and_reused(tiny_model_dir, tmp_path):
    records = _world_records(6)
    first, cost = StudentLabels(completions=4).label(records[2:], _context(tiny_model_dir, tmp_path))

    class Refusing(StudentLabels):
        def sample(self, prompts, seed, context):
            assert len({p.partition("\n")[0] for p in prompts}) <= 2, "cached records were relabelled"
            return super().sample(prompts, seed, context)

    again, again_cost = Refusing(completions=4).label(records, _context(tiny_model_dir, tmp_path))
    assert again[2:] == first and again_cost["flops"] > cost["flops"]
    assert len(list((tmp_path / "labels").glob("*/labels-*.jsonl"))) == 2


def test_autopsv_rule_on_a_hand_example():
    """c = 0.8 (prompt), 0.7, 0.3, 0.6: step 1 drops 12.5 % (good), step 2 drops 57 % > 50 % (bad), step 3
    follows a bad step (bad, though its confidence rises)."""
    assert autopsv_values([0.8, 0.7, 0.3, 0.6], threshold=0.5) == [1.0, 0.0, 0.0]
    assert autopsv_values([0.8, 0.7, 0.3, 0.6], threshold=0.6) == [1.0, 1.0, 1.0]


@pytest.mark.integration
def test_orm_then_autopsv_and_math_shepherd_from_the_cli(smoke_world_root, tmp_path):
    """The baselines' configs end to end on the miniature world: the ORM exports its head and its cost,
    AutoPSV's every-step verifier too, AutoPSV labels with the verifier and counts its cost in its data
    FLOPs, Math-Shepherd samples its labels (cached for the next run) and counts their sampling; each
    reports its own method scorer, and each labeller its labels' share good and agreement."""

    def fit(name: str, *extra: str) -> dict:
        main([
            "fit", "--config", str(CONFIGS / "smoke.yaml"),
            "--config", str(CONFIGS / "baselines" / f"{name}.yaml"),
            "--data.world.root", str(smoke_world_root), "--trainer.default_root_dir", str(tmp_path / name),
            "--trainer.logger.init_args.save_dir", str(tmp_path / name), "--trainer.limit_val_batches", "1",
            "--model.export_dir", str(tmp_path / name / "export"), *extra,
        ])  # fmt: skip
        run = next((tmp_path / name / "smoke").glob("version_*"))
        return json.loads((run / "fit-metrics.json").read_text()) | {
            "flops": json.loads((run / "flops.json").read_text())
        }

    orm = fit("orm")
    assert (tmp_path / "orm" / "export" / "value_head.safetensors").is_file()
    # test from the checkpoint: the configs choose the class, the checkpoint fills in its own arguments
    checkpoint = next((tmp_path / "orm").glob("smoke/version_*/checkpoints/*.ckpt"))
    main([
        "test", "--config", str(CONFIGS / "smoke.yaml"), "--config", str(CONFIGS / "baselines" / "orm.yaml"),
        "--data.world.root", str(smoke_world_root), "--trainer.default_root_dir", str(tmp_path / "orm-test"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "orm-test"), "--ckpt_path", str(checkpoint),
    ])  # fmt: skip
    tested = json.loads(next((tmp_path / "orm-test").glob("smoke/version_*/test-metrics.json")).read_text())
    assert "test/strong/bon@1/orm_step_last" in tested
    assert "val/strong/bon@1/orm_step_last" in orm and "val/strong/bon@1/method" in orm
    osv = fit("osv", "--trainer.max_epochs", "1")  # AutoPSV's verifier: the outcome label at every step end
    assert "val/strong/bon@1/osv_step_last" in osv
    # θ = 0.1: here about 3/4 of the prefixes good (θ = 0.5, AutoPSV's code's, labels all good and is refused)
    autopsv = fit("autopsv", "--data.step_labels.orm", str(tmp_path / "osv" / "export"),
                  "--data.step_labels.threshold", "0.1")  # fmt: skip
    labelling = autopsv["flops"]["data_tokens"]["labelling"]
    assert labelling["method"] == "autopsv" and labelling["flops"] > osv["flops"]["train"]
    assert autopsv["flops"]["data"] == pytest.approx(osv["flops"]["data"] + labelling["flops"])
    # the labels' report, against the world's true step labels, with the run's metrics
    assert 0 < autopsv["labels/good_share"] < 1 and 0 <= autopsv["labels/agreement"] <= 1
    assert autopsv["labels/prefixes"] == labelling["report"]["prefixes"] > 0
    shepherd = fit("math_shepherd", "--data.step_labels.completions", "2")
    sampled = shepherd["flops"]["data_tokens"]["labelling"]
    assert sampled["method"] == "math_shepherd" and sampled["flops"] > 0
    assert list(smoke_world_root.glob("world-*/labels/math_shepherd-*/labels-*.jsonl"))
    assert "val/strong/process/math_shepherd_step/step_auroc" in shepherd
    assert 0 < shepherd["labels/good_share"] < 1 and 0 <= shepherd["labels/good_recall"] <= 1


def test_as_policy_grades_greedy_and_sampled_answers_of_held_out_problems(smoke_world_root, tmp_path, capsys):
    config = CONFIGS / "smoke.yaml"
    settings = yaml.safe_load(config.read_text())["data"]["init_args"]["world"]
    world = World.from_settings(settings | {"root": str(smoke_world_root)})
    prompts = as_policy.held_out_prompts(world)
    assert len(prompts) == settings["eval_problems"] and all(p.startswith("Q:") for p in prompts)
    output = tmp_path / "table3.md"
    as_policy.main(["--config", str(config), "--world.root", str(smoke_world_root), "--samples", "2",
                    "--policy", f"reference={world.model_path}", "--output", str(output)])  # fmt: skip
    assert "| reference | 6 |" in capsys.readouterr().out
    assert output.read_text().startswith("| policy | problems | greedy | sampled |")
