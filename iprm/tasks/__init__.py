"""Tasks: problems, their worked solutions and grading (`arithmetic`), the controlled world built from them
(`world`), and the world as a data source for training and evaluation (`WorldDataModule`)."""

from iprm.tasks.datamodule import WorldDataModule

__all__ = ["WorldDataModule"]
