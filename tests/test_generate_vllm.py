"""The vLLM backend's plumbing, against a fake `vllm` module (vLLM needs GPUs and is not installed here): the
engine settings reach `LLM`, a problem's N responses are one request with `SamplingParams(n=N)`, and progress
advances as requests finish."""

import os
import sys
import types
from dataclasses import dataclass

import pytest
from test_generate import SumTask, run
from transformers import AutoTokenizer

from iprm.errors import ConfigError
from iprm.generation.backend import Sampling
from iprm.generation.vllm_backend import VLLMBackend, requests


@dataclass
class Sample:
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    outputs: list[Sample]


class FakeLLM:
    """Records what it is given; request r's sample j is "<j>" then the end-of-sequence token. Requests finish
    in reverse order, as a scheduler may finish them."""

    made: list["FakeLLM"] = []

    def __init__(self, **engine):
        self.engine, self.calls = engine, []
        FakeLLM.made.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        bar = use_tqdm(total=len(prompts), desc="Processed prompts") if callable(use_tqdm) else None
        outputs = [RequestOutput([Sample(str(j % 10), [5, 2]) for j in range(p.n)]) for p in params]
        for _ in reversed(outputs):
            if bar is not None:
                bar.update(1)
        return outputs


class FakeSamplingParams:
    def __init__(self, **settings):
        self.__dict__.update(settings)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.made.clear()
    return module


def test_engine_settings_reach_vllm_and_n_samples_are_one_request(fake_vllm, tiny_model_dir, tmp_path):
    output = tmp_path / "gen.jsonl"
    manifest = run(
        tiny_model_dir, output, task=SumTask(count=3), backend="vllm", n=4, problems_per_shard=3,
        tensor_parallel_size=2, gpu_memory_utilization=0.5, max_model_len=256, temperature=0.7, top_k=5,
    )  # fmt: skip
    (llm,) = FakeLLM.made
    assert llm.engine == {
        "model": tiny_model_dir, "dtype": "auto", "trust_remote_code": False, "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.5, "max_model_len": 256,
    }  # fmt: skip
    ((prompts, params),) = llm.calls  # one shard, one call
    assert len(prompts) == 3 and [p.n for p in params] == [4, 4, 4]  # one request per problem, n=4 each
    assert len({p.seed for p in params}) == 3
    assert (params[0].temperature, params[0].top_k, params[0].max_tokens) == (0.7, 5, 8)
    assert manifest["responses"] == 12 and manifest["sampled_tokens"] == 24  # two tokens per sample
    assert manifest["correct"] == 12  # answers "0".."3", digits: right


def test_progress_advances_as_requests_finish(fake_vllm, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    backend = VLLMBackend(tiny_model_dir, tokenizer)
    steps: list[int] = []
    prompts = ["a"] * 3 + ["b"] * 3 + ["a"] * 3  # three requests: a run of equal prompts is one
    completions = backend.generate(prompts, Sampling(max_new_tokens=4), seed=10, progress=steps.append)
    assert steps == [3, 3, 3]  # one step per finished request, not one per shard
    assert [c.text for c in completions] == ["0", "1", "2"] * 3
    assert [p.seed for p in FakeLLM.made[0].calls[0][1]] == [10, 11, 12]


def test_requests_group_runs_of_equal_prompts():
    assert requests(["x", "x", "y", "x"]) == [("x", 2), ("y", 1), ("x", 1)]


def test_impossible_engine_settings_are_refused_before_loading(fake_vllm, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization must be in \(0, 1\], got 1.5"):
        run(tiny_model_dir, tmp_path / "gen.jsonl", backend="vllm", gpu_memory_utilization=1.5)
    assert not FakeLLM.made


def test_a_vllm_worker_of_several_keeps_only_its_own_gpus(fake_vllm, tiny_model_dir, tmp_path, monkeypatch):
    """Worker 1 of a node's workers, tensor-parallel over 2 GPUs of 4 visible, takes GPUs 2 and 3."""
    import torch

    from iprm.generation.job import BackendOptions, Job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    options = BackendOptions(name="vllm", tensor_parallel_size=2)
    job = Job(SumTask(), tiny_model_dir, {"n": 1}, Sampling(), options, tmp_path)
    job.backend(local_rank=1, several=True)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert FakeLLM.made[0].engine["tensor_parallel_size"] == 2
    with pytest.raises(ConfigError, match="need 6 GPUs; 4 are visible"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
        job.backend(local_rank=2, several=True)
