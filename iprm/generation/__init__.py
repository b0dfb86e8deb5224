"""Generation: N sampled responses per problem from any checkpoint, graded by the task.

- `backend`: what a backend is (`Backend`); `Sampling`, `Completion` and the transformers sampler live below
  the rooms that sample, in `iprm.sampling`;
- `transformers_backend`: batched `model.generate` (left-padded, or the world's exact length buckets);
- `vllm_backend`: vLLM's `LLM.generate`, when vLLM is installed (tensor parallelism, N samples per request);
- `shards`: resumable, atomically written, checksummed shards of graded responses under `.OUT.parts/`;
- `job`: one run's sampling and grading, shard by shard, by one or more workers, then merged;
- `workers`: which shards a worker owns, its device, `--devices K` worker processes, torchrun/srun ranks;
- `fingerprint`: the checkpoint's identity a resume is checked against (its files, not its path);
- `outputs`: the final file (iprm records or the official JSON list) and its manifest;
- `command`: `python -m iprm generate`.
"""
