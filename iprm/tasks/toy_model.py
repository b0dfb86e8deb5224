"""A toy instruct model for the real-data path, built on this machine from the shipped MATH/GSM8K text.

No real checkpoint can be downloaded here, so the real-model path (chat template, byte-level BPE,
`python -m iprm generate` with math-verify grading, `fit`/`test`/`predict` on "Step k:" solutions) is
exercised on a stand-in: a byte-level BPE tokenizer with Llama-3's pre-tokenisation and special tokens,
trained on the problems and solutions; a Llama-3-style chat template; and a small Llama taught the
"Step k: …" format by a short next-token training on GSM8K's worked solutions (rewritten as steps, the
answer in `\\boxed{}`). Its answers are mostly wrong and its accuracy means nothing; it is saved with
`save_pretrained` and loaded by everything downstream exactly as a hub checkpoint would be.

    python -m iprm.tasks.toy_model --output runs/toy-math [--problems 256 --steps 300]
"""

import argparse
import json
import re
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from iprm.tasks.base import format_prompt
from iprm.tasks.maths import INSTRUCTION, SEPARATOR
from iprm.tasks.pretrain import build_model, pretrain

# Llama-3's pre-tokenisation: contractions, words, numbers of up to three digits, punctuation runs (with
# the newlines after them: ".\n\n" can become one token), newline runs, spaces.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL = ("<|begin_of_text|>", "<|eot_id|>", "<|pad|>", "<|start_header_id|>", "<|end_header_id|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
    "\n\n{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
DATA = "data/gsm8k_test.jsonl"  # shipped with the repository (data/README.md)


def gsm8k_steps(answer: str) -> str:
    """A GSM8K worked solution as "Step k: …" paragraphs, calculator notes removed, the answer boxed."""
    work, _, final = answer.rpartition("####")
    lines = [re.sub(r"<<[^>]*>>", "", line).strip() for line in work.splitlines() if line.strip()]
    lines.append(f"The answer is \\boxed{{{final.strip().replace(',', '')}}}.")
    return SEPARATOR.join(f"Step {k}: {line}" for k, line in enumerate(lines, start=1))


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Llama-3's pre-tokenisation, BOS prepended, and a Llama-3-style chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    bos = backend.token_to_id(SPECIAL[0])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL[0]} $A", special_tokens=[(SPECIAL[0], bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=SPECIAL[0], eos_token=SPECIAL[1], pad_token=SPECIAL[2]
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL[3:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build(
    output: str | Path,
    data: str | Path = DATA,
    problems: int = 256,
    steps: int = 300,
    hidden_size: int = 128,
    num_layers: int = 4,
    vocab_size: int = 2048,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Train the tokenizer and the model on the first `problems` GSM8K rows of `data` (`steps` optimiser
    steps on `device`, rounded to whole epochs; 0 keeps the random weights); save to `output`."""
    rows = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()][:problems]
    pairs = [(INSTRUCTION.replace("{problem}", row["question"]), gsm8k_steps(row["answer"])) for row in rows]
    tokenizer = train_tokenizer([text for pair in pairs for text in pair], vocab_size)
    examples = []
    for instruction, response in pairs:
        prompt = tokenizer(format_prompt(tokenizer, instruction, True), add_special_tokens=False)["input_ids"]
        answer = tokenizer(response, add_special_tokens=False)["input_ids"]
        examples.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    longest = max(len(ids) for ids, _ in examples)
    torch.manual_seed(seed)
    model = build_model(tokenizer, hidden_size, num_layers, max(1, hidden_size // 64), max_length=2 * longest)
    if steps > 0:
        pretrain(
            model,
            examples,
            epochs=max(1, round(steps * batch_size / len(examples))),
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            pad_id=tokenizer.pad_token_id,
            device=device,
            desc="toy model: learning the step format",
        )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    output = Path(output)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="directory to save the model and tokenizer in")
    parser.add_argument("--data", default=str(DATA), help="GSM8K-style JSON lines (question, answer)")
    parser.add_argument("--problems", type=int, default=256, help="rows the model and tokenizer learn from")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps (rounded to whole epochs)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to train (cuda on a GPU)")
    args = parser.parse_args(argv)
    path = build(
        args.output,
        args.data,
        args.problems,
        args.steps,
        args.hidden_size,
        args.layers,
        args.vocab_size,
        seed=args.seed,
        device=args.device,
    )
    print(f"saved the toy model and tokenizer to {path}")


if __name__ == "__main__":
    main()
