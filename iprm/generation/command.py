"""`python -m iprm generate`: N sampled responses per problem of a task, graded by the task, as training or
best-of-N data.

    python -m iprm generate --task iprm.tasks.maths.MathTask --task.path data/math500.jsonl \
        --model_path DIR --n 4 --output runs/gen.jsonl [--format official] [--chat_template true] ...

Each problem's prompt is `task.prompt(problem, tokenizer, chat_template)`; each response is graded by
`task.extract_answer` and `task.grade` (one call per shard) and written with the un-templated instruction as
its prompt. The run works in shards (`iprm.generation.shards`), so a killed run resumes where it stopped and
writes what an uninterrupted one would; the output and its manifest (`OUT.generate.json`: settings, counts,
exact token counts) are written atomically at the end, and two runs on one output wait for each other.
"""

import logging
from functools import partial
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from iprm.errors import ConfigError
from iprm.generation.backend import Backend, Sampling
from iprm.generation.manifest import lock_path, parts_path, read_manifest
from iprm.generation.outputs import Format, counts, write_manifest, write_output
from iprm.generation.shards import Shards, differences, shard_seed
from iprm.io import exclusive
from iprm.tasks.base import Problem, Task
from iprm.validate import check_model_path

log = logging.getLogger(__name__)
BackendName = Literal["transformers", "vllm"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


def generate(
    task: Task,
    model_path: str,
    output: str,
    n: int = 4,
    format: Format = "records",
    chat_template: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    problems_per_shard: int = 64,
    backend: BackendName = "transformers",
    device: str = "auto",
    dtype: Dtype = "auto",
    trust_remote_code: bool = False,
    source: str | None = None,
) -> dict:
    """Sample `n` responses to every problem of `task` from the checkpoint at `model_path`, grade them with
    the task, and write them to `output`; return the manifest.

    Args:
        task: The problems, their prompts and their grading (an `iprm.tasks.base.Task` subclass).
        model_path: The checkpoint to sample from, and its tokenizer (a directory, or a hub id).
        output: The file to write: JSON lines of iprm records, or with `format` official a JSON list.
        n: Responses per problem.
        format: "records" (iprm's JSON lines) or "official" (the official JSON list of candidates).
        chat_template: Put each problem through the tokenizer's chat template (for instruct models); the
            records keep the bare instruction, so train with data.chat_template true as well.
        temperature: Sampling temperature; 0 decodes greedily.
        top_p: Nucleus sampling mass (1 keeps every token).
        top_k: Sample among the k most probable tokens (0 keeps every token).
        max_new_tokens: Longest response, in tokens.
        batch_size: Prompts per generate call (transformers backend).
        seed: Seed of the run; shard i samples with a seed drawn from (seed, i).
        problems_per_shard: Problems per shard, the unit that is written, and resumed, as a whole.
        backend: "transformers" (batched model.generate) or "vllm" (needs vLLM installed).
        device: Where the transformers backend runs: "auto" (a GPU if visible), "cpu", "cuda", "cuda:1", ...
        dtype: Weights' dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
        trust_remote_code: Let the checkpoint run its own modelling and tokenizer code.
        source: The records' source (default: the checkpoint directory's name).
    """
    sampling = Sampling(temperature, top_p, top_k, max_new_tokens)
    if n < 1 or problems_per_shard < 1 or batch_size < 1:
        raise ConfigError(
            f"generate: n, problems_per_shard and batch_size must be at least 1; got {n}, "
            f"{problems_per_shard}, {batch_size}"
        )
    check_model_path(model_path, "--model_path")
    local = Path(model_path).expanduser()
    settings = {
        "task": f"{type(task).__module__}.{type(task).__qualname__}",
        "model_path": str(local.resolve()) if local.is_dir() else model_path,
        "n": n, "seed": seed, "temperature": temperature, "top_p": top_p, "top_k": top_k,
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "problems_per_shard": problems_per_shard,
        "chat_template": chat_template, "backend": backend, "dtype": dtype,
    }  # fmt: skip
    written = {**settings, "format": format, "source": source or local.name or model_path}
    output_path = Path(output)
    with exclusive(lock_path(output_path)):
        finished = _finished(output_path, written)
        if finished is not None:
            return finished
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        problems = _problems(task)
        run = _Run(task, tokenizer, sampling, settings, n, chat_template)
        make_backend = partial(
            _backend, backend, model_path, tokenizer, batch_size, device, dtype, trust_remote_code
        )
        shards = Shards(parts_path(output_path), settings)
        rows = run.all_shards(problems, shards, make_backend)
        write_output(rows, output_path, format, written["source"])
        manifest = {"settings": written, **counts(rows, len(problems))}
        write_manifest(output_path, manifest)
        shards.remove()
    log.info("generate: %d responses to %d problems written to %s", len(rows), len(problems), output_path)
    return manifest


def _finished(output: Path, written: dict) -> dict | None:
    """The manifest of a finished run with these settings; refuses to overwrite another run's, or a file
    `generate` did not write."""
    if parts_path(output).exists() or not output.exists():
        return None  # under way (or never started): the shards decide
    manifest = read_manifest(output)
    if manifest is None:
        raise ConfigError(
            f"{output} exists and was not written by generate; remove it or choose another --output"
        )
    if manifest["settings"] != written:
        raise ConfigError(
            f"{output} was generated with other settings ({differences(manifest['settings'], written)}); "
            "remove it and its .generate.json, or choose another --output"
        )
    log.info("generate: %s is already generated with these settings", output)
    return manifest


def _problems(task: Task) -> list[Problem]:
    problems = task.problems()
    if not problems:
        raise ConfigError(f"{type(task).__name__}: the task has no problems")
    ids = [problem.id for problem in problems]
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{type(task).__name__}: problem id {repeated!r} is not unique")
    return problems


def _backend(
    name: str,
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    device: str,
    dtype: str,
    trust_remote_code: bool,
) -> Backend:
    if name == "vllm":
        from iprm.generation.vllm_backend import VLLMBackend

        return VLLMBackend(model_path, tokenizer, dtype, trust_remote_code)
    from iprm.generation.transformers_backend import TransformersBackend, load_model

    model = load_model(model_path, device, dtype, trust_remote_code)
    return TransformersBackend(model, tokenizer, batch_size)


class _Run:
    """Sampling and grading shard by shard."""

    def __init__(self, task, tokenizer, sampling: Sampling, settings: dict, n: int, chat_template: bool):
        self.task, self.tokenizer, self.sampling = task, tokenizer, sampling
        self.settings, self.n, self.chat_template = settings, n, chat_template

    def all_shards(self, problems: list[Problem], shards: Shards, make_backend) -> list[dict]:
        """Every shard's rows, in problem order: finished shards as they are, the others sampled (the model
        is loaded only if one is left)."""
        size = self.settings["problems_per_shard"]
        chunks = [problems[begin : begin + size] for begin in range(0, len(problems), size)]
        backend, rows = None, []
        with tqdm(total=len(problems) * self.n, desc="generate", unit="response") as progress:
            for index, chunk in enumerate(chunks):
                # What a shard must have been made for: the problems, as this task now states them.
                ids = [[problem.id, self.task.instruction(problem), problem.reference] for problem in chunk]
                shard = shards.load(index, ids)
                if shard is None:
                    backend = backend or make_backend()
                    shard = self.sample(
                        backend, chunk, shard_seed(self.settings["seed"], index), progress.update
                    )
                    shards.write(index, ids, shard)
                else:
                    progress.update(len(shard))
                rows += shard
        return rows

    def sample(self, backend: Backend, problems: list[Problem], seed: int, progress) -> list[dict]:
        """The graded rows of `n` responses to each problem (`iprm.generation.outputs` describes a row)."""
        prompts = [self.task.prompt(problem, self.tokenizer, self.chat_template) for problem in problems]
        repeated = [problem for problem in problems for _ in range(self.n)]
        completions = backend.generate(
            [p for p in prompts for _ in range(self.n)], self.sampling, seed, progress
        )
        answers = [self.task.extract_answer(completion.text) for completion in completions]
        labels = self.task.grade(answers, repeated)
        rows = []
        for problem, completion, answer, label in zip(repeated, completions, answers, labels, strict=True):
            # An immediate end of sequence is a (wrong) response too; records need text, so it is written as
            # the end-of-sequence token, which scoring reads back as exactly that token.
            response = completion.text if completion.text.strip() else self.tokenizer.eos_token or "<eos>"
            steps = self.task.step_labels(problem, response)
            rows.append({
                "problem": problem.id, "prompt": self.task.instruction(problem), "response": response,
                "label": bool(label), "answer": answer, "reference": problem.reference,
                "step_labels": None if steps is None else list(steps),
                "prompt_tokens": completion.prompt_tokens, "sampled_tokens": completion.sampled_tokens,
            })  # fmt: skip
        return rows


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m iprm generate",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        env_prefix="IPRM_GENERATE",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of these options.")
    parser.add_function_arguments(generate, as_group=False)
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    config = parser.parse_args(argv)
    arguments = parser.instantiate_classes(config).as_dict()
    arguments.pop("config", None)
    manifest = generate(**arguments)
    print(
        f"{arguments['output']}: {manifest['responses']} responses to {manifest['problems']} problems, "
        f"{manifest['correct']} correct; {manifest['prompt_tokens']} prompt and "
        f"{manifest['sampled_tokens']} sampled tokens"
    )
    return manifest
