"""Incremental scans: day N's scan reuses what was derived from days 1..N-1 instead of reading them again.

A scan's per-request work is reading and validating the raw log, normalising each prompt, marking reasoning
requests and classifying the capability (regular expressions and a model: most of a scan's load time). That
work depends on one request alone, so it is done once per day and kept: the state folder holds, per day, the
engine's enriched rows (`day=YYYY-MM-DD/enriched.parquet`: the schema columns plus `t`, `elicit`, `norm`,
`capability`) and `state.json` (days, rows, quarantine counts, the files each day came from).

`update(state, new_logs)` validates and enriches only the new logs, adds their days to the state, and returns
an engine whose `interactions` table is every day of the state (days 1..N-1 read back from the state's Parquet,
not re-derived); `Guard.scan(engine)` then scores the whole period. The result equals a full scan of all the
days (`tests/guard/test_scale.py` checks the feature table and the alerts). A day already in the state is
refused unless `replace=True` (a re-delivered day would otherwise count twice).

What is not (yet) incremental: the per-account aggregates and the cross-account inputs (windows over each
account's whole history, the lockstep self-join) are recomputed over the enriched rows of every day; they run
in the engine, out of core, without Python per request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from stillroom.core.errors import DataError
from stillroom.guard.ingest import EngineSettings, _engine_class, parquet_files

STATE_FILE = "state.json"


def _state(folder: Path) -> dict:
    path = folder / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"days": {}}


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / STATE_FILE)


def days_in(folder: str | Path) -> list[str]:
    """The days a state folder holds, in order."""
    return sorted(_state(Path(folder))["days"])


def update(folder: str | Path, new_logs: str | Path | Iterable[str | Path] | None, settings: EngineSettings | None = None, *,
           replace: bool = False, max_field_chars: int = 100_000, time_unit: str = "auto"):
    """Add `new_logs` (Parquet in the schema; a day's files or a dataset) to the state in `folder` and return an engine
    holding every day of it, ready for `Guard.scan`. `new_logs=None` only loads the state. Close the engine after."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = _state(folder)
    engine = _engine_class()(settings, max_field_chars=max_field_chars, time_unit=time_unit)
    try:
        if new_logs is not None:
            files = parquet_files(new_logs)
            engine.load([str(p) for p in files])  # the new rows only: validated, each distinct prompt enriched once
            days = engine.days()
            clash = [d for d in days if d in state["days"]]
            if clash and not replace:
                raise DataError(f"the state already holds {len(clash)} of these days ({', '.join(clash[:3])}"
                                f"{', …' if len(clash) > 3 else ''})", where=str(folder),
                                hint="scan only new days, or pass replace=True to replace those days' state")
            for day in days:
                out = folder / f"day={day}"
                out.mkdir(exist_ok=True)
                rows = engine.write_day(day, out / "enriched.parquet")
                state["days"][day] = {"rows": rows, "files": [str(p) for p in files]}
            data = engine.dataset
            state.setdefault("quarantine", {})
            for reason, n in data.reasons.items():
                state["quarantine"][reason] = state["quarantine"].get(reason, 0) + n
            _write_state(folder, state)
        if not state["days"]:
            raise DataError("the incremental state holds no day yet", where=str(folder), hint="update it with a day of logs first")
        return engine.load_enriched([folder / f"day={d}" / "enriched.parquet" for d in sorted(state["days"])])
    except BaseException:
        engine.close()
        raise
