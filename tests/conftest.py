"""Shared fixtures: a character tokenizer and tiny Llama models built in code (no network, fixed seeds)."""

import json
import os
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from transformers import LlamaConfig, LlamaForCausalLM

from iprm.data.collate import Collator
from iprm.data.records import Record
from iprm.scorers import ImplicitPRM
from iprm.tasks.tokenizer import build_char_tokenizer

# One thread per test process: the suite runs in two pytest-xdist workers (pyproject's addopts) on two
# cores, and CLI tests' subprocesses inherit the setting.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def smoke_world_root(tmp_path_factory) -> Path:
    """A cache root holding the miniature world of `configs/smoke.yaml`, built once per test session
    (~30 s) and shared by every CLI, sweep and notebook test (`--data.world.root`)."""
    import yaml

    from iprm.tasks.world import World

    root = tmp_path_factory.mktemp("worlds")
    config = yaml.safe_load((NOTEBOOKS.parent / "configs" / "smoke.yaml").read_text())
    World.from_settings({**config["data"]["init_args"]["world"], "root": str(root)}).build()
    return root


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, smoke_world_root) -> Path:
    """The output directory of the two-point smoke sweep (`configs/sweeps/smoke.yaml`) on the shared
    miniature world, run once per session for the sweep and figure-notebook tests."""
    from iprm import sweep

    output = tmp_path_factory.mktemp("smoke-sweep") / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(NOTEBOOKS.parent)  # the sweep file names its configs relative to the repository
        code = sweep.main(
            [str(NOTEBOOKS.parent / "configs/sweeps/smoke.yaml"), "--output", str(output),
             "--data.world.root", str(smoke_world_root)]
        )  # fmt: skip
    assert code == 0
    return output


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


def make_tiny_llama(vocab_size: int, seed: int = 0, tie_word_embeddings: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=tie_word_embeddings,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny_llama(char_tokenizer):
    return make_tiny_llama(len(char_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    """A tokenizer and a tiny Llama saved with `save_pretrained`, as a user's local checkpoint would be."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_llama(len(char_tokenizer)).save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return str(path)


def collate(tokenizer, records: list[Record]) -> dict:
    """A training batch of `records` (steps end at "\\n"), instructions numbered as they first appear."""
    groups: dict[str, int] = {}
    items = [
        {"record": r, "index": i, "group": groups.setdefault(r.instruction_id, len(groups))}
        for i, r in enumerate(records)
    ]
    return Collator(tokenizer, separator="\n")(items)


def make_module(model_dir: str, objective, module_class=ImplicitPRM, perturb: int | None = None, **kwargs):
    """An `ImplicitPRM` (or a variant) with its models loaded; with `perturb`, the policy moved away from
    the reference by seeded noise, so the log-ratios are not all zero."""
    module = module_class(model_path=model_dir, objective=objective, **kwargs)
    module.configure_model()
    if perturb is not None:
        torch.manual_seed(perturb)
        with torch.no_grad():
            for p in module.policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return module


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def assert_notebook_draws(name: str) -> None:
    """Execute `notebooks/<name>.ipynb` top to bottom (inputs come from environment variables) and check
    that no cell failed and at least one figure was drawn."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook drew no figure"


def write_own_records(tmp: Path) -> Path:
    """A user's own JSONL rollouts (no world): 4 problems × 4 candidates, every other one correct."""
    rows = []
    for problem in range(4):
        for candidate in range(4):
            correct = candidate % 2 == 0
            answer = str(problem + 2) if correct else str(problem + 3)
            rows.append({
                "instruction_id": f"p{problem}", "prompt": f"Q:{problem}+2\n",
                "response": f"{problem}+2={answer}\nA:{answer}", "label": correct, "answer": answer,
            })  # fmt: skip
    path = tmp / "mine.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pytest_collection_modifyitems(items):
    """An end-to-end (`integration`) test is slow too: the fast tier, `-m "not slow"`, leaves it out."""
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(pytest.mark.slow)
