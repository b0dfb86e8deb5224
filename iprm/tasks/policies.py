"""The policies of the controlled world, and its best-of-N generators: their settings and the defaults.

A `Policy` is a tiny Llama trained from scratch on worked solutions, a share of which follow the
borrowing misconception; a `Generator` samples best-of-N candidates from one (its own, or the reference).
`iprm.tasks.world.World` holds them among its settings and builds them.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """A policy of the world, trained from scratch on worked solutions.

    Args:
        misconception_rate: probability that a training solution subtracts a borrowing step digit by digit
            without borrowing (the systematic error the policy comes to believe).
        problems: worked solutions it is trained on.
        epochs: passes over them.
        batch_size: sequences per optimisation step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to zero).
        hidden_size: width of the tiny Llama.
        num_layers: its depth.
        num_heads: its attention heads.
    """

    misconception_rate: float = 0.7
    problems: int = 40000
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4


@dataclass(frozen=True)
class Generator:
    """A best-of-N candidate generator.

    Args:
        policy: its own policy, trained like the reference; None samples the reference itself (as the
            paper's Llama-3.1-8B-Instruct is both the reference and a generator).
        temperature: sampling temperature for its candidates.
    """

    policy: Policy | None = None
    temperature: float = 1.0


# Distinct models of graded strength, each with its own error profile: weak has the reference's shape but
# less training and a stronger belief in the misconception (noise errors on top of it), medium is the
# reference itself, strong is trained on more solutions that mostly borrow correctly. All are sampled at
# temperature 1, where a policy's error rate is its calibrated belief rather than a sharpened one. Weak's
# training was chosen with `iprm.tasks.calibrate` (see `iprm/tasks/worlds/build.sh`). Measured on the
# shipped worlds 0 / 1 / 2 (test sets): pass@1 weak 0.30 / 0.21 / 0.25, medium 0.47 / 0.50 / 0.55,
# strong 0.76 / 0.78 / 0.79.
DEFAULT_GENERATORS = {
    "weak": Generator(Policy(misconception_rate=0.8, problems=30000, epochs=2)),
    "medium": Generator(),
    "strong": Generator(Policy(misconception_rate=0.3, problems=60000)),
}

# Second task families: name → `sample_problem` keyword arguments. "addmul": addition-and-multiplication
# chains, which never subtract, so the misconception the reference believes in cannot occur.
EXTRA_FAMILIES = {"addmul": {"subtract_weight": 0.0}}
