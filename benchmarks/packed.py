"""Padded against packed training steps on realistic lengths: tokens/s, padding, peak memory and MFU.

The lengths are drawn from a distribution recorded in the config (`lengths:`), taken from the shipped
MATH-500 and GSM8K files (`python -m benchmarks.packed lengths`: problem → prompt, worked solution →
response, in tokens; with no tokenizer at hand, characters ÷ `chars_per_token`). Each step trains a random-
weight Llama (the config's shape and dtype, built in code) on a batch of `records_per_batch` records of those
lengths, random token ids, the response at each record's end:

    padded   right-padded [B, T] rows (`iprm.rewards.token_logprobs` on the padded batch)
    packed   the same records packed into rows (`iprm.data.collate.pack`: position ids restart at each
             record, block-diagonal attention), rows as long as the batch's longest record unless
             `packed_row_tokens` says otherwise

Both run the response-only, chunked head (`head_chunk_tokens`), a DPO-like loss on the log-ratio sums
against fixed reference values (iprm caches the reference per record), backward and AdamW, on the very same
batches. Reported per variant: seconds per step (wall, and this process's CPU time, which a shared machine's
other load does not inflate), tokens/s (real tokens, the same numerator for both), the
padded batch's padding share, peak memory (CUDA allocations, or the process's resident set on a CPU) and, on
a GPU with a known peak, model FLOPs (`iprm.flops.ForwardCost` on real tokens, the head at response
tokens; forward + backward = 3 forwards) and MFU. Where a target of the config's `targets:` is missed (the
packed/padded speed-up, the MFU), a `torch.profiler` table of the packed step's top operators is written
beside the report, saying where the time goes.

    python -m benchmarks.packed --config configs/benchmarks/packed_cpu.yaml --threads 1 \
        --output benchmarks/results/packed_cpu.json
    python -m benchmarks.packed lengths data/math500.jsonl data/gsm8k_test.jsonl
"""

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks import common
from benchmarks.mfu import load_config, peak_memory, peak_tflops, reset_peak_memory, synchronize
from iprm import rewards
from iprm.data.collate import pack
from iprm.flops import ForwardCost

# Fields of the shipped files: (prompt, response) per format.
FIELDS = (("problem", "solution"), ("question", "answer"))
QUANTILES = 20  # the recorded distribution: its 0, 5, ..., 100th percentiles


def lengths_block(paths: list[str], chars_per_token: float, tokenizer: str | None) -> dict:
    """The `lengths:` block of a config: percentiles of prompt and response tokens over the files."""
    count = _token_counter(chars_per_token, tokenizer)
    prompts, responses = [], []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            prompt, response = next((row[p], row[r]) for p, r in FIELDS if p in row and r in row)
            prompts.append(count(prompt))
            responses.append(count(response) + 1)  # the <eos> closes every response
    return {
        "source": [str(p) for p in paths],
        "records": len(prompts),
        "tokens": f"tokenizer {tokenizer}" if tokenizer else f"characters / {chars_per_token}, rounded up",
        "prompt_percentiles": _percentiles(prompts),
        "response_percentiles": _percentiles(responses),
    }


def _token_counter(chars_per_token: float, tokenizer: str | None):
    if tokenizer is None:
        return lambda text: max(1, math.ceil(len(text) / chars_per_token))
    loaded = transformers.AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(loaded(text, add_special_tokens=False)["input_ids"])


def _percentiles(values: list[int]) -> list[int]:
    ordered = sorted(values)
    return [ordered[round(q * (len(ordered) - 1) / QUANTILES)] for q in range(QUANTILES + 1)]


