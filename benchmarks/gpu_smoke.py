"""The real-model path on one GPU in a few minutes: build, generate, train with FSDP, score; tokens/s and MFU.

Every stage runs the project's own commands, as a user would, on a toy instruct model of a real model's
size (`iprm.tasks.toy_model`: a Llama-3-style BPE tokenizer and chat template, random weights taught the
"Step k:" format for a few steps on the GPU) and GSM8K problems:

    build     python -m iprm.tasks.toy_model --device cuda         (a ~0.9B Llama by default)
    generate  python -m iprm generate --task iprm.tasks.maths.MathTask …   rollouts, and best-of-N candidates
    fit       python -m iprm fit --config configs/real/walkthrough.yaml   FSDP on one device, bf16-true
    predict   python -m iprm predict … with the exported policy against the starting model

and prints, per stage, its wall time, tokens/s and, for training, MFU = the run's counted training FLOPs
(`flops.json`) / its training-loop seconds / the device's dense bf16 peak (`benchmarks.mfu.PEAK_TFLOPS`).
Generation's tokens/s counts sampled tokens (the manifest's exact count); prediction's counts every token
scored (prompt + response, policy and reference each once). Labels of a toy model are nearly all wrong, so
the run allows one-class training data: this measures speed and that the path runs, not accuracy.

    python -m benchmarks.gpu_smoke --output runs/gpu_smoke [--hidden-size 2048 --layers 16 --problems 128]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from benchmarks.mfu import peak_tflops
from iprm.data.prompts import format_prompt
from iprm.data.records import load_records

FSDP = """
trainer:
  accelerator: gpu
  precision: bf16-true
  strategy:
    class_path: lightning.pytorch.strategies.FSDPStrategy
    init_args:
      auto_wrap_policy: [transformers.models.llama.modeling_llama.LlamaDecoderLayer]
      activation_checkpointing_policy: [transformers.models.llama.modeling_llama.LlamaDecoderLayer]
      state_dict_type: full
  enable_checkpointing: false
  callbacks: []
model:
  torch_dtype: bfloat16
"""
CPU = """
trainer:
  accelerator: cpu
  enable_checkpointing: false
  callbacks: []
"""


def run(stage: str, command: list[str], log: Path) -> float:
    """Run one command, its output to `log`; return its wall seconds (stop everything if it fails)."""
    print(f"[{stage}] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as file:
        result = subprocess.run(command, stdout=file, stderr=subprocess.STDOUT, env={**os.environ})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(log.read_text()[-6000:])
        sys.exit(f"[{stage}] failed with exit status {result.returncode}; log: {log}")
    return seconds


def generate(out: Path, model: Path, name: str, offset: int, limit: int, n: int, args) -> tuple[float, dict]:
    output = out / f"{name}.jsonl"
    command = [
        sys.executable, "-m", "iprm", "generate", "--task", "iprm.tasks.maths.MathTask",
        "--task.path", "data/gsm8k_test.jsonl", "--task.offset", str(offset), "--task.limit", str(limit),
        "--model_path", str(model), "--n", str(n), "--chat_template", "true", "--output", str(output),
        "--max_new_tokens", str(args.max_new_tokens), "--batch_size", str(args.generate_batch_size),
        "--device", args.device, "--dtype", "bfloat16" if args.device == "cuda" else "float32",
        "--task.workers", "4",
    ]  # fmt: skip
    seconds = run(f"generate {name}", command, out / f"generate-{name}.log")
    manifest = json.loads(output.with_suffix(".generate.json").read_text())
    return seconds, manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="runs/gpu_smoke")
    parser.add_argument("--hidden-size", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--build-steps", type=int, default=60, help="steps teaching the toy the format")
    parser.add_argument("--problems", type=int, default=128, help="GSM8K problems sampled for training")
    parser.add_argument("--eval-problems", type=int, default=32, help="problems of the best-of-8 set")
    parser.add_argument("--n", type=int, default=4, help="training responses per problem")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--generate-batch-size", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script (no FSDP, float32)")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    gpu = args.device == "cuda"
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    peak, _ = peak_tflops(torch.device(args.device), args.peak_tflops)
    model = out / "model"
    report: dict = {"device": device, "peak_tflops": peak, "settings": vars(args)}

    report["build_s"] = run(
        "build",
        [sys.executable, "-m", "iprm.tasks.toy_model", "--output", str(model), "--device", args.device,
         "--hidden-size", str(args.hidden_size), "--layers", str(args.layers),
         "--steps", str(args.build_steps),
         "--problems", str(args.problems + args.eval_problems)],
        out / "build.log",
    )  # fmt: skip
    for name, offset, limit, n in (
        ("train", 0, args.problems, args.n),
        ("eval", args.problems, args.eval_problems, 8),
    ):
        seconds, manifest = generate(out, model, name, offset, limit, n, args)
        sampled = manifest["sampled_tokens"]
        report[f"generate_{name}"] = {
            "seconds": seconds, "sampled_tokens": sampled, "sampled_tokens_per_s": sampled / seconds,
            "responses": manifest["responses"], "correct": manifest["correct"],
        }  # fmt: skip

    common = [
        "--config", "configs/real/walkthrough.yaml", "--data.model_path", str(model),
        "--data.train_path", str(out / "train.jsonl"),
        "--data.eval_paths", json.dumps({"gsm8k": str(out / "eval.jsonl")}),
        "--data.allow_one_class", "true", "--data.allow_no_separator", "true", "--trainer.devices", "1",
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", "runs",
        "--trainer.logger.init_args.version", "fit",
    ]  # fmt: skip
    overlay = out / "fsdp.yaml"  # FSDP on one device, as configs/real/llama3_8b_math.yaml on eight
    overlay.write_text(FSDP if gpu else CPU)
    fit = [
        sys.executable, "-m", "iprm", "fit", *common, "--config", str(overlay),
        "--data.instructions_per_batch", "8", "--model.lr", "1e-6",
    ]  # fmt: skip
    report["fit_s"] = run("fit", fit, out / "fit.log")
    flops = json.loads((out / "runs" / "fit" / "flops.json").read_text())
    achieved = flops["train_flops_per_second"] / 1e12
    tokens = flops["policy_tokens"]  # the training sequences' tokens (each forward and backward once)
    report["train"] = {
        "seconds": flops["train_seconds"], "flops": flops["train"], "tflops_per_s": achieved,
        "mfu": achieved / peak if peak else None, "tokens_per_s": tokens / flops["train_seconds"],
    }  # fmt: skip

    scored = out / "scored.jsonl"
    predict = [
        sys.executable, "-m", "iprm", "predict", *common, "--trainer.accelerator", "gpu" if gpu else "cpu",
        "--trainer.precision", "bf16-true" if gpu else "32-true",
        "--data.model_path", str(out / "runs" / "fit" / "policy"), "--model.reference_path", str(model),
        "--data.predict_path", str(out / "eval.jsonl"), "--prediction.output_path", str(scored),
    ]  # fmt: skip
    report["predict_s"] = run("predict", predict, out / "predict.log")
    records = load_records(out / "eval.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [format_prompt(tokenizer, r.prompt, True) + r.response for r in records]
    scored_tokens = sum(
        len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
    )  # + <eos>
    # End to end: the command's wall time, loading both models included.
    report["predict"] = {
        "records": len(records),
        "tokens_scored_per_s_end_to_end": 2 * scored_tokens / report["predict_s"],
    }
    (out / "gpu_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
