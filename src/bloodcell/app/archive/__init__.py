"""`bloodcell batch`: archive inference into a resumable Parquet dataset, locally or on Ray Data.

sources (what to read) -> engines (where the model runs) -> rows (one Parquet row per image) -> store.
"""

from bloodcell.app.archive.job import BatchSummary, run_batch

__all__ = ["BatchSummary", "run_batch"]
