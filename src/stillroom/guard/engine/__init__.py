"""Where the guard's feature queries run: DuckDB (embedded, the default) or Apache Spark.

Every feature is defined once, as SQL in DuckDB's dialect (`queries.py`); the Spark engine runs the same text
translated by SQLGlot (`dialect.py`). `make_engine(config)` builds the engine a recipe's `engine:` section
names; `Engine.load(frame_or_parquet)` builds its interaction table; the detector, signals, reports and
baselines then call its methods (`accounts()`, `lockstep_pairs()`, `evidence()`, ...). See docs/guard_engine.md.
"""

from __future__ import annotations

from typing import Any

from stillroom.core.registry import Registry
from stillroom.guard.engine.base import Engine

ENGINES: Registry[Any] = Registry("engine")


@ENGINES.register("duckdb")
def _duckdb(config: Any) -> Engine:
    from stillroom.guard.engine.duckdb_engine import DuckDBEngine

    return DuckDBEngine(threads=getattr(config, "threads", None), memory_limit=getattr(config, "memory_limit", None),
                        temp_directory=getattr(config, "temp_directory", None))


@ENGINES.register("spark")
def _spark(config: Any) -> Engine:
    from stillroom.guard.engine.spark_engine import SparkEngine

    spark = getattr(config, "spark", None)
    return SparkEngine(master=getattr(spark, "master", "local[2]"), conf=dict(getattr(spark, "conf", {}) or {}))


def make_engine(config: Any = None) -> Engine:
    """The engine `config` (an `EngineConfig`, or None for the default DuckDB) names, empty: `load` it next."""
    name = getattr(config, "name", "duckdb") if config is not None else "duckdb"
    return ENGINES.get(name, where="engine.name")(config)


def load_traffic(traffic: Any, config: Any = None) -> Engine:
    """An engine holding `traffic`: an engine already loaded is returned as it is; a frame or Parquet paths are
    loaded into a new one (`make_engine(config)`)."""
    if isinstance(traffic, Engine):
        return traffic
    return make_engine(config).load(traffic)


__all__ = ["ENGINES", "Engine", "load_traffic", "make_engine"]
