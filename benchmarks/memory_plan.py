"""Peak memory per GPU of an implicit-PRM training step under FSDP (FULL_SHARD), computed, not measured.

Every term is a formula of the model's shape, the number of GPUs G, the tokens T a GPU forwards per step
(responses × their length), the response tokens R among them and the head's chunk C (bytes; bf16 = 2):

    policy weights, sharded          2·P / G
    gradients, sharded               2·P / G                 (bf16-true: gradients in bf16)
    AdamW states, sharded            2·2·P / G               (exp_avg and exp_avg_sq, bf16 under bf16-true)
    reference weights, sharded       2·P / G                 (frozen, an FSDP unit like the policy)
    gathered for compute             2·(2·P_layer) + 2·P_root (a decoder layer and the prefetched next one;
                                                              the root unit: embeddings, final norm, head)
    activations, checkpointed        n_layers·T·d·2 + T·a    (each layer's input, kept; one layer's own
                                                              activations, recomputed in backward)
    activations, not checkpointed    n_layers·T·a
    head chunk                       12·min(C, R)·V          (bf16 logits, their float32 copy, the float32
                                                              gradient: `iprm.rewards.head_logprobs`)
    head, unchunked                  12·R·V
    CUDA context and fragmentation   a fixed reserve (assumed, `--reserve-gb`)

with a = 2·(6·d + 2·d_kv + 4·d_ff) bytes per token and layer: the inputs of the two norms, q, the key and
value projections, the attention output and the o_proj input, the MLP's gate, up, activation and product
(a flash or memory-efficient attention kernel keeps no T² scores). The reference's forward runs under
no_grad before the policy's (`ImplicitPRM.training_step`), so its transient memory never adds to the
policy's activations; once per record at most (cached afterwards). "Fits" leaves `--headroom` of the GPU
free.

    python -m benchmarks.memory_plan --output benchmarks/results/memory_plan_llama3_8b.json
"""

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

GB = 1e9


@dataclass
class Shape:
    """A Llama-shaped decoder (defaults: Llama-3-8B / Llama-3.1-8B)."""

    vocab: int = 128_256
    width: int = 4096
    layers: int = 32
    ffn: int = 14_336
    heads: int = 32
    kv_heads: int = 8

    @property
    def layer_parameters(self) -> int:
        head_dim = self.width // self.heads
        attention = self.width * self.width * 2 + 2 * self.width * self.kv_heads * head_dim
        return attention + 3 * self.width * self.ffn + 2 * self.width

    @property
    def root_parameters(self) -> int:
        return 2 * self.vocab * self.width + self.width  # untied embeddings and head, the final norm

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.root_parameters

    @property
    def activation_bytes(self) -> int:
        """a: bytes of one token's activations in one decoder layer (bf16)."""
        kv = self.kv_heads * self.width // self.heads
        return 2 * (6 * self.width + 2 * kv + 4 * self.ffn)


def plan(
    shape: Shape, gpus: int, tokens: int, response_tokens: int, chunk: int | None, reserve_gb: float
) -> dict:
    """Each term of the module docstring, in GB, and the totals with and without checkpointing/chunking."""
    p = shape.parameters
    terms = {
        "policy weights (sharded)": 2 * p / gpus,
        "gradients (sharded)": 2 * p / gpus,
        "AdamW states (sharded)": 4 * p / gpus,
        "reference weights (sharded)": 2 * p / gpus,
        "gathered for compute": 4 * shape.layer_parameters + 2 * shape.root_parameters,
        "CUDA context and fragmentation": reserve_gb * GB,
    }
    checkpointed = shape.layers * tokens * shape.width * 2 + tokens * shape.activation_bytes
    full = shape.layers * tokens * shape.activation_bytes
    head_chunked = 12 * min(chunk or response_tokens, response_tokens) * shape.vocab
    head_full = 12 * response_tokens * shape.vocab
    fixed = sum(terms.values())
    return {
        "terms_gb": {k: v / GB for k, v in terms.items()},
        "activations_checkpointed_gb": checkpointed / GB,
        "activations_not_checkpointed_gb": full / GB,
        "head_chunked_gb": head_chunked / GB,
        "head_unchunked_gb": head_full / GB,
        "total_checkpointed_chunked_gb": (fixed + checkpointed + head_chunked) / GB,
        "total_not_checkpointed_unchunked_gb": (fixed + full + head_full) / GB,
    }


def largest_batch(
    shape: Shape,
    gpus: int,
    length: int,
    response_share: float,
    chunk: int | None,
    reserve_gb: float,
    budget_gb: float,
) -> int:
    """The most responses of `length` tokens per GPU whose checkpointed, chunked step fits `budget_gb`."""
    responses = 0
    while True:
        tokens = (responses + 1) * length
        total = plan(shape, gpus, tokens, round(tokens * response_share), chunk, reserve_gb)
        if total["total_checkpointed_chunked_gb"] > budget_gb:
            return responses
        responses += 1


def markdown(report: dict) -> str:
    rows = ["| term (GB per GPU, computed) | " + " | ".join(c["label"] for c in report["cases"]) + " |"]
    rows.append("|:---|" + "---:|" * len(report["cases"]))
    keys = [*report["cases"][0]["plan"]["terms_gb"]]
    for key in keys:
        rows.append(
            f"| {key} | " + " | ".join(f"{c['plan']['terms_gb'][key]:.1f}" for c in report["cases"]) + " |"
        )
    for key in (
        "activations_checkpointed_gb",
        "activations_not_checkpointed_gb",
        "head_chunked_gb",
        "head_unchunked_gb",
        "total_checkpointed_chunked_gb",
        "total_not_checkpointed_unchunked_gb",
    ):
        label = key.removesuffix("_gb").replace("_", " ")
        rows.append(f"| {label} | " + " | ".join(f"{c['plan'][key]:.1f}" for c in report["cases"]) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-gb", type=float, default=80.0)
    parser.add_argument("--headroom", type=float, default=0.10, help="share of the GPU left free")
    parser.add_argument("--reserve-gb", type=float, default=5.0, help="CUDA context and fragmentation")
    parser.add_argument("--responses", type=int, default=8, help="responses per GPU (the shipped config: 8)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 1024], help="tokens per response")
    parser.add_argument("--response-share", type=float, default=0.85, help="response tokens / all tokens")
    parser.add_argument("--chunk", type=int, default=4096, help="head_chunk_tokens")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    shape, budget = Shape(), args.gpu_gb * (1 - args.headroom)
    cases = []
    for length in args.lengths:
        tokens = args.responses * length
        cases.append(
            {
                "label": f"{args.responses} × {length} tokens",
                "tokens_per_gpu": tokens,
                "plan": plan(
                    shape, args.gpus, tokens, round(tokens * args.response_share), args.chunk, args.reserve_gb
                ),
                "largest_responses_per_gpu": largest_batch(
                    shape, args.gpus, length, args.response_share, args.chunk, args.reserve_gb, budget
                ),
            }
        )
    report = {
        "computed": True,
        "shape": asdict(shape),
        "parameters": shape.parameters,
        "args": vars(args) | {"output": None},
        "cases": cases,
    }
    table = markdown(report)
    print(table)
    for case in cases:
        print(
            f"largest batch that fits {budget:.0f} GB at {case['label']}: "
            f"{case['largest_responses_per_gpu']} responses per GPU"
        )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({**report, "markdown": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
