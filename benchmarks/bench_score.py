"""Benchmark iprm's step scorer against a straightforward prefix-tokenising baseline, on random models.

Both compute the implicit PRM's step scores for best-of-N candidates of the arithmetic world,

    q_k = β · Σ_{t ≤ end of step k} [log π_θ(y_t|·) − log π_ref(y_t|·)]      r_k = q_k − q_{k−1}

and must agree to `--atol`, else the script exits non-zero. Variants:

    baseline    what evaluation code usually does (the paper's): every step's end found by tokenising
                `prompt + steps[:k+1]` (and the separator after it) again; a full forward of policy and
                reference; a float32 log-softmax over the whole vocabulary at every position.
    iprm_cold_every_row  iprm's evaluation path (PRMDataModule dataloader → collation → `validation_step`)
                with an empty reference cache, so the reference runs too, and every row forwarded even when
                candidates repeat (`benchmarks.variants.EveryRowScored`): the fair one-shot comparison for
                data without duplicates.
    iprm_cold   the same, identical candidates of a batch scored once (iprm's default); what it saves
                depends on how often candidates repeat (`data.distinct_candidates` in the JSON).
    iprm_warm   the same with the reference's log-probs already cached: per-epoch evaluation after the first.

Every variant pays its own tokenisation. Each runs in its own child process, forked from a server that has
only imported the libraries, so its peak RSS (VmHWM) is its own. Models have random weights and are
built in code (no download); the character tokenizer uses only the first ids of the vocabulary, but the LM
head is as wide as `--vocab-size`, so it costs what it costs in practice.

    python -m benchmarks.bench_score --output bench_score.json
"""

import argparse
import json
import math
import random
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks import common
from benchmarks.variants import EveryRowScored, ImplicitPRM
from iprm.data import PRMDataModule
from iprm.data.records import Record, load_records, write_records
from iprm.tasks.arithmetic import sample_problem, solve
from iprm.tasks.pretrain import build_model
from iprm.tasks.tokenizer import build_char_tokenizer
from iprm.tasks.world import graded_records

