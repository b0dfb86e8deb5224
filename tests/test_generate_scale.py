"""`generate` across workers and what a run trusts: workers (spawned or launched) write the bytes one process
does, shards and outputs are checked against their checksums, a resume follows the checkpoint's weights (not
its path), an unwritable output is refused before any work, and training agrees with the manifest."""

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from test_generate import FAST, SumTask, kill_after_the_first_shard, run
from transformers import AutoModelForCausalLM

from iprm.data import PRMDataModule
from iprm.data.provenance import check_agreement
from iprm.errors import ConfigError, IPRMError, RecordError
from iprm.generation.fingerprint import file_digest, fingerprint
from iprm.generation.job import Job
from iprm.generation.manifest import manifest_path, parts_path
from iprm.generation.workers import launched_rank, my_shards
from iprm.io import atomic_write


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_model_dir):
    """One process, uninterrupted: 5 problems × 3 responses in 3 shards."""
    output = tmp_path_factory.mktemp("baseline") / "gen.jsonl"
    run(tiny_model_dir, output)
    return output


def same_files(output: Path, baseline: Path) -> bool:
    return (
        output.read_bytes() == baseline.read_bytes()
        and manifest_path(output).read_bytes() == manifest_path(baseline).read_bytes()
    )


def without_source(output: Path) -> list[dict]:
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "source"} for row in rows]


@pytest.mark.integration
def test_two_worker_processes_write_the_bytes_one_process_does(baseline, tiny_model_dir, tmp_path):
    output = tmp_path / "gen.jsonl"
    manifest = run(tiny_model_dir, output, devices=2)
    assert manifest["responses"] == 15
    assert same_files(output, baseline)
    assert not parts_path(output).exists()


def test_launched_ranks_sample_their_own_shards_and_rank_0_merges(
    baseline, tiny_model_dir, tmp_path, monkeypatch
):
    """As under `torchrun --nproc_per_node 2`: rank 1 samples shard 1 and returns; rank 0 samples shards 0 and
    2, finds shard 1 written, and merges."""
    output = tmp_path / "gen.jsonl"
    sampled = []
    sample = Job.sample

    def counted(self, backend, problems, seed, progress):
        sampled.append(int(self.settings["n"]) and problems[0].id)
        return sample(self, backend, problems, seed, progress)

    monkeypatch.setattr(Job, "sample", counted)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run(tiny_model_dir, output) is None
    assert sorted(p.name for p in parts_path(output).iterdir()) == ["shard-00001.json", "shard-00001.sha256"]
    assert not output.exists()
    monkeypatch.setenv("RANK", "0")
    assert run(tiny_model_dir, output)["responses"] == 15
    assert sampled == ["p2", "p0", "p4"]  # shard 1 (problems p2, p3) by rank 1; shards 0 and 2 by rank 0
    assert same_files(output, baseline)


def test_devices_under_a_launcher_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="--devices 2 under a launcher of 2 processes"):
        run(tiny_model_dir, tmp_path / "gen.jsonl", devices=2)


def test_a_changed_shard_is_sampled_again_with_a_warning(
    baseline, tiny_model_dir, tmp_path, monkeypatch, caplog
):
    output = tmp_path / "gen.jsonl"
    kill_after_the_first_shard(monkeypatch, tiny_model_dir, output)
    shard = parts_path(output) / "shard-00000.json"
    content = json.loads(shard.read_text())
    content["rows"][0]["label"] = not content["rows"][0]["label"]  # still valid JSON, still plausible
    shard.write_text(json.dumps(content, ensure_ascii=False))
    with caplog.at_level(logging.WARNING):
        run(tiny_model_dir, output)
    assert f"{shard} does not match its checksum shard-00000.sha256" in caplog.text
    assert same_files(output, baseline)


def test_a_resume_follows_the_weights_not_the_path(baseline, tiny_model_dir, tmp_path, monkeypatch):
    first, moved = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(tiny_model_dir, first)
    output = tmp_path / "gen.jsonl"
    kill_after_the_first_shard(monkeypatch, str(first), output)
    # The same weights under another path resume.
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    run(str(moved), output)
    assert without_source(output) == without_source(baseline)  # the source is the directory's name
    # Other weights under the same path are refused, naming the fingerprint.
    again = tmp_path / "again.jsonl"
    kill_after_the_first_shard(monkeypatch, str(moved), again)
    model = AutoModelForCausalLM.from_pretrained(moved)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    model.save_pretrained(moved)
    with pytest.raises(ConfigError, match=r"shard-00000.json was made with other settings \(model: 'sha256:"):
        run(str(moved), again)


