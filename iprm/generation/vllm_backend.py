"""Sampling with vLLM (`LLM.generate`), for real checkpoints on GPUs; used only when vLLM is installed.

Prompts go in as token ids (`encode_prompts`, as the transformers backend tokenises them), so both backends
read the same tokens and a templated prompt gets no second beginning-of-sequence token. Request i is seeded
with `seed + i`: repeated prompts get different samples, and the samples depend only on the prompts, the
settings and `seed`. vLLM schedules and batches the requests itself.
"""

from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from iprm.errors import ConfigError
from iprm.generation.backend import Completion, Sampling, encode_prompts


class VLLMBackend:
    """vLLM's offline engine over one checkpoint.

    Args:
        model_path: The checkpoint (a directory, or a hub id where the hub is reachable).
        tokenizer: Its tokenizer, which encodes the prompts.
        dtype: "auto" (the checkpoint's own), "float32", "bfloat16" or "float16".
        trust_remote_code: Let the checkpoint run its own modelling code.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: PreTrainedTokenizerBase,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError(
                "--backend vllm: vLLM is not installed (pip install vllm), or use --backend transformers"
            ) from None
        self.tokenizer = tokenizer
        self.llm = LLM(model=model_path, dtype=dtype, trust_remote_code=trust_remote_code)

    def generate(
        self,
        prompts: list[str],
        sampling: Sampling,
        seed: int,
        progress: Callable[[int], object] | None = None,
    ) -> list[Completion]:
        from vllm import SamplingParams

        greedy = sampling.temperature == 0
        params = [
            SamplingParams(
                n=1,
                temperature=sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                top_k=-1 if greedy or sampling.top_k == 0 else sampling.top_k,  # -1: every token
                max_tokens=sampling.max_new_tokens,
                seed=seed + i,
            )
            for i in range(len(prompts))
        ]
        encoded = encode_prompts(self.tokenizer, prompts)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        completions = []
        for ids, output in zip(encoded, outputs, strict=True):
            sample = output.outputs[0]
            # `token_ids` holds the end-of-sequence token that stopped the sample; `text` leaves it out.
            completions.append(Completion(sample.text, len(ids), len(sample.token_ids)))
        if progress is not None:
            progress(len(prompts))
        return completions
