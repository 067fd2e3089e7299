"""The distributed engine: Apache Spark (PySpark), the same queries translated to Spark SQL (`dialect.py`).

`master` is Spark's: `local[2]` runs it in this machine's JVM with two threads (the tests), `spark://host:7077`,
`yarn` or `k8s://...` a cluster. `conf` is passed to the session as it is: for data in object storage,
`spark.hadoop.fs.s3a.*` and the hadoop-aws package (`spark.jars.packages`), see docs/guard_engine.md.
Tables are temporary views of cached DataFrames; results come back to the driver as pandas (Arrow).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import pandas as pd

from stillroom.core.errors import DataError, StillroomError
from stillroom.guard.engine.base import Engine

DEFAULT_CONF = {
    "spark.sql.session.timeZone": "UTC",  # hour(), dayofweek(), date_trunc() of the UTC timestamps
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "4",  # the default 200 is for clusters; a cluster recipe sets its own
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.ansi.enabled": "false",  # DuckDB's semantics: a division by zero is NULL, not an error
    "spark.sql.legacy.parquet.nanosAsLong": "true",  # pandas writes nanosecond times, which Spark cannot read as times
}


def spark_session(master: str = "local[2]", app_name: str = "stillroom-guard", conf: dict[str, Any] | None = None):
    """The SparkSession for `master` (getOrCreate: one per process), with DEFAULT_CONF under `conf`."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise StillroomError("the spark engine needs pyspark", hint="pip install 'stillroom[spark]' (and Java 17)") from error
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {**DEFAULT_CONF, **(conf or {})}.items():
        builder = builder.config(key, str(value))
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", "python3"))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


class SparkEngine(Engine):
    """Spark SQL over cached temporary views (see the module doc)."""

    name = "spark"
    dialect = "spark"

    def __init__(self, master: str = "local[2]", conf: dict[str, Any] | None = None, session=None) -> None:
        super().__init__()
        self.spark = session or spark_session(master, conf=conf)
        self._frames: dict[str, Any] = {}
        self._prefix = f"sr{id(self):x}_"  # several engines share one session: each its own view names

    def render(self, template: str, **params: Any) -> str:
        sql = super().render(template, **params)
        for table in self._frames:  # this engine's views
            sql = _rename(sql, table, self._prefix + table)
        return sql

    def _register(self, table: str, frame) -> None:
        self._drop(table)
        frame = frame.cache()
        frame.createOrReplaceTempView(self._prefix + table)
        self._frames[table] = frame

    def _put(self, table: str, frame: pd.DataFrame) -> None:
        frame = frame.copy()
        for column in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[column]):  # Spark keeps microseconds, as DuckDB does
                frame[column] = frame[column].dt.floor("us").astype("datetime64[us, UTC]")
            elif pd.api.types.is_string_dtype(frame[column]) and not pd.api.types.is_object_dtype(frame[column]):
                frame[column] = frame[column].astype(object)  # Arrow takes pandas' string dtype as large strings
        self._register(table, self.spark.createDataFrame(frame))

    def _read(self, table: str, paths: Sequence[str]) -> None:
        from pyspark.sql import functions as F

        from stillroom.guard.schema import FIELDS

        # a converted dataset's folder also holds manifest.json and quarantine.jsonl: Parquet files only
        frame = self.spark.read.option("mergeSchema", "true").option("pathGlobFilter", "*.parquet").parquet(*paths)
        missing = [f for f in FIELDS if f not in frame.columns]
        if missing:
            raise DataError(f"these Parquet files are not in the interaction schema: no column {', '.join(missing)}",
                            where=", ".join(paths), hint="write them with `stillroom guard convert`, or scan them with the duckdb engine")
        if dict(frame.dtypes)["ts"] == "bigint":  # nanoseconds (nanosAsLong): to microseconds, cut as DuckDB cuts them
            frame = frame.withColumn("ts", F.expr("timestamp_micros(div(ts, 1000))"))
        self._register(table, frame)

    def _create(self, table: str, select: str) -> None:
        frame = self.spark.sql(select)
        self._register(table, frame)
        frame.count()  # materialise now, while the tables it reads still exist

    def _drop(self, table: str) -> None:
        frame = self._frames.pop(table, None)
        if frame is not None:
            self.spark.catalog.dropTempView(self._prefix + table)
            frame.unpersist()

    def _frame(self, select: str) -> pd.DataFrame:
        out = self.spark.sql(select).toPandas()
        for column in out.columns:  # Spark hands timestamps back naive, in the session time zone (UTC)
            if pd.api.types.is_datetime64_any_dtype(out[column]) and out[column].dt.tz is None:
                out[column] = out[column].dt.tz_localize("UTC")
        return out

    def close(self) -> None:
        for table in list(self._frames):
            self._drop(table)


def _rename(sql: str, table: str, to: str) -> str:
    """`sql` with the table name `table` (a whole word) replaced by `to`."""
    import re

    return re.sub(rf"(?<![\w.]){re.escape(table)}(?!\w)", to, sql)
