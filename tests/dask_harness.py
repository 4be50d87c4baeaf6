"""The Dask test harness shared by test_dask.py (lmer) and test_dask_glmer.py (glmer): data sets
written as parquet files that the workers read (so the client never holds a partition), and a
scheduler plugin that records the size of every task result (what left the workers). The local
cluster itself is conftest.py's `cluster_client` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.dataframe as dd  # the test extra installs dask: a missing one is a failure
import numpy as np
import pandas as pd
from distributed.diagnostics.plugin import SchedulerPlugin


class TaskSizes(SchedulerPlugin):
    """Scheduler plugin: the size (bytes) of every task result the workers report."""

    name = "mixbridge-task-sizes"

    def __init__(self, scheduler: Any) -> None:
        self.sizes: dict[str, int] = {}
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory":
            ts = self.scheduler.tasks.get(key)
            nbytes = kwargs.get("nbytes") or (ts.nbytes if ts is not None else 0)
            self.sizes[str(key)] = int(nbytes or 0)


@contextmanager
def recorded_task_sizes(cluster: Any) -> Iterator[TaskSizes]:
    """A `TaskSizes` plugin on the cluster's scheduler while the block runs."""
    plugin = TaskSizes(cluster.scheduler)
    cluster.scheduler.add_plugin(plugin, name=plugin.name)
    try:
        yield plugin
    finally:
        cluster.scheduler.remove_plugin(name=plugin.name)


def parquet_partitions(df: pd.DataFrame, directory: Path, nparts: int) -> dd.DataFrame:
    """`df` written as `nparts` parquet files of consecutive rows, read back lazily."""
    bounds = np.linspace(0, len(df), nparts + 1).astype(int)
    for k in range(nparts):
        df.iloc[bounds[k] : bounds[k + 1]].to_parquet(directory / f"part{k}.parquet")
    ddf = dd.read_parquet(str(directory / "*.parquet"))
    assert ddf.npartitions == nparts
    return ddf
