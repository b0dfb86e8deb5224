"""Data: the record schema and loaders (`records`), collation into token tensors with step ends
(`collate`), the official candidate format and math-verify grading (`official`), and the DataModule
(`datamodule`). Import from the submodules; this package imports nothing so that the world builder and
the data module can depend on each other's pieces without a cycle."""
