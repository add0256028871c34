"""Realistic sample conversions for demos, tests and benchmarks.

Generates orders that carry the session variables ``_pgnt.variables()``
returns, and loads them into any SQLAlchemy database, so a sync can be tried
end to end without a real warehouse.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import numpy as np
import pandas as pd
import sqlalchemy as sa

GOAL_PURCHASE = "5f1c2a4e-8d3b-4c6a-9e7f-0a1b2c3d4e5f"
CHANNELS = ("web", "ios", "android", "email")
COUPONS = (None, None, None, "WELCOME10", "BLACKFRIDAY")


def conversions_table(metadata: sa.MetaData, name: str = "conversions") -> sa.Table:
    """The sample warehouse table: one row per order, with its session variables."""
    return sa.Table(
        name,
        metadata,
        sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("conversion_id", sa.String(64)),
        sa.Column("label", sa.String(64)),
        sa.Column("amount_usd", sa.Numeric(12, 2)),
        sa.Column("converted_at", sa.DateTime, nullable=False),
        sa.Column("channel", sa.String(32)),
        sa.Column("coupon", sa.String(32)),
    )


def generate_conversions(
    rows: int,
    *,
    start: datetime,
    end: datetime,
    seed: int = 7,
    first_order_id: int = 1,
) -> pd.DataFrame:
    """``rows`` purchases with times spread over ``[start, end)`` (naive UTC), reproducible by ``seed``.

    Amounts are exact ``Decimal`` dollars with two decimals, as a NUMERIC column holds them.
    """
    rng = np.random.default_rng(seed)
    span_s = int((end - start).total_seconds())
    offsets = np.sort(rng.integers(0, max(span_s, 1), size=rows))
    cents = rng.lognormal(mean=8.0, sigma=1.0, size=rows).astype(np.int64) + 99
    visitors = rng.integers(0, max(rows // 3, 1), size=rows)
    return pd.DataFrame(
        {
            "order_id": np.arange(first_order_id, first_order_id + rows, dtype=np.int64),
            "session_id": [f"sess_{seed:02x}{i:08x}" for i in rng.integers(0, 2**32, size=rows)],
            "user_id": [f"user_{v:07d}" for v in visitors],
            "conversion_id": GOAL_PURCHASE,
            "label": "purchase",
            "amount_usd": [Decimal(int(c)).scaleb(-2) for c in cents],
            "converted_at": pd.Timestamp(start) + pd.to_timedelta(offsets, unit="s"),
            "channel": rng.choice(CHANNELS, size=rows),
            "coupon": [COUPONS[i] for i in rng.integers(0, len(COUPONS), size=rows)],
        }
    )


def load_conversions(
    engine: sa.Engine, frame: pd.DataFrame, *, table: str = "conversions", replace: bool = True
) -> int:
    """Write ``frame`` to ``table`` (created when missing); returns the rows written."""
    metadata = sa.MetaData()
    target = conversions_table(metadata, table)
    if replace:
        metadata.drop_all(engine, tables=[target], checkfirst=True)
    metadata.create_all(engine, tables=[target], checkfirst=True)
    # the column names are conversions_table()'s, all str
    records = cast(list[dict[str, Any]], frame.astype(object).where(frame.notna(), None).to_dict("records"))
    for record in records:
        record["converted_at"] = record["converted_at"].to_pydatetime()
    with engine.begin() as conn:
        for start in range(0, len(records), 5_000):
            conn.execute(target.insert(), records[start : start + 5_000])
    return len(records)


def write_conversions(url: str, frame: pd.DataFrame, *, table: str = "conversions") -> int:
    """:func:`load_conversions` into the database at a SQLAlchemy ``url`` (replacing the table)."""
    engine = sa.create_engine(url)
    try:
        return load_conversions(engine, frame, table=table)
    finally:
        engine.dispose()


def sample_period(days: int = 3, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last ``days`` whole UTC days before ``now``, as naive UTC datetimes."""
    today = (now or datetime.utcnow()).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days), today
