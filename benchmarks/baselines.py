"""What users would write instead of the sync engine: the baselines it is compared with.

Each baseline is one small function that takes the same source, the same
query and the same sink as the engine run it is compared with, and returns a
:class:`~benchmarks.engine_runs.Timing`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pandas as pd
import requests
import sqlalchemy as sa

from benchmarks.common import Cap, Timing

V1_PATH = "/v1/conversions"
BATCH = 100


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


def events_of_chunk(chunk: pd.DataFrame) -> list[dict[str, Any]]:
    """The events of one chunk of the sample table, as pagent takes them and as the sync sends them.

    Written for this table, vectorised: revenue from dollars to integer cents
    (rounded, as the amounts have two decimals), the time from the text or
    datetime column to integer Unix milliseconds (the times are UTC), the ids
    as strings. It checks what it relies on (no missing value in a column it
    sends) rather than validating row by row.
    """
    needed = chunk[["session_id", "user_id", "conversion_id", "label", "amount_usd", "converted_at"]]
    if needed.isna().to_numpy().any():
        raise ValueError("the minimal pipeline is written for rows without missing values")
    cents = np.rint(pd.to_numeric(needed["amount_usd"]).to_numpy(dtype="float64") * 100).astype(np.int64)
    times = pd.to_datetime(needed["converted_at"], format="ISO8601")
    millis = times.to_numpy(dtype="datetime64[ms]").view(np.int64)
    return [
        {
            "conversion_id": conversion_id,
            "label": label,
            "revenue": revenue,
            "session_id": session_id,
            "time": time_ms,
            "user_id": user_id,
        }
        for session_id, user_id, conversion_id, label, revenue, time_ms in zip(
            needed["session_id"].astype(str).tolist(),
            needed["user_id"].astype(str).tolist(),
            needed["conversion_id"].astype(str).tolist(),
            needed["label"].astype(str).tolist(),
            cents.tolist(),
            millis.tolist(),
            strict=True,
        )
    ]


def minimal_pipeline(
    source: sa.Engine,
    sql: str,
    base_url: str,
    *,
    api_key: str = "test-key",
    chunksize: int = 10_000,
    cap_s: float | None = None,
) -> Timing:
    """A correct hand-written pipeline: the same valid events the sync sends, with nothing else.

    ``pd.read_sql`` in the same chunks as the engine; each chunk becomes
    events with :func:`events_of_chunk` (vectorised cents, Unix milliseconds,
    string ids), each batch of 100 is ``json.dumps``-ed and POSTed over one
    pooled :class:`requests.Session`, waiting for each answer before the next.
    No ledger, no retries, no row-by-row validation, no concurrency. Against a
    sink with latency this is also the "sequential batching client" baseline.
    """
    url = base_url + V1_PATH
    headers = _headers(api_key)
    events = requests_sent = rows = 0
    cap = Cap(cap_s)
    started = time.perf_counter()
    with requests.Session() as session:
        for chunk in cap.until(pd.read_sql(sql, source, chunksize=chunksize)):
            rows += len(chunk)
            records = events_of_chunk(chunk)
            for start in range(0, len(records), BATCH):
                batch = records[start : start + BATCH]
                body = json.dumps({"events": batch}).encode()
                session.post(url, data=body, headers=headers).raise_for_status()
                events += len(batch)
                requests_sent += 1
    seconds = time.perf_counter() - started
    return Timing(events=events, seconds=seconds, requests=requests_sent, rows=rows, capped=cap.hit)


def vendor_events(source: sa.Engine, sql: str) -> list[dict[str, Any]]:
    """The events of the vendor's example: the session variables, a label and revenue in cents."""
    frame = pd.read_sql(sql, source)
    return [
        {
            "session_id": row.session_id,
            "user_id": row.user_id,
            "conversion_id": row.conversion_id,
            "label": "purchase",
            "revenue": round(float(row.amount_usd) * 100),
        }
        for row in frame.itertuples(index=False)
    ]


def vendor_pattern(events: list[dict[str, Any]], base_url: str, *, api_key: str = "test-key") -> Timing:
    """The vendor documentation's Python example, once per event.

    ``requests.post(..., json={"events": [event]})`` with no session: one
    request, and one new TCP connection, per conversion.
    """
    url = base_url + V1_PATH
    headers = _headers(api_key)
    started = time.perf_counter()
    for event in events:
        response = requests.post(url, headers=headers, json={"events": [event]})
        response.raise_for_status()
    seconds = time.perf_counter() - started
    return Timing(events=len(events), seconds=seconds, requests=len(events), rows=len(events))
