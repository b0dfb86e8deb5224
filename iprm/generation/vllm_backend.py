"""Sampling with vLLM (`LLM.generate`), for real checkpoints on GPUs; used only when vLLM is installed.

Prompts go in as token ids (`encode_prompts`, as the transformers backend tokenises them), so both backends
read the same tokens and a templated prompt gets no second beginning-of-sequence token. A run of equal
consecutive prompts (a problem repeated for its N responses) is one request with `SamplingParams(n=N)`, so
vLLM shares the prompt's prefill and KV cache among its samples; request r is seeded with `seed + r`, so the
samples depend only on the prompts, the settings and `seed`. vLLM schedules and batches the requests itself;
progress advances as each request finishes, through the progress-bar factory `LLM.generate` accepts.

vLLM is imported only when this backend is built, so nothing else needs it installed.
"""

from collections.abc import Callable
from itertools import groupby

from transformers import PreTrainedTokenizerBase

from iprm.errors import ConfigError
from iprm.generation.backend import Completion, Sampling, encode_prompts


def requests(prompts: list[str]) -> list[tuple[str, int]]:
    """Each run of equal consecutive prompts as one (prompt, number of samples) request, in order."""
    return [(prompt, len(list(run))) for prompt, run in groupby(prompts)]


class _RequestProgress:
    """What vLLM takes for a progress bar: it calls `update` once per finished request. Each call reports
    that request's share of the responses to `progress` (requests may finish in any order, so the share is
    the average; the total comes out exact)."""

    def __init__(self, progress: Callable[[int], object], responses: int, requests: int):
        self.progress, self.responses, self.requests = progress, responses, requests
        self.finished, self.reported = 0, 0
        self.total, self.postfix, self.n = requests, "", 0

    def __call__(self, *args, **kwargs) -> "_RequestProgress":
        return self  # vLLM calls the factory with tqdm's arguments; they are not needed

    def update(self, n: int = 1) -> None:
        self.finished = min(self.finished + 1, self.requests)
        self.n = self.finished
        self.advance(self.responses * self.finished // self.requests)

    def advance(self, reported: int) -> None:
        if reported > self.reported:
            self.progress(reported - self.reported)
            self.reported = reported

    def set_postfix(self, *args, **kwargs) -> None: ...

    def refresh(self, *args, **kwargs) -> None: ...

    def close(self) -> None: ...


class VLLMBackend:
    """vLLM's offline engine over one checkpoint.

    Args:
        model_path: The checkpoint (a directory, or a hub id where the hub is reachable).
        tokenizer: Its tokenizer, which encodes the prompts.
        dtype: "auto" (the checkpoint's own), "float32", "bfloat16" or "float16".
        trust_remote_code: Let the checkpoint run its own modelling code.
        tensor_parallel_size: GPUs one copy of the model is split across (vLLM's tensor parallelism).
        gpu_memory_utilization: Fraction of each GPU's memory vLLM may take (weights and KV cache).
        max_model_len: Longest prompt plus response vLLM plans for; None: the checkpoint's context length.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: PreTrainedTokenizerBase,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
    ):
        check_engine_settings(tensor_parallel_size, gpu_memory_utilization, max_model_len)
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError(
                "--backend vllm: vLLM is not installed (pip install vllm), or use --backend transformers"
            ) from None
        self.tokenizer = tokenizer
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )

    def generate(
        self,
        prompts: list[str],
        sampling: Sampling,
        seed: int,
        progress: Callable[[int], object] | None = None,
    ) -> list[Completion]:
        from vllm import SamplingParams

        greedy = sampling.temperature == 0
        grouped = requests(prompts)
        params = [
            SamplingParams(
                n=count,
                temperature=sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                top_k=-1 if greedy or sampling.top_k == 0 else sampling.top_k,  # -1: every token
                max_tokens=sampling.max_new_tokens,
                seed=seed + r,
            )
            for r, (_, count) in enumerate(grouped)
        ]
        encoded = encode_prompts(self.tokenizer, [prompt for prompt, _ in grouped])
        bar = _RequestProgress(progress, len(prompts), len(grouped)) if progress is not None else None
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=bar if bar is not None else False
        )
        completions = []
        for ids, (_, count), output in zip(encoded, grouped, outputs, strict=True):
            if len(output.outputs) != count:
                raise RuntimeError(f"vLLM returned {len(output.outputs)} samples for a request of {count}")
            # `token_ids` holds the end-of-sequence token that stopped the sample; `text` leaves it out.
            completions += [Completion(s.text, len(ids), len(s.token_ids)) for s in output.outputs]
        if bar is not None:
            bar.advance(len(prompts))  # whatever vLLM's updates left unreported
        return completions


def check_engine_settings(
    tensor_parallel_size: int, gpu_memory_utilization: float, max_model_len: int | None
) -> None:
    """Refuse engine settings vLLM would only reject after loading the model."""
    problems = []
    if tensor_parallel_size < 1:
        problems.append(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    if not 0 < gpu_memory_utilization <= 1:
        problems.append(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if max_model_len is not None and max_model_len < 1:
        problems.append(f"max_model_len must be at least 1, got {max_model_len}")
    if problems:
        raise ConfigError("generate: " + "; ".join(problems))
