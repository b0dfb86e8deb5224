"""The controlled world as a data source: `PRMDataModule` with every path supplied by a `World`.

The world is built (or found in its cache) by `prepare_data`; its paths are known from its settings alone,
so `model_path` (which the CLI links into the model right after instantiation) needs no build. Configs
choose it with `data: {class_path: iprm.tasks.WorldDataModule, init_args: {world: {...}, ...}}`.
"""

from iprm.data.datamodule import PRMDataModule
from iprm.data.records import Record
from iprm.scorers.labels import LabellingContext, StepLabeller
from iprm.tasks.arithmetic import grade
from iprm.tasks.world import World


class WorldDataModule(PRMDataModule):
    """Rollouts, best-of-N sets and the reference policy of the controlled arithmetic world.

    Args:
        world: The world's settings (`iprm.tasks.world.World`); built by `prepare_data`. It supplies
            `model_path` (its reference policy), `train_path` (its rollouts), `eval_paths` (its validation
            best-of-N sets) and `test_paths` (its test sets) unless they are given.
        extra_families: Second task families (`iprm.tasks.world.EXTRA_FAMILIES`) whose rollouts join the
            training set as extra instructions; sampled by the world's reference on first use.
        step_labels: How the training records' step labels are derived (`iprm.scorers.labels`):
            Math-Shepherd's Monte-Carlo estimation (`MonteCarloLabels`) or AutoPSV's ORM confidence
            (`AutoPSVLabels`), replacing the world's true labels, after the data knobs (so only the
            records a run trains on are labelled); cached under the world's directory. None keeps the
            world's labels.
        **kwargs: Everything else `PRMDataModule` takes: the data knobs, batch sizes, ...
    """

    def __init__(
        self,
        world: World,
        extra_families: list[str] | None = None,
        step_labels: StepLabeller | None = None,
        **kwargs,
    ):
        kwargs["model_path"] = kwargs.get("model_path") or world.model_path
        kwargs["train_path"] = kwargs.get("train_path") or world.train_path
        kwargs["eval_paths"] = kwargs.get("eval_paths") or world.val_paths
        kwargs["test_paths"] = kwargs.get("test_paths") or world.test_paths
        self.world = world
        self.step_labels = step_labels
        self.labelling_cost: dict | None = None
        self.extra_families = list(extra_families or [])
        extra = [world.extra_train_path(family) for family in self.extra_families]
        kwargs["extra_train_paths"] = [*(kwargs.get("extra_train_paths") or []), *extra]
        super().__init__(**kwargs)

    def prepare_data(self) -> None:
        self.world.build()
        for family in self.extra_families:
            self.world.build_extra(family)

    def _load_train(self) -> list[Record]:
        records = super()._load_train()
        if self.step_labels is None:
            return records
        device = str(self.trainer.strategy.root_device) if self.trainer is not None else "cpu"
        context = LabellingContext(
            self.model_path, self.step_separator, grade, self.world.directory / "labels", device
        )
        records, self.labelling_cost = self.step_labels.label(records, context)
        return records

    def sampling_tokens(self) -> dict[str, float | str]:
        """The world's sampling counts (exact, measured while sampling) scaled by the share of its rollouts
        the run needed, when the run trains on exactly the world's rollouts; else estimated from records."""
        counts = self.world.manifest()["stats"]["train"] if self._trains_on_the_world_only() else {}
        if "sampled_tokens" not in counts:  # other data, or a world built before the count was recorded
            return super().sampling_tokens()
        return self.needed_share(counts, "world manifest")

    def _trains_on_the_world_only(self) -> bool:
        return self.train_path == self.world.train_path and not self.extra_train_paths