@pytest.mark.parametrize("kind", ["directory", "under a file", "generate's own name"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    kind, tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(Job, "chunks", lambda self: pytest.fail("work started"))
    (tmp_path / "file").write_text("x")
    output, message = {
        "directory": (tmp_path, "is a directory; name a file in it"),
        "under a file": (tmp_path / "file" / "gen.jsonl", "is a file, not a directory"),
        "generate's own name": (tmp_path / "gen.generate.json", "that name is generate's own"),
    }[kind]
    with pytest.raises(ConfigError, match=message):
        run(tiny_model_dir, output)


def test_a_finished_output_changed_afterwards_is_refused(baseline, tmp_path, tiny_model_dir):
    output = tmp_path / "gen.jsonl"
    shutil.copy(baseline, output)
    shutil.copy(manifest_path(baseline), manifest_path(output))
    assert run(tiny_model_dir, output) == json.loads(manifest_path(baseline).read_text())
    output.write_bytes(output.read_bytes()[:-10])  # cut short
    with pytest.raises(ConfigError, match="does not match its manifest's size and SHA-256.*rerun generate"):
        run(tiny_model_dir, output)


def test_the_manifest_records_the_separator_and_training_refuses_another(baseline, tiny_model_dir):
    settings = json.loads(manifest_path(baseline).read_text())["settings"]
    assert (settings["separator"], settings["chat_template"]) == (SumTask().separator, False)
    options = {"model_path": tiny_model_dir, "train_path": str(baseline), "allow_no_separator": True}
    PRMDataModule(**options).setup("fit")  # the same separator ("\n") and template flag: accepted
    with pytest.raises(ConfigError, match=r"data.step_separator is '\\n\\n' but generate used '\\n'"):
        PRMDataModule(**options, step_separator="\n\n").setup("fit")
    with pytest.raises(ConfigError, match="data.chat_template is True but generate used False"):
        PRMDataModule(**options, chat_template=True).setup("fit")


def test_fast_settings_are_the_ones_the_baseline_used():
    assert FAST["problems_per_shard"] == 2  # the rank tests above count on 3 shards of 5 problems


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, (0, 1, 0)), ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, (3, 8, 3)),
     ({"SLURM_PROCID": "9", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1"}, (9, 16, 1)),
     ({"SLURM_PROCID": "0", "SLURM_NTASKS": "16"}, (0, 1, 0))],  # a batch script's shell, before srun
)  # fmt: skip
def test_the_launchers_environment_names_the_worker(env, expected, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_rank() == expected
    assert my_shards(5, 1, 2) == [1, 3]


def test_the_fingerprint_follows_weights_and_configs_only(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    first = fingerprint(str(model))
    (model / "README.md").write_text("notes")
    (model / "gen.generate.json").write_text("{}")  # an output's manifest written beside the weights
    (model / ".cache").mkdir()
    assert fingerprint(str(model)) == first
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}))
    assert fingerprint(str(model)) != first
    assert fingerprint("org/name") == "hub:org/name"


def test_a_large_weight_file_is_fingerprinted_from_blocks_across_it(tmp_path, monkeypatch):
    monkeypatch.setattr("iprm.generation.fingerprint.FULL_DIGEST_BYTES", 1000)
    monkeypatch.setattr("iprm.generation.fingerprint.BLOCK_BYTES", 10)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(5000))
    first = file_digest(weights)
    data = bytearray(5000)
    data[-1] = 1  # the last byte: inside the last block
    weights.write_bytes(bytes(data))
    assert file_digest(weights) != first
    weights.write_bytes(bytes(4999))  # cut short by one byte
    assert file_digest(weights) != first


def test_a_full_disk_names_the_path_and_keeps_the_samples(tiny_model_dir, tmp_path, monkeypatch):
    output = tmp_path / "gen.jsonl"

    def full(records, path):
        with atomic_write(path) as file:
            file.write("half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr("iprm.generation.outputs.write_records", full)
        message = rf"cannot write {output}: No space left on device.*samples are kept.*rerun"
        with pytest.raises(IPRMError, match=message):
            run(tiny_model_dir, output)
    assert not list(tmp_path.glob(".gen.jsonl.*.tmp"))  # the half-written temporary file is gone
    assert not output.exists() and not manifest_path(output).exists()
    assert len(list(parts_path(output).glob("shard-*.json"))) == 3  # nothing to sample again
    monkeypatch.setattr(Job, "sample", lambda *args: pytest.fail("sampled again"))
    run(tiny_model_dir, output)  # space freed: the rerun only merges
    assert output.exists()


def test_a_broken_manifest_is_one_line_naming_it(baseline, tmp_path):
    output = tmp_path / "gen.jsonl"
    shutil.copy(baseline, output)
    manifest_path(output).write_text('{"settings": ')
    with pytest.raises(RecordError, match=r"gen.generate.json: not a generate manifest \(Expecting value"):
        check_agreement(output, {"separator": "\n"})
