"""Model-FLOPs utilisation (MFU) of one device: plain transformers versus iprm, on a random-weight Llama.

Four measurements on the same random batch (B sequences of T tokens, the last `response_fraction` of each
one the response), each reported as tokens/s (every input token, B·T per step), achieved TFLOP/s and MFU:

    train/plain  policy forward with [B, T, V] logits, float32 log_softmax over the vocabulary, gather at
                 the response tokens; the same for the reference under no_grad; loss; backward; AdamW step
    train/iprm   `iprm.rewards.token_logprobs` for the policy (the LM head on response positions only);
                 the reference log-probs computed once before timing, as iprm caches them per record
    score/plain  no_grad full forwards of the policy and the reference, as in train/plain
    score/iprm   no_grad `token_logprobs` of the policy and the reference

The loss is DPO-like, −logsigmoid(β·Σ_t ℓ_t) averaged over the batch, with ℓ_t the token log-ratio. The
models are built directly in the configured dtype (pure bf16 weights and AdamW states, no autocast); no
weights are ever downloaded.

Model FLOPs per step (the MFU numerator) count the work the task needs, the same for both variants of a
measurement. One forward of a model over the batch costs

    F = Σ_b [2·N·L + 2·n_layers·d_model·L²] + 2·d_model·V·R

with N the non-embedding parameters, L the tokens of a sequence (`iprm.flops.ForwardCost`) and R the
response tokens in the batch: the LM head is counted only where the task needs its log-probs, so the
variant that skips the head elsewhere shows the higher MFU. A backward costs 2·F. Per step:

    train/plain  3·F (policy) + F (reference, recomputed every step)
    train/iprm   3·F (policy); the reference forward is excluded: iprm runs it once per record and caches
                 it across epochs, so a training step does not need it
    score/*      2·F (policy and reference)

MFU = model FLOPs per step / seconds per step / the device's peak: `--peak-tflops`, else a table of vendor
dense bf16 peaks (no sparsity) looked up by CUDA device name; null on a CPU or an unknown device.
"""

import argparse
import contextlib
import copy
import gc
import json
import platform
import re
import resource
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import yaml
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from iprm.flops import ForwardCost
from iprm.rewards import token_logprobs