def sample_lengths(block: dict, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """(prompt, response) token counts drawn from the recorded percentiles (inverse CDF, interpolated)."""

    def draw(percentiles: list[int]) -> list[int]:
        points = torch.rand(count, generator=generator) * QUANTILES
        low = points.floor().long().clamp(max=QUANTILES - 1)
        table = torch.tensor(percentiles, dtype=torch.float64)
        values = table[low] + (points - low).double() * (table[low + 1] - table[low])
        return values.round().long().clamp(min=1).tolist()

    return list(zip(draw(block["prompt_percentiles"]), draw(block["response_percentiles"]), strict=True))


def make_batch(config: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A right-padded batch of random tokens with the sampled lengths, and its packed rows."""
    pairs = sample_lengths(config["lengths"], config["records_per_batch"], generator)
    cap = config["model"]["max_position_embeddings"]
    pairs = [(min(p, cap // 2), min(r, cap - min(p, cap // 2))) for p, r in pairs]
    width = max(p + r for p, r in pairs)
    ids = torch.randint(config["model"]["vocab_size"], (len(pairs), width), generator=generator)
    attention = torch.zeros(len(pairs), width, dtype=torch.long)
    response = torch.zeros(len(pairs), width, dtype=torch.bool)
    for row, (prompt, length) in enumerate(pairs):
        attention[row, : prompt + length] = 1
        response[row, prompt : prompt + length] = True
    batch = {"input_ids": ids * attention, "attention_mask": attention, "response_mask": response}
    batch.update(pack(batch, config.get("packed_row_tokens") or 0))
    return batch


def step(model, optimizer, batch: dict, reference: torch.Tensor, layout: str, config: dict) -> None:
    """One optimiser step on the batch in `layout` (the module docstring's loss)."""
    packed = rewards.Packed.of(batch) if layout == "packed" else None
    logps = rewards.token_logprobs(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["response_mask"],
        packed=packed,
        head_chunk_tokens=config["head_chunk_tokens"],
    )
    loss = -F.logsigmoid(config["beta"] * (logps.sum(-1) - reference)).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(config: dict, layout: str, batches: list[dict], device: torch.device) -> dict:
    """Seconds per step, tokens/s, peak memory and FLOPs of `layout` over the batches (after warm-up)."""
    torch.manual_seed(config["seed"])
    llama = LlamaConfig(**config["model"], attn_implementation=config["attn_implementation"])
    with device:
        model = LlamaForCausalLM(llama).to(getattr(torch, config["dtype"])).train()
    if config.get("compile"):
        model.get_decoder().compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    reference = [torch.zeros(len(b["input_ids"]), device=device) for b in batches]
    warmup = config["warmup_steps"]
    for batch, ref in zip(batches[:warmup], reference, strict=False):
        step(model, optimizer, batch, ref, layout, config)
    synchronize(device)
    reset_peak_memory(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch, ref in zip(batches[warmup:], reference[warmup:], strict=True):
        step(model, optimizer, batch, ref, layout, config)
    synchronize(device)
    seconds = (time.perf_counter() - start) / (len(batches) - warmup)
    cpu_seconds = (time.process_time() - cpu_start) / (len(batches) - warmup)
    cost = ForwardCost.of(model)
    timed = batches[warmup:]
    tokens = sum(int(b["attention_mask"].sum()) for b in timed) / len(timed)
    flops = sum(
        3
        * (
            cost(b["attention_mask"].sum(-1))
            + 2 * cost.width * llama.vocab_size * int(b["response_mask"].sum())
        )
        for b in timed
    ) / len(timed)
    return {
        "seconds_per_step": seconds,
        "tokens_per_s": tokens / seconds,
        # CPU time of this process: on a shared machine, what the step itself cost, whoever else ran.
        "cpu_seconds_per_step": cpu_seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "peak_memory_mb": peak_memory(device) / 2**20,
    }


def profile(config: dict, batch: dict, device: torch.device, path: Path) -> None:
    """A `torch.profiler` table of one packed step's top operators (self time), written to `path`."""
    torch.manual_seed(config["seed"])
    llama = LlamaConfig(**config["model"], attn_implementation=config["attn_implementation"])
    with device:
        model = LlamaForCausalLM(llama).to(getattr(torch, config["dtype"])).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    reference = torch.zeros(len(batch["input_ids"]), device=device)
    step(model, optimizer, batch, reference, "packed", config)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
        step(model, optimizer, batch, reference, "packed", config)
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(profiler.key_averages().table(sort_by=sort, row_limit=25))


def batches_for(config: dict) -> list[dict[str, torch.Tensor]]:
    """The benchmark's batches, the same in every process (seeded)."""
    generator = torch.Generator().manual_seed(config["seed"])
    return [make_batch(config, generator) for _ in range(config["warmup_steps"] + config["steps"])]


def run_layout(config: dict, layout: str) -> dict:
    """One layout's measurement in this process (`--layout`): a fresh process per layout, so the peak
    resident set on a CPU is that layout's own."""
    device = torch.device(config["device"])
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches_for(config)]
    return measure(config, layout, batches, device)


def run(
    config: dict, config_path: str, overrides: list[str], threads: int | None, output: Path | None
) -> dict:
    device = torch.device(config["device"])
    batches = batches_for(config)
    padding = 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(
        b["input_ids"].numel() for b in batches
    )
    results = {}
    for layout in ("padded", "packed"):
        command = [sys.executable, "-m", "benchmarks.packed", "--config", config_path, "--layout", layout]
        command += [f"--set={override}" for override in overrides]
        command += [f"--threads={threads}"] if threads else []
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=common.REPO)
        if done.returncode != 0:
            raise RuntimeError(f"the {layout} measurement failed:\n{done.stderr[-4000:]}")
        results[layout] = json.loads(done.stdout.strip().splitlines()[-1])
    peak, peak_source = peak_tflops(device, config.get("peak_tflops"))
    for result in results.values():
        result["mfu"] = None if peak is None else result["model_tflops_per_s"] / peak
    speedup = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    cpu_speedup = results["packed"]["tokens_per_cpu_s"] / results["padded"]["tokens_per_cpu_s"]
    targets = config.get("targets", {})
    missed = [f"speed-up {speedup:.2f} < {targets['speedup']}"] if speedup < targets.get("speedup", 0) else []
    mfu = results["packed"]["mfu"]
    if mfu is not None and mfu < targets.get("mfu", 0):
        missed.append(f"MFU {mfu:.3f} < {targets['mfu']}")
    report = {
        "command": " ".join(["python -m benchmarks.packed", *sys.argv[1:]]),
        "config": config,
        "padding_share_of_padded_batches": padding,
        "rows_per_batch": {
            "padded": sum(len(b["input_ids"]) for b in batches) / len(batches),
            "packed": sum(len(b["packed_input_ids"]) for b in batches) / len(batches),
        },
        "results": results,
        "speedup_tokens_per_s": speedup,
        "speedup_tokens_per_cpu_s": cpu_speedup,
        "targets_missed": missed,
        "peak_tflops_source": peak_source,
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "cpus": os.cpu_count(),
            "threads": threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        **common.commit(),
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        if missed:
            profile(
                config,
                {k: v.to(device) for k, v in batches[-1].items()},
                device,
                output.with_suffix(".profile.txt"),
            )
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lengths"]:
        parser = argparse.ArgumentParser(description="print the lengths: block of a benchmark config")
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--chars-per-token", type=float, default=3.5)
        parser.add_argument("--tokenizer", default=None, help="a local tokenizer to count with instead")
        args = parser.parse_args(argv[1:])
        block = lengths_block(args.paths, args.chars_per_token, args.tokenizer)
        print(yaml.safe_dump({"lengths": block}, sort_keys=False, width=110, default_flow_style=None))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], help="override a config key: key=value")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--layout", choices=("padded", "packed"), help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.set)
    if args.layout:
        print(json.dumps(run_layout(config, args.layout)))
        return 0
    report = run(config, args.config, args.set, args.threads, args.output)
    keys = (
        "padding_share_of_padded_batches",
        "rows_per_batch",
        "speedup_tokens_per_s",
        "speedup_tokens_per_cpu_s",
    )
    summary = {k: report[k] for k in keys}
    print(json.dumps({**summary, "results": report["results"], "missed": report["targets_missed"]}, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