VARIANTS = ("baseline", "iprm_cold_every_row", "iprm_cold", "iprm_warm")
SEPARATOR = "\n"
# Imported once by the fork server, so each variant's process starts with them loaded and nothing else.
PRELOAD = [
    "torch",
    "transformers",
    "lightning",
    "iprm.scorers.implicit",
    "iprm.data.datamodule",
    "benchmarks.variants",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=32, help="arithmetic problems")
    parser.add_argument("--candidates", type=int, default=16, help="candidate solutions per problem")
    parser.add_argument("--batch-size", type=int, default=64, help="iprm's eval_batch_size")
    parser.add_argument("--baseline-batch-size", type=int, default=None, help="default: --batch-size")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--vocab-size", type=int, default=32000, help="LM head width (>= the tokenizer's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of the baseline = iprm check")
    parser.add_argument("--output", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.baseline_batch_size is None:
        args.baseline_batch_size = args.batch_size
    return args


# --- setup: random models and candidates, written to disk as a user's checkpoint and eval file would be ---


def build_candidates(problems: int, candidates: int, seed: int) -> list[Record]:
    rng, drawn, responses = random.Random(seed), [], []
    for _ in range(problems):
        drawn.append(sample_problem(rng, 3, 5, 99))
        responses += [solve(drawn[-1], rng, misconception_rate=0.5) for _ in range(candidates)]
    return graded_records(drawn, responses, candidates, source="bench")


def build_setup(options: dict, workdir: str) -> dict:
    """Save a random policy and reference (with the tokenizer) and the candidates under `workdir`."""
    transformers.utils.logging.disable_progress_bar()
    tokenizer = build_char_tokenizer()
    if options["vocab_size"] < len(tokenizer):
        raise ValueError(f"--vocab-size must be at least the tokenizer's {len(tokenizer)}")
    for name, seed in (("policy", options["seed"]), ("reference", options["seed"] + 1)):
        torch.manual_seed(seed)
        model = build_model(
            tokenizer,
            options["hidden_size"],
            options["layers"],
            options["heads"],
            max_length=512,
            vocab_size=options["vocab_size"],
            intermediate_size=options["intermediate_size"],
            tie_word_embeddings=False,
        )
        model.save_pretrained(Path(workdir) / name)
        tokenizer.save_pretrained(Path(workdir) / name)
    records = build_candidates(options["problems"], options["candidates"], options["seed"])
    write_records(records, Path(workdir) / "candidates.jsonl")
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "distinct_candidates": len({(r.prompt, r.response) for r in records}),
    }


# --- the baseline, written plainly -----------------------------------------------------------------------


def baseline_step_ends(tokenizer, prompt: str, response: str) -> tuple[list[int], int, list[int]]:
    """Token ids of `prompt + response` and <eos>, the index of its first response token, and each step's
    last token.

    As the paper's evaluation code does it: the prompt, and the prompt followed by steps 1..k for each k,
    are tokenised separately; step k ends at the prefix's length − 1. Every tokenisation adds the special
    tokens (the char tokenizer prepends <bos>), so the indices line up with the full sequence. iprm's step
    convention (`iprm.data.collate`) is followed: each prefix but the last ends with the separator that
    closes its step, and the <eos> appended to the sequence closes the last step. A plain split is enough
    here: these responses have no empty or space-padded steps, which iprm would drop or give to the step
    before. With a BPE tokenizer, prefixes can tokenise differently from the full text at a boundary; iprm
    uses character offsets for that reason.
    """
    input_ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
    response_start = len(tokenizer(prompt)["input_ids"])
    steps = response.split(SEPARATOR)
    ends = [
        len(tokenizer(prompt + SEPARATOR.join(steps[: k + 1]) + SEPARATOR)["input_ids"]) - 1
        for k in range(len(steps) - 1)
    ]
    return input_ids, response_start, [*ends, len(input_ids) - 1]


def baseline_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log π(x_t | x_<t) at every position t ≥ 1 (0 at t = 0), from the full logits."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logprobs = logits.float().log_softmax(-1)
    # The logits at position t − 1 predict token t.
    token_logprobs = logprobs[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(token_logprobs, (1, 0))


def baseline_pass(policy, reference, tokenizer, records, batch_size: int, beta: float, device) -> dict:
    single, accumulative, tokens = [], [], 0
    for first in range(0, len(records), batch_size):
        chunk = records[first : first + batch_size]
        encoded = [baseline_step_ends(tokenizer, r.prompt, r.response) for r in chunk]
        width = max(len(ids) for ids, _, _ in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (ids, start, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            response_mask[row, start : len(ids)] = True
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        response_mask = response_mask.to(device)
        logratio = baseline_logprobs(policy, input_ids, attention_mask) - baseline_logprobs(
            reference, input_ids, attention_mask
        )
        cumulative = beta * (logratio * response_mask).cumsum(-1)
        for row, (_, _, ends) in enumerate(encoded):
            q = cumulative[row, ends]
            accumulative.append(q.tolist())
            single.append(q.diff(prepend=q.new_zeros(1)).tolist())
        tokens += int(response_mask.sum())
    return {"single": single, "accumulative": accumulative, "response_tokens": tokens}


# --- iprm: its own evaluation path -------------------------------------------------------------------------


def iprm_pass(module: ImplicitPRM, loader, count: int, device) -> dict:
    single, accumulative, tokens = [None] * count, [None] * count, 0
    for batch_idx, batch in enumerate(loader):
        batch = {key: value.to(device) for key, value in batch.items()}
        out = module.validation_step(batch, batch_idx)
        for row, index in enumerate(batch["index"].tolist()):
            for mode, store in (("single", single), ("accumulative", accumulative)):
                values = out["steps"][f"prm_{mode}"][row]
                store[index] = values[~values.isnan()].tolist()
        tokens += int(batch["response_mask"].sum())
    return {"single": single, "accumulative": accumulative, "response_tokens": tokens}


# --- one variant, in its own process -----------------------------------------------------------------------


def _baseline_runner(options: dict, workdir: Path, device: torch.device):
    tokenizer = AutoTokenizer.from_pretrained(workdir / "policy")
    # Loaded as ImplicitPRM loads them by default: float32, SDPA attention.
    policy, reference = (
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        for path in (workdir / "policy", workdir / "reference")
    )
    policy, reference = policy.eval().to(device), reference.eval().to(device)
    records = load_records(workdir / "candidates.jsonl")
    beta = ImplicitPRM().inference_beta  # the scorer's default β, which the iprm variants use
    size = options["baseline_batch_size"]
    return lambda: baseline_pass(policy, reference, tokenizer, records, size, beta, device), beta


def _iprm_runner(options: dict, workdir: Path, device: torch.device, cold: bool, deduplicate: bool = True):
    datamodule = PRMDataModule(
        model_path=str(workdir / "policy"),
        eval_paths={"bench": str(workdir / "candidates.jsonl")},
        eval_batch_size=options["batch_size"],
        step_separator=SEPARATOR,
    )
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()[0]
    count = len(datamodule.eval_records["bench"])
    module = (ImplicitPRM if deduplicate else EveryRowScored)(
        model_path=str(workdir / "policy"), reference_path=str(workdir / "reference")
    )
    module.configure_model()
    module.eval().to(device)

    def run() -> dict:
        if cold:
            module._reference_cache.clear()
        return iprm_pass(module, loader, count, device)

    return run, module.inference_beta


def run_variant(variant: str, options: dict, workdir: str) -> dict:
    """Time `options["repeats"]` passes of one variant; return the timings, memory and step scores."""
    transformers.utils.logging.disable_progress_bar()
    if options["threads"] is not None:
        torch.set_num_threads(options["threads"])
    device = torch.device(options["device"])
    cuda = device.type == "cuda"
    if variant == "baseline":
        run, beta = _baseline_runner(options, Path(workdir), device)
    else:
        cold = variant.startswith("iprm_cold")
        run, beta = _iprm_runner(
            options, Path(workdir), device, cold, deduplicate=variant != "iprm_cold_every_row"
        )
    setup_rss = common.peak_rss_mb()
    excludes_priming = None
    with torch.no_grad():
        if variant == "iprm_warm":
            run()  # untimed: fills the reference cache; its peak memory is not the warm pass's
            excludes_priming = common.reset_peak_rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in range(options["repeats"]):
            start = time.perf_counter()
            result = run()
            if cuda:
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    result.update(
        seconds=seconds,
        beta=beta,
        threads=torch.get_num_threads(),
        setup_peak_rss_mb=setup_rss,
        peak_rss_mb=common.peak_rss_mb(),
        peak_rss_excludes_priming=excludes_priming,
        cuda_max_memory_allocated_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    )
    return result


def in_child(context, function, *args):
    """Run `function(*args)` in a fresh process forked from the fork server; return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


# --- report ------------------------------------------------------------------------------------------------


def compare(baseline: dict, other: dict) -> float:
    """Largest |difference| between two variants' step scores; inf when their step counts differ."""
    largest = 0.0
    for mode in ("single", "accumulative"):
        for mine, theirs in zip(baseline[mode], other[mode], strict=True):
            if len(mine) != len(theirs):
                return math.inf
            largest = max([largest, *(abs(a - b) for a, b in zip(mine, theirs, strict=True))])
    return largest


def summarise(result: dict, candidates: int) -> dict:
    best = min(result["seconds"])
    summary = {key: value for key, value in result.items() if key not in ("single", "accumulative")}
    summary.update(
        best_seconds=best,
        median_seconds=statistics.median(result["seconds"]),
        candidates_per_s=candidates / best,
        response_tokens_per_s=result["response_tokens"] / best,
    )
    return summary


def markdown_table(report: dict) -> str:
    rows = [
        "| variant | batch | best of {} (s) | candidates/s | response tokens/s | peak RSS (MB) | "
        "throughput ÷ baseline |".format(report["repeats"]),
        "|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, summary in report["variants"].items():
        batch = report["args"]["baseline_batch_size" if name == "baseline" else "batch_size"]
        rows.append(
            f"| {name} | {batch} | {summary['best_seconds']:.3f} | {summary['candidates_per_s']:.1f} | "
            f"{summary['response_tokens_per_s']:.0f} | {summary['peak_rss_mb']:.0f} | "
            f"{report['ratios'].get(name, 1.0):.2f} |"
        )
    return "\n".join(rows)


def build_report(args: argparse.Namespace, options: dict, setup: dict, results: dict) -> dict:
    count = args.problems * args.candidates
    variants = {name: summarise(result, count) for name, result in results.items()}
    differences = {name: compare(results["baseline"], results[name]) for name in VARIANTS[1:]}
    base = variants["baseline"]["candidates_per_s"]
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "argv": sys.argv,
        **common.commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": args.device,
        "threads": variants["baseline"]["threads"],
        "args": options,
        "model": {
            "vocab_size": args.vocab_size,
            "hidden_size": args.hidden_size,
            "layers": args.layers,
            "heads": args.heads,
            "intermediate_size": args.intermediate_size,
            "parameters": setup["parameters"],
            "dtype": "float32",
        },
        "data": {"candidates": count, "distinct_candidates": setup["distinct_candidates"]},
        "repeats": args.repeats,
        "timing": "best (minimum) of --repeats passes; every pass in `seconds`",
        "variants": variants,
        "ratios": {name: variants[name]["candidates_per_s"] / base for name in VARIANTS[1:]},
        "check": {"max_abs_diff": max(differences.values()), "by_variant": differences, "atol": args.atol},
    }


def check_agreement(report: dict) -> bool:
    """Whether every variant gave the baseline's step scores (within atol), token count and β."""
    check = report["check"]
    passed = check["max_abs_diff"] <= check["atol"]
    for field in ("response_tokens", "beta"):
        values = {summary[field] for summary in report["variants"].values()}
        if len(values) != 1:
            passed = False
            print(f"variants differ in {field}: {sorted(values)}", file=sys.stderr)
    return passed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    context = get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with tempfile.TemporaryDirectory(prefix="bench-score-") as workdir:
        setup = in_child(context, build_setup, options, workdir)
        results = {variant: in_child(context, run_variant, variant, options, workdir) for variant in VARIANTS}
    report = build_report(args, options, setup, results)
    report["check"]["passed"] = check_agreement(report)
    print(markdown_table(report))
    print(
        f"\nstep scores: max |baseline − iprm| = {report['check']['max_abs_diff']:.2e} (atol {args.atol:g})"
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if not report["check"]["passed"]:
        print("FAILED: the baseline's step scores differ from iprm's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
