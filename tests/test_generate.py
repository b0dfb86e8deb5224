"""`python -m iprm generate`: sampling backends, grading by the task, records and the official format, shards
that resume to the same bytes, and the manifest's token counts."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from iprm.data import PRMDataModule
from iprm.data.official import load_official_candidates
from iprm.data.records import load_records
from iprm.errors import ConfigError
from iprm.generation import shards
from iprm.generation.backend import Sampling
from iprm.generation.command import generate
from iprm.generation.job import Job
from iprm.generation.manifest import manifest_path, parts_path
from iprm.generation.transformers_backend import TransformersBackend
from iprm.tasks.base import Problem, Task

ROOT = Path(__file__).resolve().parents[1]


class SumTask(Task):
    """Problems "Q:i+1\\n". A response's answer is its first visible character, right when it is a digit (so
    a random tiny model gets both labels); a step's label is whether the step has an even length.

    Args:
        count: Problems.
        reference: The characters that count as a right answer.
    """

    def __init__(self, count: int = 5, reference: str = "0123456789"):
        super().__init__(separator="\n")
        self.count, self.reference = count, reference

    def problems(self) -> list[Problem]:
        return [Problem(id=f"p{i}", text=f"{i}+1", reference=self.reference) for i in range(self.count)]

    def instruction(self, problem: Problem) -> str:
        return f"Q:{problem.text}\n"

    def extract_answer(self, response: str) -> str | None:
        return response.strip()[:1] or None

    def grade(self, answers: list[str | None], problems: list[Problem]) -> list[bool]:
        return [a is not None and a in p.reference for a, p in zip(answers, problems, strict=True)]

    def step_labels(self, problem: Problem, response: str) -> list[bool]:
        return [len(step) % 2 == 0 for step in self.split_steps(response)]


FAST = {"n": 3, "max_new_tokens": 8, "batch_size": 4, "problems_per_shard": 2, "device": "cpu"}


def run(model_dir, output, task=None, **changes) -> dict:
    return generate(task or SumTask(), model_dir, str(output), **(FAST | changes))


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_model_dir):
    """One uninterrupted run (5 problems × 3 responses, in 3 shards), shared by the tests that read it."""
    output = tmp_path_factory.mktemp("generated") / "gen.jsonl"
    return output, run(tiny_model_dir, output)


def test_records_validate_and_carry_the_tasks_grading(generated):
    output, manifest = generated
    task = SumTask()
    records = load_records(output, separator=task.separator)
    problems = {p.id: p for p in task.problems()}
    assert [r.instruction_id for r in records] == [p for p in problems for _ in range(3)]
    assert all(r.prompt == task.instruction(problems[r.instruction_id]) for r in records)  # un-templated
    # An immediate <eos> is written as "<eos>" (records need text), graded as the empty response it was.
    answers = [task.extract_answer(r.response.replace("<eos>", "")) for r in records]
    assert any(r.response == "<eos>" for r in records)
    assert [r.answer for r in records] == answers
    assert [r.label for r in records] == task.grade(answers, [problems[r.instruction_id] for r in records])
    assert {r.label for r in records} == {True, False}  # the check above saw both labels
    assert all(list(r.step_labels) == task.step_labels(None, r.response) for r in records)
    assert {r.source for r in records} == {Path(manifest["model_path"]).name}
    assert manifest["problems"] == 5 and manifest["responses"] == 15
    assert manifest["correct"] == sum(r.label for r in records)
    assert not parts_path(output).exists()  # the shards go once the output is complete


def test_left_padded_greedy_batches_equal_one_prompt_at_a_time(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = ["Q:1+2\n", "Q:10+20*3\n", "Q:7\n", "Q:123-45+6\n", "Q:99*9\n"]  # lengths 7 to 12 tokens
    greedy = Sampling(temperature=0.0, max_new_tokens=10)
    alone = TransformersBackend(model, tokenizer, batch_size=1).generate(prompts, greedy, seed=0)
    padded = TransformersBackend(model, tokenizer, batch_size=5).generate(prompts, greedy, seed=0)
    bucketed = TransformersBackend(model, tokenizer, batch_size=5, bucketed=True).generate(prompts, greedy, 0)
    assert padded == alone == bucketed
    assert len({c.text for c in alone}) > 1


def test_sampling_leaves_the_callers_random_state_as_it_was(tiny_model_dir):
    """Math-Shepherd samples its completions inside the training process: whether its labels came from the
    cache or were sampled just now must not change the training's random draws."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    sampled = TransformersBackend(model, tokenizer, batch_size=2).generate(
        ["Q:1+2\n", "Q:7\n", "Q:99*9\n"], Sampling(temperature=1.0, max_new_tokens=5), seed=7
    )
    assert len(sampled) == 3
    assert torch.equal(torch.rand(3), expected)


