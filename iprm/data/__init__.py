"""Data: the record schema and loaders, collation into token tensors with step ends, and the DataModule."""

from iprm.data.collate import Collator, Encoded, encode, split_steps
from iprm.data.datamodule import InstructionBatchSampler, PRMDataModule
from iprm.data.official import grade, load_official_candidates
from iprm.data.records import Record, RecordError, load_records, records_from_dataset, write_records

__all__ = [
    "Collator",
    "Encoded",
    "InstructionBatchSampler",
    "PRMDataModule",
    "Record",
    "RecordError",
    "encode",
    "grade",
    "load_official_candidates",
    "load_records",
    "records_from_dataset",
    "split_steps",
    "write_records",
]
