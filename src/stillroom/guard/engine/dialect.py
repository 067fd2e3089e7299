"""The queries, written in DuckDB's dialect, translated to another engine's by SQLGlot.

`sqlglot.transpile(sql, read="duckdb", write="spark")` translates the functions by name (`regexp_matches` ->
`RLIKE`, `log2(x)` -> `LOG(2, x)`, `median`, window and `FILTER` clauses, string escapes). Three DuckDB forms
it translates to a Spark function with another meaning are rewritten on the parsed tree first:

- `epoch(ts)`: DuckDB's seconds with the microseconds as a fraction; SQLGlot's `UNIX_TIMESTAMP(ts)` drops the
  fraction. Spark: `UNIX_MICROS(ts) / 1e6` (equal to DuckDB's up to the last bit of the double);
- `dayofweek(ts)`: DuckDB counts Sunday as 0, Spark's `DAYOFWEEK` as 1. Spark: `DAYOFWEEK(ts) - 1`;
- decimal literals (`2.0`): DuckDB divides into a double, Spark keeps DECIMAL arithmetic, rounded to its
  scale. Spark: `CAST(2.0 AS DOUBLE)`.

`tests/guard/test_engine.py` runs every query on both engines and compares the results.
"""

from __future__ import annotations

from functools import lru_cache

import sqlglot
from sqlglot import exp


def _spark_rewrite(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.TimeToUnix):
        micros = exp.Anonymous(this="UNIX_MICROS", expressions=[node.this.copy()])
        return exp.Div(this=micros, expression=exp.Literal.number("1e6"))
    if isinstance(node, exp.DayOfWeek):
        return exp.Paren(this=exp.Sub(this=exp.DayOfWeek(this=node.this.copy()), expression=exp.Literal.number(1)))
    if isinstance(node, exp.Literal) and not node.is_string and "." in node.this and "e" not in node.this.lower():
        return exp.Cast(this=node.copy(), to=exp.DataType.build("DOUBLE"))
    return node


@lru_cache(maxsize=512)
def translate(sql: str, dialect: str) -> str:
    """`sql` (DuckDB dialect) in `dialect` (spark), with the rewrites of the module doc."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    if dialect == "spark":
        tree = tree.transform(_spark_rewrite, copy=False)
    return tree.sql(dialect=dialect)
