"""Atomic writes: the destination appears complete or not at all, and a failure leaves nothing behind."""

import stat

import pytest

import iprm.io
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


def test_atomic_write_gives_the_permissions_open_would(tmp_path, monkeypatch):
    monkeypatch.setattr(iprm.io, "_UMASK", 0o027)  # the process's umask, read once at import
    fresh = tmp_path / "fresh.json"
    with atomic_write(fresh) as file:
        file.write("{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0o666 less the umask, not mkstemp's 0o600
    shared = tmp_path / "shared.json"
    shared.write_text("old")
    shared.chmod(0o664)
    with atomic_write(shared) as file:
        file.write("new")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664  # a replaced file keeps its permissions
