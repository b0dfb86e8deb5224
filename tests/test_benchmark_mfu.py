"""The MFU benchmark (benchmarks/mfu.py): its FLOPs numerator, its peak table and a tiny CPU run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iprm.flops import ForwardCost

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "mfu.py"
TINY = ROOT / "configs" / "benchmarks" / "mfu_tiny.yaml"
MEASUREMENTS = ("train/plain", "train/iprm", "score/plain", "score/iprm")


def load_mfu():
    """benchmarks/ is not a package: load the script as a module from its path."""
    spec = importlib.util.spec_from_file_location("mfu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mfu = load_mfu()


def test_flops_numerator_matches_a_hand_computation_for_the_tiny_shape():
    """Tiny shape: d = 64, d_ff = 128, 2 layers, 4 heads of 16, 2 key-value heads, V = 32000, B = 2, T = 64.

    N per layer: q 64·64 = 4096, k and v 64·32 = 2048 each, o 4096, MLP 3·64·128 = 24576, two norms 128
    → 36992; N = 2·36992 + 64 (final norm) = 74048. The response is the last 48 tokens of each sequence.
    Backbone: 2·N·L·B = 2·74048·128 = 18,956,288; attention 2·n_layers·d·L²·B = 2·2·64·64²·2 = 2,097,152.
    Head at the R = 96 response tokens: 2·64·32000·96 = 393,216,000. One forward F = 414,269,440.
    """
    config = mfu.load_config(str(TINY), [])
    policy, _ = mfu.build_models(config, torch.device("cpu"))
    batch = mfu.random_batch(config, torch.device("cpu"))
    cost = ForwardCost.of(policy)
    assert cost == ForwardCost(parameters=74048, layers=2, width=64)
    response_tokens = int(batch["response_mask"].sum())
    assert response_tokens == 96 and not batch["response_mask"][:, :16].any()
    lengths = batch["attention_mask"].sum(-1)
    forward = 414_269_440
    expected = {"train/plain": 4 * forward, "train/iprm": 3 * forward, "score/plain": 2 * forward}
    expected["score/iprm"] = 2 * forward
    for name, flops in expected.items():
        assert mfu.step_flops(name, cost, 32000, lengths, response_tokens) == flops, name


def test_the_1b_config_is_tinyllama_shaped_with_the_tiny_configs_keys():
    """Built on the meta device (no memory, no time): TinyLlama's 1,100,048,384 parameters, in bf16."""
    config = mfu.load_config(str(TINY.with_name("mfu_1b.yaml")), [])
    tiny = mfu.load_config(str(TINY), [])
    assert config.keys() == tiny.keys() and config["model"].keys() == tiny["model"].keys()
    policy, reference = mfu.build_models(config, torch.device("meta"))
    assert sum(p.numel() for p in policy.parameters()) == 1_100_048_384
    assert policy.dtype == torch.bfloat16 and not any(p.requires_grad for p in reference.parameters())
    assert policy.config._attn_implementation == "sdpa"


def test_set_overrides_nested_keys_and_rejects_unknown_ones():
    config = mfu.load_config(str(TINY), ["model.hidden_size=32", "compile=true"])
    assert config["model"]["hidden_size"] == 32 and config["compile"] is True
    with pytest.raises(KeyError):
        mfu.load_config(str(TINY), ["model.hiden_size=32"])


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L40S", None),
        ("NVIDIA A10G", None),
    ],
)
def test_peak_table_matches_device_names(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    assert mfu.peak_tflops(torch.device("cuda"), None)[0] == peak


def test_no_peak_on_cpu_unless_given():
    assert mfu.peak_tflops(torch.device("cpu"), None)[0] is None
    assert mfu.peak_tflops(torch.device("cpu"), 1.0) == (1.0, "--peak-tflops")


def test_help_mentions_mfu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mfu.main(["--help"])
    assert exit_info.value.code == 0
    assert "MFU" in capsys.readouterr().out


def assert_four_measurements(result: dict) -> None:
    assert set(result["measurements"]) == set(MEASUREMENTS)
    for m in result["measurements"].values():
        assert m["tokens_per_s"] > 0 and m["tflops"] > 0 and m["peak_memory_bytes"] > 0
    assert set(result["speedup"]) == {"train", "score"}


@pytest.mark.integration
def test_cpu_run_writes_every_measurement_with_null_mfu(tmp_path):
    output = tmp_path / "mfu.json"
    command = [sys.executable, str(SCRIPT), "--config", str(TINY), "--device", "cpu", "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert "| train/iprm |" in run.stdout
    result = json.loads(output.read_text())
    assert_four_measurements(result)
    assert result["peak_tflops"] is None
    assert all(m["mfu"] is None for m in result["measurements"].values())
    assert result["device"] == "cpu" and result["convention"]["train/iprm"]


@pytest.mark.integration
def test_given_peak_makes_mfu_the_achieved_tflops_over_it(tmp_path):
    output = tmp_path / "mfu.json"
    mfu.main(["--config", str(TINY), "--device", "cpu", "--peak-tflops", "1.0", "--output", str(output)])
    result = json.loads(output.read_text())
    assert_four_measurements(result)
    for m in result["measurements"].values():
        assert m["mfu"] == pytest.approx(m["tflops"] / 1.0)
