"""The world's settings, its named random streams, and the shipped (packed, checksummed) worlds."""

import json
import tarfile

import pytest

from iprm.data.records import load_records
from iprm.tasks import shipped
from iprm.tasks.world import Generator, Policy, World, stream

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

MICRO = Policy(misconception_rate=0.5, problems=300, epochs=1, hidden_size=32, num_layers=1, num_heads=2)


def _micro(root, **changes) -> World:
    settings = dict(
        root=str(root), max_value=40, min_steps=2, max_steps=2, reference=MICRO, train_instructions=4,
        rollouts_per_instruction=2, dev_problems=2, dev_candidates=2, eval_problems=3,
        candidates_per_problem=2, generators={"medium": Generator()},
    )  # fmt: skip
    return World(**(settings | changes))


def test_the_digest_follows_every_setting_but_the_cache_root(tmp_path):
    assert _micro(tmp_path / "a").digest == _micro(tmp_path / "b").digest
    assert _micro(tmp_path).digest != _micro(tmp_path, seed=1).digest
    assert _micro(tmp_path).digest != _micro(tmp_path, reference=Policy(**{**vars(MICRO), "lr": 2e-3})).digest
    assert stream(0, "a") != stream(0, "b") != stream(1, "a")
    assert 0 <= stream(0, "a") < 2**63


def test_adding_a_generator_shifts_no_other_phase(tmp_path):
    """Named random streams: a new generator (a policy of its own) leaves the rollouts, the held-out
    problems and the other generators' candidates bit for bit as they were."""
    base = _micro(tmp_path)
    more = _micro(tmp_path, generators={"medium": Generator(), "weak": Generator(MICRO, temperature=1.0)})
    base.build()
    more.build()
    assert base.directory != more.directory
    for name in ("train.jsonl", "dev-medium.jsonl", "test-medium.jsonl"):
        assert (base.directory / name).read_bytes() == (more.directory / name).read_bytes(), name
    assert (more.directory / "generators" / "weak" / "config.json").exists()
    stats = more.manifest()["stats"]
    assert set(stats) == {"train", "dev-medium", "test-medium", "dev-weak", "test-weak"}
    profile = stats["test-weak"]
    assert profile["pass@1"] + profile["first_error_misconception"] + profile["first_error_noise"] <= 1 + 1e-9


def test_a_world_from_plain_settings_equals_the_typed_one(tmp_path):
    typed = _micro(tmp_path, generators={"medium": Generator(), "weak": Generator(MICRO, temperature=0.5)})
    assert World.from_settings({"root": str(tmp_path), **typed.settings}) == typed
    assert World.from_settings({"seed": 3}) == World(seed=3)


def test_dev_test_and_rollout_problems_are_disjoint(tmp_path):
    world = _micro(tmp_path, dev_problems=5, eval_problems=7, train_instructions=9)
    world.build()
    dev = {r.prompt for r in load_records(world.val_paths["medium"])}
    test = {r.prompt for r in load_records(world.test_paths["medium"])}
    train = {r.prompt for r in load_records(world.train_path)}
    assert (len(dev), len(test), len(train)) == (5, 7, 9)
    assert not (dev & test or dev & train or test & train)


@pytest.fixture()
def shipped_here(tmp_path, monkeypatch):
    """Ship worlds from a temporary folder instead of the package's."""
    folder = tmp_path / "shipped"
    monkeypatch.setattr(shipped, "SHIPPED", folder)
    monkeypatch.setattr(shipped, "INDEX", folder / "index.json")
    return folder


def test_a_shipped_world_is_unpacked_instead_of_built(tmp_path, shipped_here, monkeypatch):
    built = _micro(tmp_path / "built")
    built.build()
    entry = shipped.pack(built.directory, shipped_here)
    assert entry["sha256"] == shipped.sha256(shipped_here / entry["file"])
    # Packing is deterministic: the same world packs to the same bytes.
    assert shipped.pack(built.directory, tmp_path / "again")["sha256"] == entry["sha256"]

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped world must not be built")

    monkeypatch.setattr("iprm.tasks.world._Build.run", no_training)
    user = _micro(tmp_path / "user")  # another machine's cache: same settings, nothing built
    assert user.build() == built.manifest()
    for path in (built.directory / "reference").iterdir():
        assert (user.directory / "reference" / path.name).read_bytes() == path.read_bytes()
    with pytest.raises(AssertionError, match="must not be built"):
        _micro(tmp_path / "user", seed=5).build()  # other settings build anew


def test_a_corrupt_or_missing_shipped_world_is_an_error_naming_the_file(tmp_path, shipped_here):
    world = _micro(tmp_path / "built")
    world.build()
    entry = shipped.pack(world.directory, shipped_here)
    archive = shipped_here / entry["file"]
    archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(shipped.ShippedWorldError, match=f"{archive.name}.*does not match"):
        _micro(tmp_path / "user").build()
    user = tmp_path / "user"  # nothing written but the (empty) lock that builders of the world share
    assert not user.exists() or all(p.name.endswith(".lock") for p in user.iterdir())
    archive.unlink()
    with pytest.raises(shipped.ShippedWorldError, match="missing"):
        _micro(tmp_path / "user").build()


def test_the_shipped_index_matches_its_archives_and_holds_the_default_worlds():
    """The quickstart's world (seed 0) and the multi-world study's (seeds 1, 2) ship with iprm, so their
    numbers do not depend on the machine's kernels; each archive matches its checksum and settings."""
    entries = shipped.index()
    for seed in (0, 1, 2):
        digest = World(seed=seed).digest
        assert digest in entries, f"world seed {seed} ({digest}) is not shipped: pack it or update the index"
        archive = shipped.verified_archive(digest)
        with tarfile.open(archive, "r:xz") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest["digest"] == digest and manifest["settings"] == World(seed=seed).settings
