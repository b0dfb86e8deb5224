"""benchmarks/bench_score.py: the baseline finds iprm's step ends, agrees with iprm, and the script runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iprm.data.collate import encode

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    from benchmarks import bench_score

    return bench_score


def test_baseline_step_ends_match_collate_by_hand(bench, char_tokenizer):
    """<bos> is token 0 and the prompt "Q:12-5+3\\n" tokens 1..9, so the response starts at 10:
    "12-5=7" is 10..15, "\\n" 16, "7+3=10" 17..22, "\\n" 23, "A:10" 24..27, <eos> 28; steps end at their
    separators and the last at <eos>: 16, 23, 28."""
    prompt, response = "Q:12-5+3\n", "12-5=7\n7+3=10\nA:10"
    input_ids, response_start, ends = bench.baseline_step_ends(char_tokenizer, prompt, response)
    encoded = encode(char_tokenizer, prompt, response, "\n")
    assert ends == encoded.step_ends == [16, 23, 28]
    assert input_ids == encoded.input_ids
    assert response_start == encoded.response_mask.index(True) == 10
    assert all(encoded.response_mask[response_start:])


def test_baseline_step_ends_match_collate_on_generated_candidates(bench, char_tokenizer):
    for record in bench.build_candidates(problems=6, candidates=8, seed=1):
        _, response_start, ends = bench.baseline_step_ends(char_tokenizer, record.prompt, record.response)
        encoded = encode(char_tokenizer, record.prompt, record.response, "\n")
        assert ends == encoded.step_ends
        assert response_start == encoded.response_mask.index(True)


def test_compare_reports_the_largest_difference_and_mismatched_steps(bench):
    baseline = {"single": [[1.0, 2.0]], "accumulative": [[1.0, 3.0]]}
    assert bench.compare(baseline, {"single": [[1.0, 2.5]], "accumulative": [[1.0, 3.25]]}) == 0.5
    assert bench.compare(baseline, {"single": [[1.0]], "accumulative": [[1.0]]}) == math.inf


def test_help_exits_zero(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--baseline-batch-size" in capsys.readouterr().out


@pytest.mark.integration
def test_tiny_run_writes_both_variants_and_checks_equality(tmp_path):
    output = tmp_path / "bench.json"
    tiny = "--problems 2 --candidates 4 --hidden-size 32 --layers 1 --vocab-size 512 --repeats 1 --threads 1"
    command = [sys.executable, "-m", "benchmarks.bench_score", *tiny.split(), "--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| iprm_warm |" in done.stdout
    report = json.loads(output.read_text())
    assert set(report["variants"]) == {"baseline", "iprm_cold_every_row", "iprm_cold", "iprm_warm"}
    for summary in report["variants"].values():
        assert summary["candidates_per_s"] > 0 and summary["response_tokens_per_s"] > 0
        assert summary["peak_rss_mb"] > 0
    assert report["check"]["passed"]
    assert report["check"]["max_abs_diff"] < 1e-4
    assert report["data"]["candidates"] == 8
    assert report["model"]["vocab_size"] == 512
