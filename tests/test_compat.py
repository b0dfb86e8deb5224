"""Lightning's private APIs: all behind `iprm.compat`, all present in the installed Lightning, and a clear
message naming the attribute when an upgrade removes one."""

import re
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loops.fit_loop import _FitLoop

from iprm import compat

ROOT = Path(__file__).resolve().parents[1]


def test_every_private_api_iprm_relies_on_is_there():
    compat.check_private_apis()  # raises LightningAPIError naming what is missing


@pytest.mark.parametrize("owner,name", [(owner, name) for owner, name, _ in compat.PRIVATE_APIS])
def test_a_missing_attribute_is_named(monkeypatch, owner, name):
    if name in vars(owner):
        monkeypatch.delattr(owner, name)
    elif owner is _FitLoop:
        init = _FitLoop.__init__

        def without(self, *args, **kwargs):
            init(self, *args, **kwargs)
            delattr(self, name)

        monkeypatch.setattr(_FitLoop, "__init__", without)
    else:
        monkeypatch.setattr(compat, "_cli_attributes", lambda: set())
    with pytest.raises(compat.LightningAPIError, match=rf"lacks {owner.__name__}\.{name}\b.*iprm/compat.py"):
        compat.check_private_apis()


def test_no_module_outside_compat_names_a_private_lightning_attribute():
    names = "|".join(re.escape(name) for _, name, _ in compat.PRIVATE_APIS if name.startswith("_"))
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "iprm").rglob("*.py"))
        if path.name != "compat.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(rf"\b({names})\b|\bepoch_progress\b|from lightning\S* import _", line)
    ]
    assert not offenders, f"private Lightning APIs outside iprm/compat.py: {offenders}"


def test_the_fit_loop_helpers_read_and_drop_the_training_loader():
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert not compat.training_loader_built(trainer)
    trainer.fit_loop._combined_loader = object()
    assert compat.training_loader_built(trainer)
    compat.drop_training_loader(trainer)
    assert not compat.training_loader_built(trainer)
    assert compat.epochs_processed(trainer) == 0
    assert compat.epochs_processed(None) is None


def test_lightning_is_pinned_to_a_minor_version():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pin = re.search(r'"lightning>=(\d+)\.(\d+)[.\d]*,<(\d+)\.(\d+)"', text)
    assert pin, "pyproject.toml must pin lightning to one minor version, e.g. lightning>=2.6,<2.7"
    import lightning

    installed = tuple(int(x) for x in lightning.__version__.split(".")[:2])
    low, high = (int(pin[1]), int(pin[2])), (int(pin[3]), int(pin[4]))
    assert low <= installed < high and high == (low[0], low[1] + 1), (lightning.__version__, pin[0])
