"""Data: known-entropy synthetic language, byte text and token files, as sharded, checkpointable grain pipelines.

`data_info(data_cfg)` says what the model needs (vocabulary, entropy floor); `make_batches(...)` yields this process's
share of each global batch. See pipeline.py for the sharding contract and sources.py/synthetic.py for the records.
"""

from scalekit.data.pipeline import DataInfo, data_info, make_batches
from scalekit.data.errors import DataError

__all__ = ["DataError", "DataInfo", "data_info", "make_batches"]
