"""Atomic writes: the destination appears complete or not at all, and a failure leaves nothing behind."""

import pytest

from iprm.io import atomic_dir, atomic_write


def test_atomic_write_replaces_the_file_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "table.md"
    with atomic_write(path) as file:
        file.write("first\n")
    assert path.read_text() == "first\n"
    with pytest.raises(RuntimeError), atomic_write(path) as file:
        file.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "first\n"
    assert [p.name for p in path.parent.iterdir()] == ["table.md"]  # no temporary file left


def test_atomic_write_binary(tmp_path):
    with atomic_write(tmp_path / "shard.pt", "wb") as file:
        file.write(b"\x00\x01")
    assert (tmp_path / "shard.pt").read_bytes() == b"\x00\x01"


def test_atomic_dir_replaces_the_directory_only_when_complete(tmp_path):
    target = tmp_path / "world"
    with atomic_dir(target) as scratch:
        (scratch / "manifest.json").write_text("{}")
        assert not target.exists()
    assert (target / "manifest.json").read_text() == "{}"
    with pytest.raises(RuntimeError), atomic_dir(target) as scratch:
        (scratch / "other").write_text("x")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["world"]
    assert [p.name for p in target.iterdir()] == ["manifest.json"]
