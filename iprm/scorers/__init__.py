"""Reward models and their scorers: the implicit PRM's base (`base.RewardModel`), explicit PRMs and ORMs with
a value head (`explicit.ExplicitPRM`), and the step-labelling methods they train on (`labels`)."""

from iprm.scorers.base import RewardModel, Scorer
from iprm.scorers.explicit import ExplicitPRM

__all__ = ["ExplicitPRM", "RewardModel", "Scorer"]
