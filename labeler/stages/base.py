"""What every stage shares: declared columns, the 1:1 row check, per-row errors as data."""

from __future__ import annotations

from typing import Iterable

import pyarrow as pa


class StageContractError(RuntimeError):
    """A stage broke its contract (a bug, not bad input): the job stops."""


def require_columns(stage: str, table: pa.Table, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise StageContractError(f"{stage}: input batch lacks columns {missing} (has {table.column_names})")


def check_rows(stage: str, rows_in: int, out: pa.Table) -> pa.Table:
    if out.num_rows != rows_in:
        raise StageContractError(f"{stage}: {rows_in} rows came in but {out.num_rows} left; every row must leave exactly once")
    return out


def with_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Append or replace columns (order: existing first, new ones after)."""
    for name, arr in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def stage_error(stage: str, exc: BaseException) -> str:
    """The ``error`` value for a row a stage could not process."""
    from labeler.io import redact_text

    msg = str(exc).strip() or type(exc).__name__
    return redact_text(f"{stage}: {msg}")


def resolve_ref(obj):
    """Cache objects travel as Ray object refs; fetch once per worker process."""
    if obj is None:
        return None
    try:
        import ray

        if isinstance(obj, ray.ObjectRef):
            key = obj.hex()
            if key not in _REF_MEMO:
                if len(_REF_MEMO) >= 4:  # bounded: a reused worker does not hoard old runs' caches
                    _REF_MEMO.clear()
                _REF_MEMO[key] = ray.get(obj)
            return _REF_MEMO[key]
    except ImportError:  # pragma: no cover
        pass
    return obj


_REF_MEMO: dict = {}
