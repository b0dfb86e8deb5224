"""Data: the record schema and loaders (`records`), collation into token tensors with step ends
(`collate`), the training-set knobs (`knobs`), the official candidate format and math-verify grading
(`official`), and the DataModule (`PRMDataModule`). Nothing here imports `iprm.tasks`: a task supplies
its data by subclassing the DataModule (`iprm.tasks.WorldDataModule`)."""

from iprm.data.datamodule import PRMDataModule

__all__ = ["PRMDataModule"]