def always(token: str, model_dir: str) -> nn.Module:
    """The tiny model made to sample `token` and nothing else: its head gives every position the same
    logits, 200 higher for `token` than for any other."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-100.0)
        head.bias[AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(token)] = 100.0
    model.lm_head = head
    return model


def test_token_counts_equal_a_hand_count(tiny_model_dir, char_tokenizer):
    """ "Q:2+1\\n" is 6 characters, 7 tokens with <bos> ("Q:10+1\\n" 8). A model that always says "7"
    samples max_new_tokens = 5 tokens ("77777"); one that always says <eos> samples 1 (the <eos>), no text."""
    sampling = Sampling(temperature=1.0, max_new_tokens=5)
    for token, text, sampled in (("7", "77777", 5), ("<eos>", "", 1)):
        backend = TransformersBackend(always(token, tiny_model_dir), char_tokenizer, batch_size=2)
        completions = backend.generate(["Q:2+1\n", "Q:2+1\n", "Q:10+1\n"], sampling, seed=0)
        assert [(c.text, c.prompt_tokens, c.sampled_tokens) for c in completions] == [
            (text, 7, sampled), (text, 7, sampled), (text, 8, sampled)
        ]  # fmt: skip


def test_the_manifest_counts_every_prompt_and_sampled_token(
    tiny_model_dir, char_tokenizer, tmp_path, monkeypatch
):
    """5 problems "Q:i+1\\n" (7 tokens with <bos>) × 3 responses: 105 prompt tokens; "77777" is 5 sampled
    tokens (max_new_tokens), an immediate <eos> 1 (written as "<eos>", graded as the empty response)."""
    for token, response, answer, sampled in (("7", "77777", "7", 5 * 15), ("<eos>", "<eos>", None, 15)):
        backend = TransformersBackend(always(token, tiny_model_dir), char_tokenizer, batch_size=4)
        monkeypatch.setattr(Job, "backend", lambda *args, backend=backend, **kwargs: backend)
        output = tmp_path / f"{token.strip('<>')}.jsonl"
        manifest = run(tiny_model_dir, output, max_new_tokens=5)
        assert (manifest["prompt_tokens"], manifest["sampled_tokens"]) == (105, sampled)
        assert {(r.response, r.answer) for r in load_records(output)} == {(response, answer)}


def test_a_chat_template_adds_no_second_bos_and_records_keep_the_instruction(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "chat"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(model_dir)
    output = tmp_path / "chat.jsonl"
    manifest = run(str(model_dir), output, task=SumTask(count=1), n=1, chat_template=True)
    # "<bos>Q:0+1\n" is read as 7 tokens: <bos> once, then 6 characters.
    assert manifest["prompt_tokens"] == 7
    assert load_records(output)[0].prompt == "Q:0+1\n"


def kill_after_the_first_shard(monkeypatch, model_dir: str, output: Path, **changes) -> None:
    """Run until the first shard is written, then stop as a kill would."""
    write = shards.Shards.write

    def killed(self, index, *args):
        write(self, index, *args)
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(shards.Shards, "write", killed)
        with pytest.raises(KeyboardInterrupt):
            run(model_dir, output, **changes)
    assert sorted(p.name for p in parts_path(output).iterdir()) == ["shard-00000.json", "shard-00000.sha256"]
    assert not output.exists() and not manifest_path(output).exists()


def test_a_killed_run_resumes_to_the_same_bytes(generated, tiny_model_dir, tmp_path, monkeypatch):
    output = tmp_path / "gen.jsonl"
    kill_after_the_first_shard(monkeypatch, tiny_model_dir, output)
    run(tiny_model_dir, output)
    uninterrupted, _ = generated
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert manifest_path(output).read_bytes() == manifest_path(uninterrupted).read_bytes()


def test_mismatched_settings_are_refused(tiny_model_dir, tmp_path, monkeypatch):
    output = tmp_path / "gen.jsonl"
    kill_after_the_first_shard(monkeypatch, tiny_model_dir, output)
    with pytest.raises(ConfigError, match=r"shard-00000.json was made with other settings \(n: 3 → 2\)"):
        run(tiny_model_dir, output, n=2)
    with pytest.raises(ConfigError, match="shard-00000.json holds other problems than shard 0"):
        run(tiny_model_dir, output, task=SumTask(reference="13579"))
    first = run(tiny_model_dir, output)
    # Finished: the same settings return the manifest without loading the model; others are refused.
    monkeypatch.setattr(Job, "backend", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    assert run(tiny_model_dir, output) == first
    with pytest.raises(ConfigError, match=r"generated with other settings \(temperature: 1.0 → 0.5\)"):
        run(tiny_model_dir, output, temperature=0.5)


def test_the_official_format_round_trips(generated, tiny_model_dir, tmp_path):
    output = tmp_path / "official.json"
    run(tiny_model_dir, output, format="official")
    records = load_records(generated[0])
    official = load_official_candidates(output)
    fields = ("instruction_id", "prompt", "response", "label", "answer")
    assert [[getattr(r, f) for f in fields] for r in official] == [
        [getattr(r, f) for f in fields] for r in records
    ]
    assert {item["reference"] for item in json.loads(output.read_text())} == {"0123456789"}


def test_vllm_not_installed_is_a_config_error_naming_the_option(tiny_model_dir, tmp_path):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="--backend vllm: vLLM is not installed"):
            run(tiny_model_dir, tmp_path / "gen.jsonl", backend="vllm")
    else:
        pytest.skip("vLLM is installed")


def test_training_prefers_the_manifests_exact_token_counts(generated, tiny_model_dir):
    output, manifest = generated
    data = PRMDataModule(
        model_path=tiny_model_dir,
        train_path=str(output),
        responses_per_instruction=1,
        allow_no_separator=True,
    )
    data.setup("fit")
    counts = data.sampling_tokens()
    assert counts["source"] == "generate manifest" and counts["records"] == 5
    assert counts["prompt_tokens"] == manifest["prompt_tokens"] / 3
    assert counts["sampled_tokens"] == manifest["sampled_tokens"] / 3


@pytest.mark.integration
@pytest.mark.slow
def test_the_command_writes_what_the_function_does(generated, tiny_model_dir, tmp_path):
    output = tmp_path / "gen.jsonl"
    flags = [f"--{key}={value}" for key, value in FAST.items()]
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "iprm", "generate", "--task", "test_generate.SumTask", "--task.count", "5",
         "--model_path", tiny_model_dir, "--output", str(output), *flags],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert output.read_bytes() == generated[0].read_bytes()
    assert "15 responses to 5 problems" in done.stdout


def test_a_bad_setting_is_one_line_naming_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    argv = ["iprm", "generate", "--task", f"{__name__}.SumTask", "--model_path", tiny_model_dir,
            "--output", str(tmp_path / "gen.jsonl"), "--top_p", "0"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit:
        runpy.run_module("iprm", run_name="__main__")
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: generate: top_p must be in (0, 1], got 0.0"]
