"""Reward models and their scorers: the base (`base.RewardModel`), the implicit PRM (`implicit.ImplicitPRM`),
explicit PRMs and ORMs with a value head (`explicit.ExplicitPRM`), and the step-labelling methods they train
on (`labels`)."""

from iprm.scorers.base import RewardModel, Scorer
from iprm.scorers.explicit import ExplicitPRM
from iprm.scorers.implicit import ImplicitPRM

__all__ = ["ExplicitPRM", "ImplicitPRM", "RewardModel", "Scorer"]
