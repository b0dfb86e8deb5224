"""Benchmark a DPO epoch: iprm's Lightning module against TRL's `DPOTrainer`, same model, data and batch.

Both train the implicit PRM with DPO (−log σ(β·(ℓ_w − ℓ_l)) over every (correct, incorrect) pair of an
instruction) on the same rollouts, from the same random Llama-shaped checkpoint, for the same number of
epochs, in float32, with AdamW at the same learning rate and a cosine schedule:

    trl               `trl.DPOTrainer`, loss_type sigmoid, with its best settings for this job:
                      `precompute_ref_log_probs=True` (one reference pass before training, then none),
                      no gradient checkpointing, no mixed precision (fp32, as iprm here). It forwards each
                      pair's chosen and rejected response, so a response is forwarded once per pair.
    iprm              `iprm.scorers.ImplicitPRM` + `PRMDataModule` under a Lightning `Trainer`, defaults:
                      each response forwarded once per step, pairs formed inside the objective; reference
                      log-probs cached per record (computed in the first epoch); LM head on response
                      positions only.
    iprm_each_pair    iprm forwarding every pair's two responses, as TRL and the official DPO code do
                      (`benchmarks.common.EachPair`).
    iprm_full_logits  iprm with the model's own full forward and a float32 log-softmax over every
                      position (`benchmarks.common.FullLogits`).
    iprm_no_cache     iprm running the reference on every batch (`benchmarks.common.NoReferenceCache`).
    iprm_grouped      iprm with length-grouped instruction batches (`data.group_by_length`).

"Same batch": the same number of sequences per forward pass, `--batch-sequences` (iprm: that many
responses, i.e. batch-sequences / responses instructions; TRL: batch-sequences / 2 pairs).
Reported per variant: preparation (TRL: tokenising and the reference pass; iprm: data set-up), the wall time
of each epoch, the time per epoch including preparation (the headline: total / epochs), response tokens per
second (the data set's response tokens × epochs / total), peak RSS of the variant's own process (VmHWM),
and the mean training loss. Every variant runs in a fresh process; models are built in code (no download).

    python -m benchmarks.bench_train --output runs/benchmarks/bench_train.json
    python -m benchmarks.bench_train --variants trl,iprm,iprm_each_pair,iprm_full_logits,iprm_no_cache
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

VARIANTS = ("trl", "iprm", "iprm_each_pair", "iprm_full_logits", "iprm_no_cache", "iprm_grouped")
# iprm variant → (the module class, data module switches)
IPRM_VARIANTS = {
    "iprm": ("ImplicitPRM", {}),  # the module itself
    "iprm_each_pair": ("EachPair", {}),
    "iprm_full_logits": ("FullLogits", {}),
    "iprm_no_cache": ("NoReferenceCache", {}),
    "iprm_grouped": ("ImplicitPRM", {"group_by_length": True}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--instructions", type=int, default=32, help="training instructions (problems)")
    parser.add_argument("--responses", type=int, default=8, help="responses per instruction (both labels)")
    parser.add_argument("--batch-sequences", type=int, default=32, help="sequences per forward pass")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--vocab-size", type=int, default=32000, help="LM head width (>= the tokenizer's)")
    parser.add_argument("--variants", default="trl,iprm", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.batch_sequences % args.responses or args.batch_sequences % 2:
        parser.error("--batch-sequences must be a multiple of --responses and of 2")
    return args


# --- set-up: rollouts and a random checkpoint, written as a user's files would be --------------------------


def build_rollouts(instructions: int, responses: int, seed: int) -> list:
    """Arithmetic problems with a borrowing subtraction, each with `responses` solutions of both labels."""
    import random

    from iprm.data.records import Record
    from iprm.tasks.arithmetic import needs_borrow, sample_problem, solve, verify

    rng, records = random.Random(seed), []
    while len(records) < instructions * responses:
        problem = sample_problem(rng, 3, 5, 99)
        values = problem.values()
        if not any(op == "-" and needs_borrow(values[k], n) for k, (op, n) in enumerate(problem.operations)):
            continue
        solutions = [solve(problem, rng, misconception_rate=0.5) for _ in range(responses)]
        verdicts = [verify(problem, s) for s in solutions]
        if all(v.label for v in verdicts) or not any(v.label for v in verdicts):
            continue
        instruction = f"p{len(records) // responses}"  # unique even if a problem is drawn twice
        records += [
            Record(instruction, problem.prompt, s, v.label, v.answer)
            for s, v in zip(solutions, verdicts, strict=True)
        ]
    return records


def setup(args: argparse.Namespace, workdir: Path) -> dict:
    import torch

    from iprm.data.records import write_records
    from iprm.tasks.pretrain import build_model
    from iprm.tasks.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(args.seed)
    model = build_model(
        tokenizer,
        args.hidden_size,
        args.layers,
        args.heads,
        max_length=512,
        vocab_size=args.vocab_size,
        intermediate_size=args.intermediate_size,
        tie_word_embeddings=False,
    )
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    records = build_rollouts(args.instructions, args.responses, args.seed)
    write_records(records, workdir / "rollouts.jsonl")
    pairs = []
    for start in range(0, len(records), args.responses):
        group = records[start : start + args.responses]
        pairs += [
            {"prompt": w.prompt, "chosen": w.response, "rejected": lose.response}
            for w in group
            if w.label
            for lose in group
            if not lose.label
        ]
    (workdir / "pairs.json").write_text(json.dumps(pairs))
    response_tokens = sum(len(tokenizer(r.response, add_special_tokens=False)["input_ids"]) for r in records)
    return {
        "records": len(records),
        "pairs": len(pairs),
        "response_tokens": response_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# --- one variant per process ------------------------------------------------------------------------------


def run_trl(args: argparse.Namespace, workdir: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class EpochTimer(TrainerCallback):
        def __init__(self):
            self.starts, self.ends, self.losses = [], [], []

        def on_epoch_begin(self, *_, **__):
            self.starts.append(time.perf_counter())

        def on_epoch_end(self, *_, **__):
            self.ends.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    pairs = Dataset.from_list(json.loads((workdir / "pairs.json").read_text()))
    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=args.batch_sequences // 2,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        beta=args.beta,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=args.batch_sequences // 2,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        max_length=None,
        report_to=[],
        save_strategy="no",
        logging_strategy="epoch",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    timer = EpochTimer()
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer)
    trainer.add_callback(timer)
    prepared = time.perf_counter()
    trainer.train()
    return {
        "preparation_s": prepared - start,
        "epoch_s": [end - begin for begin, end in zip(timer.starts, timer.ends, strict=True)],
        "loss": timer.losses,
    }


def run_iprm(args: argparse.Namespace, workdir: Path, variant: str) -> dict:
    import lightning as L

    from benchmarks import variants
    from iprm.data import PRMDataModule
    from iprm.objectives import DPO

    class EpochTimer(L.Callback):
        def __init__(self):
            self.starts, self.ends, self.losses, self._batch_losses = [], [], [], []

        def on_train_epoch_start(self, *_):
            self.starts.append(time.perf_counter())
            self._batch_losses = []

        def on_train_batch_end(self, trainer, module, outputs, *_):
            self._batch_losses.append(float(outputs["loss"]))

        def on_train_epoch_end(self, *_):
            self.ends.append(time.perf_counter())
            self.losses.append(sum(self._batch_losses) / max(1, len(self._batch_losses)))

    module_class, data_switches = IPRM_VARIANTS[variant]
    L.seed_everything(args.seed, verbose=False)
    start = time.perf_counter()
    data = PRMDataModule(
        model_path=str(workdir / "model"),
        train_path=str(workdir / "rollouts.jsonl"),
        instructions_per_batch=args.batch_sequences // args.responses,
        seed=args.seed,
        **data_switches,
    )
    data.setup("fit")
    prepared = time.perf_counter()
    module = getattr(variants, module_class)(
        model_path=data.model_path,
        objective=DPO(beta=args.beta),
        lr=args.lr,
        export_dir=str(workdir / f"{variant}-policy"),
    )
    timer = EpochTimer()
    trainer = L.Trainer(
        default_root_dir=str(workdir / variant),
        accelerator="cpu",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    return {
        "preparation_s": prepared - start,
        "epoch_s": [end - begin for begin, end in zip(timer.starts, timer.ends, strict=True)],
        "loss": timer.losses,
    }


def run_variant(args: argparse.Namespace) -> None:
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant == "trl":
        result = run_trl(args, args.workdir)
    else:
        result = run_iprm(args, args.workdir, args.variant)
    result["threads"] = torch.get_num_threads()
    result["peak_rss_mb"] = common.peak_rss_mb()
    (args.workdir / f"{args.variant}.json").write_text(json.dumps(result))


# --- the report -------------------------------------------------------------------------------------------


def summarise(result: dict, epochs: int, response_tokens: int) -> dict:
    total = result["preparation_s"] + sum(result["epoch_s"])
    return {
        **result,
        "total_s": total,
        "per_epoch_s": total / epochs,
        "response_tokens_per_s": response_tokens * epochs / total,
    }


def markdown_table(report: dict) -> str:
    variants = report["variants"]
    base = variants.get("trl")
    lines = [
        "| variant | preparation (s) | epochs (s) | per epoch incl. preparation (s) | response tokens/s "
        "| peak RSS (MB) | last epoch's mean loss | speed-up over TRL |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in variants.items():
        ratio = f"{base['per_epoch_s'] / r['per_epoch_s']:.2f}×" if base else "–"
        epochs = " / ".join(f"{s:.1f}" for s in r["epoch_s"])
        loss = f"{r['loss'][-1]:.4f}" if r["loss"] else "–"
        lines.append(
            f"| {name} | {r['preparation_s']:.1f} | {epochs} | {r['per_epoch_s']:.2f} | "
            f"{r['response_tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {loss} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant:
        run_variant(args)
        return 0
    if "trl" in args.variants:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not installed: pip install -e '.[bench]'", file=sys.stderr)
            return 2
    raw = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="iprm-bench-train-") as tmp:
        workdir = Path(tmp)
        data = setup(args, workdir)
        results = {}
        for variant in args.variants:
            command = [sys.executable, "-m", "benchmarks.bench_train", *raw, "--variant", variant]
            subprocess.run([*command, "--workdir", str(workdir)], check=True, cwd=common.REPO)
            raw_result = json.loads((workdir / f"{variant}.json").read_text())
            results[variant] = summarise(raw_result, args.epochs, data["response_tokens"])
            print(f"{variant}: {results[variant]['per_epoch_s']:.2f} s per epoch", file=sys.stderr)
    report = {
        "command": shlex.join(["python", "-m", "benchmarks.bench_train", *raw]),
        **common.commit(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": data,
        "variants": results,
    }
    print(markdown_table(report))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
