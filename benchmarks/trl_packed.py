"""iprm against TRL's `DPOTrainer` on realistic lengths, on one device: the same model, data and pairs.

Rollouts: `--instructions` instructions × `--responses` responses, half of them correct, with the
(prompt, response) token lengths of a benchmark config's `lengths:` block (`benchmarks.packed`), written as
random text over the character tokenizer's alphabet (one character, one token), so both trainers read the
same tokens. The model is a random-weight Llama of the config's shape and dtype, saved where both load it.

    trl    `trl.DPOTrainer`, loss sigmoid, `precompute_ref_log_probs=True` (the reference runs once, before
           training), `padding_free=True` and `use_liger_kernel=True` where the installed TRL and Liger
           allow them (TRL 1.16 turns `padding_free` off with a warning; the report records what ran),
           bf16 on CUDA. Each pair's chosen and rejected responses are forwarded, once per pair.
    iprm   `ImplicitPRM` (DPO) + `PRMDataModule(layout="packed")` under a Lightning `Trainer`, precision
           bf16-true on CUDA; the reference's log-probs are cached per record in the first epoch.

Timed: the second epoch of each (iprm's reference is then cached; TRL's was precomputed), reported as the
data set's response tokens per second of that epoch, with peak CUDA memory. Target (issue 25): iprm ≥ 1.5×
TRL's tokens/s. Each trainer runs in its own process.

    python -m benchmarks.trl_packed --config configs/benchmarks/packed_1b.yaml \\
        --output benchmarks/results/trl_packed_1b.json
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

ALPHABET = "0123456789+-*=\n"


def build(config: dict, args: argparse.Namespace, workdir: Path) -> dict:
    """The rollouts (iprm records and TRL pairs) and the random model, written under `workdir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.packed import sample_lengths
    from iprm.data.records import Record, write_records
    from iprm.tasks.tokenizer import build_char_tokenizer

    rng, generator = random.Random(config["seed"]), torch.Generator().manual_seed(config["seed"])
    records, pairs = [], []
    for instruction in range(args.instructions):
        (prompt_length, _), *_ = sample_lengths(config["lengths"], 1, generator)
        prompt = "".join(rng.choices(ALPHABET, k=prompt_length - 1)) + "\n"
        group = []
        for response, (_, length) in enumerate(sample_lengths(config["lengths"], args.responses, generator)):
            text = "".join(rng.choices(ALPHABET, k=max(1, length - 1)))
            group.append(Record(f"p{instruction}", prompt, text, response % 2 == 0))
        records += group
        pairs += [
            {"prompt": w.prompt, "chosen": w.response, "rejected": lose.response}
            for w in group
            if w.label
            for lose in group
            if not lose.label
        ]
    write_records(records, workdir / "rollouts.jsonl")
    (workdir / "pairs.json").write_text(json.dumps(pairs))
    tokenizer = build_char_tokenizer()
    llama = LlamaConfig(
        **config["model"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(config["seed"])
    model = LlamaForCausalLM(llama).to(getattr(torch, config["dtype"]))
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    return {
        "records": len(records),
        "pairs": len(pairs),
        "response_tokens": sum(len(r.response) + 1 for r in records),
        "pair_response_tokens": sum(len(p["chosen"]) + len(p["rejected"]) + 2 for p in pairs),
    }


def run_iprm(config: dict, args: argparse.Namespace, workdir: Path) -> dict:
    import lightning as L
    import torch

    from iprm.data import PRMDataModule
    from iprm.objectives import DPO
    from iprm.scorers import ImplicitPRM

    class EpochTimer(L.Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_epoch_start(self, *_):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self._start = time.perf_counter()

        def on_train_epoch_end(self, *_):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.seconds.append(time.perf_counter() - self._start)
            if len(self.seconds) == 1 and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

    cuda = config["device"] == "cuda"
    data = PRMDataModule(
        model_path=str(workdir / "model"),
        train_path=str(workdir / "rollouts.jsonl"),
        instructions_per_batch=args.instructions_per_batch,
        layout="packed",
        packed_row_tokens=config.get("packed_row_tokens"),
        seed=config["seed"],
    )
    module = ImplicitPRM(
        model_path=str(workdir / "model"),
        objective=DPO(beta=config["beta"]),
        lr=1e-6,
        torch_dtype=config["dtype"],
        attn_implementation=config["attn_implementation"],
        head_chunk_tokens=config["head_chunk_tokens"],
        compile=config.get("compile", False),
        export_dir=str(workdir / "iprm-policy"),
    )
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision="bf16-true" if config["dtype"] == "bfloat16" and cuda else "32-true",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[timer],
        default_root_dir=str(workdir / "iprm"),
    )
    trainer.fit(module, datamodule=data)
    return {"epoch_s": timer.seconds, **_memory()}


def run_trl(config: dict, args: argparse.Namespace, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class EpochTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_epoch_begin(self, *_, **__):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self._start = time.perf_counter()

        def on_epoch_end(self, *_, **__):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.seconds.append(time.perf_counter() - self._start)
            if len(self.seconds) == 1 and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

    cuda = config["device"] == "cuda"
    try:
        import liger_kernel  # noqa: F401

        liger = cuda
    except ImportError:
        liger = False
    model = AutoModelForCausalLM.from_pretrained(
        workdir / "model",
        dtype=getattr(torch, config["dtype"]),
        attn_implementation=config["attn_implementation"],
    )
    pairs_per_step = args.instructions_per_batch * (args.responses // 2) ** 2
    dpo = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=pairs_per_step,
        num_train_epochs=2,
        learning_rate=1e-6,
        beta=config["beta"],
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        padding_free=True,
        use_liger_kernel=liger,
        bf16=cuda and config["dtype"] == "bfloat16",
        use_cpu=not cuda,
        max_length=None,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=config["seed"],
    )
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    pairs = Dataset.from_list(json.loads((workdir / "pairs.json").read_text()))
    timer = EpochTimer()
    trainer = DPOTrainer(model=model, args=dpo, train_dataset=pairs, processing_class=tokenizer)
    trainer.add_callback(timer)
    trainer.train()
    return {
        "epoch_s": timer.seconds,
        "padding_free_ran": bool(getattr(trainer, "padding_free", False)),
        "liger_requested": liger,
        "pairs_per_step": pairs_per_step,
        **_memory(),
    }


def _memory() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"peak_rss_mb": common.peak_rss_mb()}
    return {"peak_cuda_memory_gb_second_epoch": torch.cuda.max_memory_allocated() / 2**30}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a benchmarks.packed config (shape, dtype, lengths)")
    parser.add_argument("--set", action="append", default=[], help="override a config key: key=value")
    parser.add_argument("--instructions", type=int, default=64)
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--instructions-per-batch", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--trainer", choices=("iprm", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from benchmarks.mfu import load_config

    config = load_config(args.config, args.set)
    if args.trainer:
        run = run_iprm if args.trainer == "iprm" else run_trl
        (args.workdir / f"{args.trainer}.json").write_text(json.dumps(run(config, args, args.workdir)))
        return 0
    raw = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="iprm-trl-packed-") as tmp:
        workdir = Path(tmp)
        data = build(config, args, workdir)
        results = {}
        for trainer in ("trl", "iprm"):
            command = [sys.executable, "-m", "benchmarks.trl_packed", *raw, "--trainer", trainer]
            subprocess.run([*command, "--workdir", str(workdir)], check=True, cwd=common.REPO)
            results[trainer] = json.loads((workdir / f"{trainer}.json").read_text())
            results[trainer]["response_tokens_per_s"] = (
                data["response_tokens"] / results[trainer]["epoch_s"][-1]
            )
    speedup = results["iprm"]["response_tokens_per_s"] / results["trl"]["response_tokens_per_s"]
    report = {
        "command": " ".join(["python -m benchmarks.trl_packed", *raw]),
        **common.commit(),
        "config": config,
        "data": data,
        "results": results,
        "speedup_over_trl": speedup,
        "target_met": speedup >= 1.5,
    }
    print(json.dumps({"speedup_over_trl": speedup, "results": results}, indent=2))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
