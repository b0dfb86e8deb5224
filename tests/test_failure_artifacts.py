"""Every artifact vouches for itself: worlds, exports and reference-cache shards are checked on read, and a
file that no longer matches what was recorded is one line naming it (or is recomputed), never used."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from iprm import artifacts, refcache
from iprm.errors import CorruptArtifactError
from iprm.tasks.world import Generator, Policy, World
from iprm.tasks.world_files import record_files, verify_world
from iprm.validate import check_model_path

MICRO = Policy(misconception_rate=0.5, problems=200, epochs=1, hidden_size=32, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory) -> World:
    world = World(
        root=str(tmp_path_factory.mktemp("worlds")), max_value=40, min_steps=2, max_steps=2, reference=MICRO,
        train_instructions=4, rollouts_per_instruction=2, dev_problems=2, dev_candidates=2, eval_problems=2,
        candidates_per_problem=2, generators={"medium": Generator()},
    )  # fmt: skip
    world.build()
    return world


def _copy(world: World, tmp_path: Path) -> World:
    """The micro world under another root, to damage without spoiling the module's copy."""
    import shutil

    copy = World(**{**vars(world), "root": str(tmp_path)})
    shutil.copytree(world.directory, copy.directory)
    return copy


def test_a_built_world_lists_every_file_with_size_and_digest(micro_world):
    files = micro_world.manifest()["files"]
    assert {"train.jsonl", "dev-medium.jsonl", "test-medium.jsonl", "reference/model.safetensors"} <= set(
        files
    )
    entry = files["train.jsonl"]
    assert (
        entry["bytes"] == (micro_world.directory / "train.jsonl").stat().st_size
        and len(entry["sha256"]) == 64
    )
    assert micro_world.build() == micro_world.manifest()  # a reuse checks and passes


def _alter(path: Path) -> None:
    """Change one byte and keep the size: a digit of a records file, the last byte of a weight file."""
    data = bytearray(path.read_bytes())
    index = (
        next(i for i in range(len(data) // 2, len(data)) if chr(data[i]).isdigit())
        if path.suffix == ".jsonl"
        else -1
    )
    data[index] = ord("7") if data[index] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\n"), "longer than written"),
        (_alter, "SHA-256"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["truncated", "appended", "altered, same size", "deleted"],
)
@pytest.mark.parametrize("name", ["train.jsonl", "test-medium.jsonl", "reference/model.safetensors"])
def test_a_damaged_world_file_is_refused_naming_it_and_the_rebuild(
    micro_world, tmp_path, damage, expected, name
):
    world = _copy(micro_world, tmp_path)
    path = world.directory / name
    damage(path)
    with pytest.raises(CorruptArtifactError) as error:
        world.build()
    message = str(error.value)
    assert str(path) in message and expected in message and f"remove {world.directory}" in message
    assert "\n" not in message


def test_an_older_manifest_without_digests_is_checked_by_its_record_counts(micro_world, tmp_path):
    world = _copy(micro_world, tmp_path)
    manifest = world.manifest()
    del manifest["files"]
    world.manifest_path.write_text(json.dumps(manifest))
    verify_world(world.directory, manifest, "rebuild")  # intact: passes
    lines = (world.directory / "train.jsonl").read_text().splitlines(True)
    (world.directory / "train.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(
        CorruptArtifactError, match=rf"train.jsonl: {len(lines) - 1} records where the manifest"
    ):
        world.build()


def test_record_files_adds_only_the_named_file(micro_world, tmp_path):
    world = _copy(micro_world, tmp_path)
    (world.directory / "extra-addmul.jsonl").write_text("{}\n")
    (world.directory / "labels").mkdir()
    (world.directory / "labels" / "cache.json").write_text("{}")
    before = world.manifest()["files"]
    after = record_files(world.directory, ["extra-addmul.jsonl"])["files"]
    assert set(after) - set(before) == {"extra-addmul.jsonl"}
    assert not any(name.startswith("labels") for name in record_files(world.directory)["files"])


# --- exports ---------------------------------------------------------------------------------------------


def _export(tmp_path: Path, tiny_llama, char_tokenizer) -> Path:
    with artifacts.export_directory(tmp_path / "policy") as scratch:
        tiny_llama.save_pretrained(scratch)
        char_tokenizer.save_pretrained(scratch)
    return tmp_path / "policy"


def test_an_export_carries_a_manifest_and_follows_the_umask(tmp_path, tiny_llama, char_tokenizer):
    old = os.umask(0o022)
    os.umask(old)
    export = _export(tmp_path, tiny_llama, char_tokenizer)
    listed = json.loads((export / artifacts.EXPORT_MANIFEST).read_text())["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(listed)
    for name in listed:
        assert (export / name).stat().st_mode & 0o777 == 0o666 & ~old, name  # not safetensors' 0600
    assert not list(tmp_path.glob(".policy.export-*"))  # the scratch folder is gone
    check_model_path(str(export), "data.model_path")  # intact: passes


@pytest.mark.parametrize("cut", [1, 100, 4096])
def test_a_truncated_exported_weight_file_is_one_line_naming_it(tmp_path, tiny_llama, char_tokenizer, cut):
    export = _export(tmp_path, tiny_llama, char_tokenizer)
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-cut])
    with pytest.raises(CorruptArtifactError) as error:
        check_model_path(str(export), "data.model_path")
    message = str(error.value)
    assert str(weights) in message and "truncated" in message and "rebuild" in message and "\n" not in message
    (export / artifacts.EXPORT_MANIFEST).unlink()  # another tool's export: the header still tells
    with pytest.raises(CorruptArtifactError, match="truncated"):
        check_model_path(str(export), "data.model_path")


def test_a_swapped_weight_file_of_the_same_size_is_caught_by_its_digest(tmp_path, tiny_llama, char_tokenizer):
    export = _export(tmp_path, tiny_llama, char_tokenizer)
    state = {k: v.clone() + 1 for k, v in tiny_llama.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, export / "model.safetensors", {"format": "pt"})
    with pytest.raises(CorruptArtifactError, match="SHA-256"):
        check_model_path(str(export), "model.reference_path")


def test_a_second_export_replaces_the_first_and_drops_its_stale_files(tmp_path, tiny_llama, char_tokenizer):
    export = _export(tmp_path, tiny_llama, char_tokenizer)
    with artifacts.export_directory(export) as scratch:
        (scratch / "only.txt").write_text("x")
    assert not (export / "model.safetensors").exists() and (export / "only.txt").read_text() == "x"
    with pytest.raises(ValueError), artifacts.export_directory(export) as scratch:
        (scratch / "half.txt").write_text("x")
        raise ValueError("the export failed halfway")
    assert not (export / "half.txt").exists() and (export / "only.txt").exists()  # as it was


def test_a_truncated_safetensors_header_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(4, 4)}, path)
    for size in (4, 20):
        path.write_bytes(path.read_bytes()[:size])
        with pytest.raises(CorruptArtifactError, match=str(path)):
            artifacts.check_safetensors(path, "rebuild it")


