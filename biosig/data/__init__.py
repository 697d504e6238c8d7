"""Windowed signal data: the WindowSet form, file formats, sources. Never imports mlflow."""

from biosig.data.naming import dataset_name
from biosig.data.npz_io import read_npz
from biosig.data.parquet_io import read_parquet, write_parquet
from biosig.data.sources import SourceOptions, load_source
from biosig.data.windowset import WindowSet

__all__ = ["WindowSet", "SourceOptions", "load_source", "read_parquet", "write_parquet", "read_npz", "dataset_name"]
