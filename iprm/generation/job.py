"""One `generate` run as a picklable job: its shards sampled and graded by one or more workers, then merged.

A worker samples the shards it owns (`iprm.generation.workers.my_shards`) that are not finished yet, with the
model loaded only if one is left; `merged` reads every shard back in problem order, waiting for those another
worker is still making when asked to. What a row holds is described in `iprm.generation.outputs`.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from iprm.errors import ConfigError
from iprm.generation.backend import Backend, Sampling
from iprm.generation.shards import Shards, shard_seed
from iprm.generation.workers import my_shards, pin_gpus, worker_device
from iprm.tasks.base import Problem, Task

log = logging.getLogger(__name__)


@dataclass
class BackendOptions:
    """How a worker builds its backend (see `iprm.generation.command.generate` for each option)."""

    name: str = "transformers"
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None


@dataclass
class Job:
    """Sampling and grading shard by shard.

    Args:
        task: The problems, prompts and grading.
        model_path: The checkpoint and its tokenizer.
        settings: The run's settings (what a shard must have been made with).
        sampling: How responses are sampled.
        options: How the backend is built.
        parts: The directory of the run's shards.
    """

    task: Task
    model_path: str
    settings: dict
    sampling: Sampling
    options: BackendOptions
    parts: Path
    _tokenizer: object = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}  # each worker loads its own

    @property
    def n(self) -> int:
        return self.settings["n"]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self.model_path, trust_remote_code=self.options.trust_remote_code
            )
        return self._tokenizer

    def chunks(self) -> list[list[Problem]]:
        problems = self.task.problems()
        if not problems:
            raise ConfigError(f"{type(self.task).__name__}: the task has no problems")
        ids = [problem.id for problem in problems]
        if len(set(ids)) != len(ids):
            repeated = next(i for i in ids if ids.count(i) > 1)
            raise ConfigError(f"{type(self.task).__name__}: problem id {repeated!r} is not unique")
        size = self.settings["problems_per_shard"]
        return [problems[begin : begin + size] for begin in range(0, len(problems), size)]

    def identity(self, chunk: list[Problem]) -> list:
        """What a shard must have been made for: its problems, as this task now states them."""
        return [[problem.id, self.task.instruction(problem), problem.reference] for problem in chunk]

    def run_worker(self, rank: int, world_size: int, local_rank: int = 0) -> None:
        """Sample and write the unfinished shards worker `rank` of `world_size` owns."""
        chunks = self.chunks()
        self.sample_shards(chunks, my_shards(len(chunks), rank, world_size), local_rank, rank, world_size)

    def sample_shards(
        self, chunks: list[list[Problem]], indices: list[int], local_rank: int, rank: int, world_size: int
    ) -> None:
        shards, backend = Shards(self.parts, self.settings), None
        todo = [i for i in indices if shards.load(i, self.identity(chunks[i])) is None]
        desc = "generate" if world_size == 1 else f"generate [worker {rank}/{world_size}]"
        total = sum(len(chunks[i]) for i in todo) * self.n
        with tqdm(total=total, desc=desc, unit="response", disable=not todo) as progress:
            for index in todo:
                backend = backend or self.backend(local_rank, several=world_size > 1)
                seed = shard_seed(self.settings["seed"], index)
                rows = self.sample(backend, chunks[index], seed, progress.update)
                shards.write(index, self.identity(chunks[index]), rows)

    def merged(self, chunks: list[list[Problem]], wait_for: int = 1, poll: float = 2.0) -> list[dict]:
        """Every shard's rows in problem order. With `wait_for` > 1 workers, a shard not yet written is
        waited for (its worker is making it); a shard that fails its checksum is sampled again here."""
        shards, rows, waited = Shards(self.parts, self.settings), [], time.monotonic()
        for index, chunk in enumerate(chunks):
            while wait_for > 1 and not shards.finished(index):
                if time.monotonic() - waited > 60:
                    owner = index % wait_for
                    log.info("generate: waiting for shard %d from worker %d in %s", index, owner, self.parts)
                    waited = time.monotonic()
                time.sleep(poll)
            shard = shards.load(index, self.identity(chunk))
            if shard is None:
                self.sample_shards(chunks, [index], 0, 0, 1)
                shard = shards.load(index, self.identity(chunk))
            rows += shard
        return rows

    def backend(self, local_rank: int = 0, several: bool = False) -> Backend:
        """The worker's backend, on its own device(s) when it is one of several."""
        options = self.options
        if options.name == "vllm":
            from iprm.generation.vllm_backend import VLLMBackend

            if several:
                pin_gpus(local_rank, options.tensor_parallel_size)
            return VLLMBackend(
                self.model_path, self.tokenizer, options.dtype, options.trust_remote_code,
                options.tensor_parallel_size, options.gpu_memory_utilization, options.max_model_len,
            )  # fmt: skip
        from iprm.sampling import TransformersBackend, load_model

        device = worker_device(options.device, local_rank)
        model = load_model(self.model_path, device, options.dtype, options.trust_remote_code)
        return TransformersBackend(model, self.tokenizer, options.batch_size)

    def sample(self, backend: Backend, problems: list[Problem], seed: int, progress) -> list[dict]:
        """The graded rows of `n` responses to each problem (`iprm.generation.outputs` describes a row)."""
        prompts = [
            self.task.prompt(problem, self.tokenizer, self.settings["chat_template"]) for problem in problems
        ]
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