# Vendor dense bf16 peaks in TFLOP/s, no sparsity; the first pattern found in the CUDA device name wins.
PEAK_TFLOPS = (
    (r"H[12]00 NVL", 835.0),
    (r"H100 PCIe", 756.0),
    (r"H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)

# Forward-equivalents of one step over the batch: policy forward + backward is 3, each no_grad forward 1.
FORWARDS = {"train/plain": 4, "train/iprm": 3, "score/plain": 2, "score/iprm": 2}

CONVENTION = {
    "forward": "F = sum over sequences of 2*N*L + 2*n_layers*d_model*L^2 (N non-embedding, iprm.flops) "
    "+ 2*d_model*vocab per response token (the LM head where the task needs log-probs)",
    "train/plain": "3F policy forward+backward + F reference forward (recomputed every step)",
    "train/iprm": "3F policy forward+backward; reference forward excluded (cached once per record)",
    "score": "2F: policy and reference forwards",
    "numerator": "the work the task needs, the LM head at response tokens only, for plain and iprm alike; "
    "score numerators are equal, train ones differ by the reference forward train/iprm does not run",
    "tokens_per_s": "all B*T input tokens of the batch per step",
    "peak_tflops": "vendor dense bf16 peak, no sparsity, unless --peak-tflops",
}


def step_flops(name: str, cost: ForwardCost, vocab_size: int, lengths: Tensor, response_tokens: int) -> float:
    """Model FLOPs of one step of measurement `name` (see the module docstring)."""
    forward = cost(lengths) + 2 * cost.width * vocab_size * response_tokens
    return FORWARDS[name] * forward


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The device's peak TFLOP/s and where it comes from; None where it is not known."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, f"no peak known for a {device.type} device: MFU is null, pass --peak-tflops to set one"
    name = torch.cuda.get_device_name(device)
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, name):
            return peak, f"vendor dense bf16 peak, no sparsity ({pattern!r} in {name!r})"
    return None, f"no peak known for {name!r}: MFU is null, pass --peak-tflops to set one"


def load_config(path: str, overrides: list[str]) -> dict:
    """The YAML config with `key=value` overrides (dotted keys for nested ones, values parsed as YAML)."""
    config = yaml.safe_load(Path(path).read_text())
    for override in overrides:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if leaf not in node:
            raise KeyError(f"--set {override}: no key {key!r} in {path}")
        node[leaf] = yaml.safe_load(value)
    return config


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_models(config: dict, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """A random-weight Llama policy in the configured dtype on `device`, and a frozen copy as reference."""
    llama = LlamaConfig(**config["model"], attn_implementation=config["attn_implementation"])
    with default_dtype(getattr(torch, config["dtype"])), device:
        policy = LlamaForCausalLM(llama)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if config["compile"]:
        for layer in [*policy.model.layers, *reference.model.layers]:
            layer.compile()  # per layer: both paths share the decoder, the head and log_softmax stay eager
    return policy, reference


def random_batch(config: dict, device: torch.device) -> dict[str, Tensor]:
    """Random token ids, no padding, the last `response_fraction` of each sequence marked as response."""
    shape = (config["batch_size"], config["sequence_length"])
    prompt = max(1, shape[1] - round(config["response_fraction"] * shape[1]))  # position 0 is never response
    response_mask = torch.zeros(shape, dtype=torch.bool, device=device)
    response_mask[:, prompt:] = True
    return {
        "input_ids": torch.randint(config["model"]["vocab_size"], shape, device=device),
        "attention_mask": torch.ones(shape, dtype=torch.long, device=device),
        "response_mask": response_mask,
    }


def plain_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> Tensor:
    """The usual transformers recipe: logits at every position, float32 log_softmax, gather, mask."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logprobs = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logprobs, (1, 0)) * response_mask


@torch.no_grad()
def frozen_logprobs(logprobs: Callable, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return logprobs(model, **batch)


def loss(policy: Tensor, reference: Tensor, beta: float) -> Tensor:
    """DPO-like: −logsigmoid(β·Σ_t ℓ_t), averaged over the batch."""
    return -F.logsigmoid(beta * (policy - reference).sum(-1)).mean()


def train_step(policy, optimizer, batch, logprobs: Callable, reference: Callable[[], Tensor], beta: float):
    """One optimiser step; `reference()` runs the reference forward (plain) or returns the cache (iprm)."""
    loss(logprobs(policy, **batch), reference(), beta).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def score_step(policy, reference, batch, logprobs: Callable) -> None:
    frozen_logprobs(logprobs, policy, batch)
    frozen_logprobs(logprobs, reference, batch)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux resets the process's peak RSS (VmHWM) on "5"
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> int:
    """Peak bytes since the last reset: CUDA allocations, or the process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status")
    if status.exists():
        match = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        if match:
            return int(match.group(1)) * 1024
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def time_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> tuple[float, int]:
    """Seconds per step over `steps` steps after `warmup` untimed ones, and the peak memory while timed."""
    for _ in range(warmup):
        step()
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps, peak_memory(device)


def steps_to_time(config, policy, reference, batch) -> dict[str, Callable[[], Callable[[], None]]]:
    """Per measurement, a setup that returns its step: the train setups make a fresh AdamW each."""
    beta = config["beta"]
    # The head in one pass unless the config says otherwise, as when the earlier numbers were measured.
    iprm_logprobs = partial(token_logprobs, head_chunk_tokens=config.get("head_chunk_tokens"))

    def trainer(logprobs: Callable, reference_logprobs: Callable[[], Tensor]) -> Callable[[], None]:
        policy.train()
        fused = batch["input_ids"].is_cuda
        optimizer = torch.optim.AdamW(policy.parameters(), lr=config["learning_rate"], fused=fused)
        return partial(train_step, policy, optimizer, batch, logprobs, reference_logprobs, beta)

    def scorer(logprobs: Callable) -> Callable[[], None]:
        policy.eval()
        return partial(score_step, policy, reference, batch, logprobs)

    def cached_reference() -> Callable[[], Tensor]:
        cache = frozen_logprobs(iprm_logprobs, reference, batch)
        return lambda: cache

    return {
        "train/plain": lambda: trainer(
            plain_logprobs, partial(frozen_logprobs, plain_logprobs, reference, batch)
        ),
        "train/iprm": lambda: trainer(iprm_logprobs, cached_reference()),
        "score/plain": lambda: scorer(plain_logprobs),
        "score/iprm": lambda: scorer(iprm_logprobs),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run(config: dict, device: torch.device, peak_override: float | None = None) -> dict:
    """Every measurement of the config on `device`, as written to the JSON output."""
    torch.manual_seed(config["seed"])
    policy, reference = build_models(config, device)
    batch = random_batch(config, device)
    cost = ForwardCost.of(policy)
    lengths = batch["attention_mask"].sum(-1)
    response_tokens = int(batch["response_mask"][:, 1:].sum())
    peak, peak_source = peak_tflops(device, peak_override)
    measurements = {}
    for name, setup in steps_to_time(config, policy, reference, batch).items():
        seconds, memory = time_steps(setup(), config["warmup_steps"], config["steps"], device)
        flops = step_flops(name, cost, config["model"]["vocab_size"], lengths, response_tokens)
        tflops = flops / seconds / 1e12
        measurements[name] = {
            "seconds_per_step": seconds,
            "tokens_per_s": lengths.sum().item() / seconds,
            "model_flops_per_step": flops,
            "tflops": tflops,
            "mfu": tflops / peak if peak else None,
            "peak_memory_bytes": memory,
        }
        gc.collect()  # the train setups' AdamW states go before the next measurement
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "config": config,
        "forward_cost": cost.as_dict(),
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "peak_memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "convention": CONVENTION,
        "measurements": measurements,
        "speedup": {
            stage: measurements[f"{stage}/plain"]["seconds_per_step"]
            / measurements[f"{stage}/iprm"]["seconds_per_step"]
            for stage in ("train", "score")
        },
    }


def markdown(result: dict) -> str:
    """The measurements as a markdown table, then the speedups."""
    lines = [
        "| measurement | s/step | tokens/s | TFLOP/s | MFU | peak memory (GiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["measurements"].items():
        mfu = "n/a" if m["mfu"] is None else f"{m['mfu']:.1%}"
        lines.append(
            f"| {name} | {m['seconds_per_step']:.4f} | {m['tokens_per_s']:,.0f} | {m['tflops']:.2f} | {mfu} "
            f"| {m['peak_memory_bytes'] / 2**30:.2f} |"
        )
    speedups = ", ".join(f"{stage} {value:.2f}x" for stage, value in result["speedup"].items())
    return "\n".join([*lines, "", f"iprm over plain: {speedups}", f"peak: {result['peak_tflops_source']}"])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Model-FLOPs utilisation (MFU), tokens/s and TFLOP/s of plain transformers versus iprm "
        "(response-only LM head, cached reference) on a random-weight Llama: train and score steps.",
        epilog="FLOPs per forward: 2*N*L + 2*n_layers*d_model*L^2 per sequence + 2*d_model*vocab per "
        "response token; training is 3x the policy forward (+1x the reference forward for train/plain only).",
    )
    parser.add_argument("--config", required=True, help="YAML: model shape and run settings")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: table)"
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (model.hidden_size=1024)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    config = load_config(args.config, args.set)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = run(config, device, args.peak_tflops)
    print(markdown(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