# --- reference-cache shards ------------------------------------------------------------------------------


def _shard(tmp_path: Path) -> tuple[refcache.ReferenceCache, Path]:
    cache = refcache.ReferenceCache("disk", tmp_path, "fp")
    cache.put("a", torch.tensor([-1.0, -2.5]))
    cache.put("b", torch.tensor([-0.5]))
    return cache, cache.flush()


def test_an_intact_shard_is_read_back(tmp_path):
    _, path = _shard(tmp_path)
    again = refcache.ReferenceCache("disk", tmp_path, "fp")
    assert torch.equal(again["a"], torch.tensor([-1.0, -2.5])) and len(again) == 2


@pytest.mark.parametrize(
    "alter",
    [
        lambda s: s["values"].mul_(2),
        lambda s: s["values"].__setitem__(0, 0.0),
        lambda s: s.__setitem__("keys", list(reversed(s["keys"]))),
        lambda s: s.pop("sha256"),
    ],
    ids=["values scaled", "one value", "keys swapped", "no digest"],
)
def test_an_altered_shard_is_never_used_and_says_so(tmp_path, caplog, alter):
    _, path = _shard(tmp_path)
    shard = torch.load(path, weights_only=True)
    alter(shard)
    torch.save(shard, path)
    with caplog.at_level(logging.WARNING, logger="iprm.refcache"):
        again = refcache.ReferenceCache("disk", tmp_path, "fp")
    assert len(again) == 0  # recomputed on demand, never read from the altered shard
    assert str(path) in caplog.text and "recomputed" in caplog.text


@pytest.mark.integration
def test_fit_on_a_smoke_world_with_a_truncated_train_file_is_one_line(smoke_world_root, tmp_path):
    """The smoke config's world, copied and its train.jsonl cut by a line: `python -m iprm fit` refuses
    in one line naming the file and the rebuild, with no traceback."""
    import shutil
    import subprocess
    import sys

    root = tmp_path / "worlds"
    shutil.copytree(smoke_world_root, root)
    (train,) = root.glob("world-*/train.jsonl")
    lines = train.read_text().splitlines(True)
    train.write_text("".join(lines[:-1]))
    command = ["fit", "--config", "configs/smoke.yaml", "--data.world.root", str(root)]
    result = subprocess.run(
        [sys.executable, "-m", "iprm", *command],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {train}: ") and "truncated" in last and f"remove {train.parent}" in last


def test_an_export_on_a_full_disk_names_it_and_leaves_the_previous_one(tmp_path, tiny_llama, char_tokenizer):
    import errno

    from iprm.errors import WriteError

    export = _export(tmp_path, tiny_llama, char_tokenizer)
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    full = f"cannot export to {export}: No space left on device"
    with pytest.raises(WriteError, match=full), artifacts.export_directory(export) as scratch:
        (scratch / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as safetensors would, mid-write
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    check_model_path(str(export), "data.model_path")  # still whole, still verified
