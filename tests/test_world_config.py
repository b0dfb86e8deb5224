"""A run's saved config loads back: the world's settings survive jsonargparse's dump and parse unchanged."""

from jsonargparse import ArgumentParser

from iprm.tasks.policies import DEFAULT_GENERATORS
from iprm.tasks.world import World


def test_a_dumped_world_parses_back_to_the_same_world():
    parser = ArgumentParser()
    parser.add_argument("--world", type=World)
    dumped = parser.dump(parser.parse_args(["--world.seed", "2"]))
    assert "Unable to serialize" not in dumped
    world = parser.instantiate(parser.parse_string(dumped)).world
    assert world.generators == DEFAULT_GENERATORS
    assert world.digest == World(seed=2).digest == "38c128cb2912"  # the shipped world 2's digest


def test_the_default_generators_keep_every_shipped_worlds_digest():
    assert [World(seed=s).digest for s in range(3)] == ["f3e0cd2d8efa", "a568dd1b37b5", "38c128cb2912"]
