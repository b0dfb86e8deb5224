"""Concurrent use: two real processes building one world (one build, no stale scratch left) or filling one
reference cache (nothing lost)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iprm.tasks.world import World

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

ROOT = Path(__file__).resolve().parents[1]

# Each process builds the same (tiny, never shipped) world with a stand-in for the build's phases that
# takes a while and records who ran it.
DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    from iprm.tasks import world as w

    def run(self):
        with open(sys.argv[2], "a") as log:
            log.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        return {"digest": self.world.digest, "built_by": os.getpid()}

    w._Build.run = run
    manifest = w.World(root=sys.argv[1], seed=12345, train_instructions=3).build()
    print(json.dumps(manifest))
    """
)


def test_two_processes_building_one_world_build_it_once(tmp_path):
    root, builders = tmp_path / "worlds", tmp_path / "builders.txt"
    world = World(root=str(root), seed=12345, train_instructions=3)
    stale = world.directory.with_name(f"{world.directory.name}.building-99999")
    stale.mkdir(parents=True)  # what a killed build leaves
    command = [sys.executable, "-c", DRIVER, str(root), str(builders)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    manifests = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert len(builders.read_text().split()) == 1  # one build; the other process waited and reused it
    assert manifests[0] == manifests[1] and (world.directory / "manifest.json").is_file()
    assert not stale.exists()


WRITER = textwrap.dedent(
    """
    import sys, torch
    from iprm.refcache import ReferenceCache

    cache = ReferenceCache("disk", sys.argv[1], "fp")
    for round in range(20):  # many small flushes, interleaving with the other writer's
        for key in range(round * 10, round * 10 + 10):
            cache.put(f"k{key}", torch.arange(3, dtype=torch.float32) + key)
        cache.flush()
    """
)


def test_two_processes_filling_one_reference_cache_lose_nothing(tmp_path, caplog):
    """Shards are written under unique names and renamed into place: two writers of the same entries
    both succeed, and a reader finds every entry, whole, with no unreadable shard."""
    from iprm.refcache import ReferenceCache

    command = [sys.executable, "-c", WRITER, str(tmp_path)]
    processes = [subprocess.Popen(command, cwd=ROOT) for _ in range(2)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    # each writer flushed its 20 rounds, less what it found already written by the other when it started
    assert 20 <= len(list((tmp_path / "fp").glob("shard-*.pt"))) <= 40
    cache = ReferenceCache("disk", tmp_path, "fp")
    assert len(cache) == 200 and "unreadable" not in caplog.text
    assert cache["k123"].tolist() == [123.0, 124.0, 125.0]
