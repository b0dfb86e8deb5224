"""Data: the record schema and loaders (`records`), the prompt through the chat template (`prompts`),
collation into token tensors with step ends (`collate`), the training-set knobs (`knobs`), the official
candidate format and math-verify grading (`official`), reading any supported file (`loading`), what
sampling a run's rollouts cost (`cost`), and the DataModule (`PRMDataModule`). Nothing here imports
`iprm.tasks` or `iprm.scorers` (`tests/test_layers.py`): a task supplies its data by subclassing the
DataModule (`iprm.tasks.WorldDataModule`)."""

__all__ = ["PRMDataModule"]


def __getattr__(name: str):
    # Imported on first use: grading workers and light tools import submodules without torch and Lightning.
    if name == "PRMDataModule":
        from iprm.data.datamodule import PRMDataModule

        return PRMDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
