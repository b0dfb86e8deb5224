"""The reference checkpoint's fingerprint (the disk cache's key): the weights' bytes for a local directory,
the resolved commit for a hub id; never only file names, sizes and times."""

import logging
import os
import time

from huggingface_hub import constants

from iprm import refcache

CONFIG = b'{"model_type": "llama"}'
MTIME_NS = 1_700_000_000_000_000_000


def checkpoint(directory, weights: bytes):
    """A checkpoint directory whose config and weight file carry the same fixed modification time."""
    directory.mkdir()
    for name, content in (("config.json", CONFIG), ("model.safetensors", weights)):
        (directory / name).write_bytes(content)
        os.utime(directory / name, ns=(MTIME_NS, MTIME_NS))
    return directory


def test_same_names_sizes_and_times_but_other_weights_fingerprint_differently(tmp_path):
    a = checkpoint(tmp_path / "a", b"\x00" * 4096)
    b = checkpoint(tmp_path / "b", b"\x00" * 4095 + b"\x01")
    for name in ("config.json", "model.safetensors"):  # what the fingerprint used to read is identical
        stat_a, stat_b = (a / name).stat(), (b / name).stat()
        assert (stat_a.st_size, stat_a.st_mtime_ns) == (stat_b.st_size, stat_b.st_mtime_ns)
    digests = tmp_path / "digests"
    assert refcache.fingerprint(str(a), "bfloat16", digests) != refcache.fingerprint(
        str(b), "bfloat16", digests
    )
    # The same bytes elsewhere are the same checkpoint.
    c = checkpoint(tmp_path / "c", b"\x00" * 4096)
    assert refcache.fingerprint(str(c), "bfloat16", digests) == refcache.fingerprint(
        str(a), "bfloat16", digests
    )


def test_digests_are_kept_and_a_rewrite_in_place_is_hashed_again(tmp_path):
    model, digests = checkpoint(tmp_path / "m", b"\x00" * 4096), tmp_path / "digests"
    first = refcache.fingerprint(str(model), "float32", digests)
    (sidecar,) = digests.glob("*.sha256")  # one weight file, one kept digest
    # A second call reads the kept digest instead of the weights: a doctored one shows through.
    sidecar.write_text("f" * 64)
    doctored = refcache.fingerprint(str(model), "float32", digests)
    assert doctored != first
    # Rewritten in place with its size and modification time restored: its change time moved, so the kept
    # digest no longer applies and the new bytes are hashed.
    time.sleep(0.05)  # past the clock's granularity
    (model / "model.safetensors").write_bytes(b"\x00" * 4095 + b"\x01")
    os.utime(model / "model.safetensors", ns=(MTIME_NS, MTIME_NS))
    rewritten = refcache.fingerprint(str(model), "float32", digests)
    assert rewritten not in (first, doctored)
    assert rewritten == refcache.fingerprint(str(model), "float32", tmp_path / "fresh")


def hub_cache(root, repo_id: str, commit: str) -> None:
    """The layout of the Hugging Face cache for one snapshot of `repo_id`, with `main` pointing at it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit / "config.json").write_bytes(CONFIG)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_fingerprint_by_the_commit_the_local_cache_resolves(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    hub_cache(tmp_path, "org/model", "a" * 40)
    first = refcache.fingerprint("org/model", "bfloat16")
    hub_cache(tmp_path, "org/model", "b" * 40)  # a new revision downloaded: main moves
    assert refcache.fingerprint("org/model", "bfloat16") != first
    with caplog.at_level(logging.WARNING, logger="iprm.refcache"):
        uncached = refcache.fingerprint("org/elsewhere", "bfloat16")
    assert "not in the local Hugging Face cache" in caplog.text
    assert uncached == refcache.fingerprint("org/elsewhere", "bfloat16") != first


def test_a_digest_that_cannot_be_kept_is_recomputed(tmp_path):
    model = checkpoint(tmp_path / "m", b"\x00" * 4096)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the digest directory should be")
    value = refcache.fingerprint(str(model), "float32", blocked / "digests")
    assert value == refcache.fingerprint(str(model), "float32", tmp_path / "digests")
