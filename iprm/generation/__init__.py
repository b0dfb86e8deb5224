"""Generation: N sampled responses per problem from any checkpoint, graded by the task.

- `backend`: what a backend is given (`Sampling`) and returns (`Completion`); how prompts are tokenised;
- `transformers_backend`: batched `model.generate` (left-padded, or the world's exact length buckets);
- `vllm_backend`: vLLM's `LLM.generate`, when vLLM is installed;
- `shards`: resumable, atomically written shards of graded responses under `.OUT.parts/`;
- `outputs`: the final file (iprm records or the official JSON list) and its manifest;
- `command`: `python -m iprm generate`.
"""
