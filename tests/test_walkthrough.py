"""The README's real-data walk-through at miniature size: a toy instruct model with a byte-level BPE and a
chat template, `generate` on GSM8K problems graded by math-verify, then `fit`, `test` and `predict` through
the chat template with "\\n\\n" steps — the chain a real checkpoint goes through."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from iprm.cli import main
from iprm.data.records import load_records
from iprm.generation.command import generate
from iprm.tasks.maths import MathTask
from iprm.tasks.toy_model import build, gsm8k_steps

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / "data" / "gsm8k_test.jsonl"


def test_gsm8k_solution_becomes_boxed_steps():
    answer = "She has 16 - 3 = <<16-3=13>>13 eggs.\nShe sells 13 * 2 = <<13*2=26>>26.\n#### 26"
    assert gsm8k_steps(answer) == (
        "Step 1: She has 16 - 3 = 13 eggs.\n\nStep 2: She sells 13 * 2 = 26.\n\n"
        "Step 3: The answer is \\boxed{26}."
    )
    task = MathTask(str(GSM8K), workers=0)
    assert task.split_steps(gsm8k_steps(answer))[-1] == "Step 3: The answer is \\boxed{26}."
    assert task.extract_answer(gsm8k_steps(answer)) == "26"


@pytest.mark.integration
@pytest.mark.slow
def test_generate_fit_test_predict_on_gsm8k_with_a_toy_instruct_model(tmp_path):
    model = build(tmp_path / "toy", GSM8K, problems=10, steps=4, hidden_size=32, num_layers=1, vocab_size=400)
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|eot_id|>"

    sets = {"train": (0, 6, 2), "eval": (6, 3, 4)}  # offset, problems, responses per problem
    for name, (offset, limit, n) in sets.items():
        task = MathTask(str(GSM8K), limit=limit, offset=offset, workers=0)
        output = str(tmp_path / f"{name}.jsonl")
        options = {"chat_template": True, "max_new_tokens": 24, "batch_size": 8, "device": "cpu"}
        manifest = generate(task, str(model), output, n=n, **options)
        assert (manifest["problems"], manifest["responses"]) == (limit, limit * n)
        assert manifest["sampled_tokens"] > 0
    train = load_records(tmp_path / "train.jsonl")
    assert not train[0].prompt.startswith("<|begin_of_text|>")  # the bare instruction: the template is data's

    common = [
        "--config", str(ROOT / "configs" / "real" / "walkthrough.yaml"), "--data.model_path", str(model),
        "--data.train_path", str(tmp_path / "train.jsonl"),
        "--data.eval_paths", json.dumps({"gsm8k": str(tmp_path / "eval.jsonl")}),
        # A toy model's labels are nearly all wrong and its text rarely has a blank line: both are allowed.
        "--data.allow_one_class", "true", "--data.allow_no_separator", "true",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    main(["fit", *common])
    run = tmp_path / "runs" / "walkthrough" / "version_0"
    assert (run / "policy" / "tokenizer_config.json").exists() and (run / "flops.json").exists()
    flops = json.loads((run / "flops.json").read_text())
    assert flops["data_tokens"]["source"] == "generate manifest"  # exact sampled-token counts

    main(["test", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    metrics = json.loads((run / "test-metrics.json").read_text())  # beside the fit (`iprm.runlog`)
    assert "test/gsm8k/bon@4/method" in metrics

    scored = tmp_path / "scored.jsonl"
    predict = ["--data.predict_path", str(tmp_path / "eval.jsonl"), "--prediction.output_path", str(scored)]
    main(["predict", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *predict])
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    candidates = load_records(tmp_path / "eval.jsonl")
    assert len(rows) == len(candidates) == 12
    task = MathTask(str(GSM8K), workers=0)
    for row, record in zip(rows, candidates, strict=True):
        steps = len(task.split_steps(record.response)) or 1
        assert len(row["step_scores"]["accumulative"]) == steps
    assert [p.name for p in (tmp_path / "runs" / "walkthrough").iterdir()] == ["version_0"]  # none stray
