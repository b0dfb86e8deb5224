"""Tasks: problems, their worked solutions and grading (`arithmetic`), the controlled world built from them
(`world`), and the world as a data source for training and evaluation (`WorldDataModule`)."""

__all__ = ["WorldDataModule"]


def __getattr__(name: str):
    # Imported on first use: grading workers and light tools import submodules without torch and Lightning.
    if name == "WorldDataModule":
        from iprm.tasks.datamodule import WorldDataModule

        return WorldDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
