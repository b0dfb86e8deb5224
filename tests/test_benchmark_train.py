"""benchmarks/bench_train.py runs end to end at a tiny size: TRL's DPOTrainer and every iprm variant."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ["-m", "benchmarks.bench_train"]


def test_help_lists_every_variant():
    help_text = subprocess.run(
        [sys.executable, *SCRIPT, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for variant in ("trl", "iprm_each_pair", "iprm_full_logits", "iprm_no_cache", "iprm_grouped"):
        assert variant in help_text


@pytest.mark.integration
def test_tiny_benchmark_reports_every_variant(tmp_path):
    output = tmp_path / "bench.json"
    variants = "trl,iprm,iprm_each_pair,iprm_full_logits,iprm_no_cache,iprm_grouped"
    subprocess.run(
        [
            sys.executable,
            *SCRIPT,
            "--instructions",
            "4",
            "--responses",
            "4",
            "--batch-sequences",
            "8",
            "--epochs",
            "2",
            "--hidden-size",
            "32",
            "--layers",
            "1",
            "--vocab-size",
            "512",
            "--threads",
            "1",
            "--variants",
            variants,
            "--output",
            str(output),
        ],  # fmt: skip
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    report = json.loads(output.read_text())
    assert list(report["variants"]) == variants.split(",")
    assert report["data"]["records"] == 16 and report["data"]["pairs"] >= 4
    for name, result in report["variants"].items():
        assert len(result["epoch_s"]) == 2 and all(s > 0 for s in result["epoch_s"]), name
        assert result["response_tokens_per_s"] > 0 and result["peak_rss_mb"] > 0, name
        assert len(result["loss"]) == 2, name
    # Every iprm variant trains the same DPO loss on the same data: the first epoch's mean loss is the same
    # whether pairs are formed inside the objective or forwarded one by one, with full logits, uncached.
    same = ("iprm", "iprm_each_pair", "iprm_full_logits", "iprm_no_cache")
    first = [report["variants"][v]["loss"][0] for v in same]
    assert max(first) - min(first) < 1e-4
