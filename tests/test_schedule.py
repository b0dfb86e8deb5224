"""The learning-rate schedule's length: `schedule_epochs` trains the first epochs of a longer schedule, the
learning rates of a tuning run's epoch e exactly."""

from types import SimpleNamespace

import pytest
import torch

from iprm.errors import ConfigError
from iprm.scorers import ExplicitPRM, ImplicitPRM


def learning_rates(model, max_epochs: int, steps_per_epoch: int = 10) -> list[float]:
    fit_loop = SimpleNamespace(_combined_loader=object())  # built already: nothing to drop
    model._trainer = SimpleNamespace(
        estimated_stepping_batches=max_epochs * steps_per_epoch, max_epochs=max_epochs, fit_loop=fit_loop
    )
    model.layer = torch.nn.Linear(2, 2)
    configured = model.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(max_epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.parametrize("cls", [ImplicitPRM, ExplicitPRM])
def test_two_epochs_of_a_four_epoch_schedule_are_the_first_half_of_it(cls):
    full = learning_rates(cls(lr=1e-3, warmup_ratio=0.05), max_epochs=4)
    part = learning_rates(cls(lr=1e-3, warmup_ratio=0.05, schedule_epochs=4), max_epochs=2)
    alone = learning_rates(cls(lr=1e-3, warmup_ratio=0.05), max_epochs=2)
    assert part == full[:20]
    assert alone != full[:20]  # a 2-epoch schedule of its own decays to zero by its end
    assert alone[-1] < part[-1]


@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_a_schedule_of_no_epochs_is_refused(value):
    with pytest.raises(ConfigError, match="schedule_epochs must be a positive integer"):
        ImplicitPRM(schedule_epochs=value)
