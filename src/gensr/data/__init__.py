"""Raw adapters -> canonical S&R log (Parquet) -> splits, candidates and batches."""

from gensr.data.batching import Batch, InstanceTable, TrainSampler, eval_instances
from gensr.data.dataset import SequenceStore, SRData, load_data

__all__ = ["Batch", "InstanceTable", "SRData", "SequenceStore", "TrainSampler",
           "eval_instances", "load_data"]
