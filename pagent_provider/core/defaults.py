"""Default settings of a sync, in one place for the operator, the command-line tool and the core.

Plain constants with no imports, so that a shell can read them without loading
pandas or SQLAlchemy (the command-line tool answers ``--help`` at once).
"""

from __future__ import annotations

#: The pagent connection id, and so the default ledger namespace.
PAGENT_CONN_ID = "pagent_default"
#: pagent accepts 1 to 100 events per request.
BATCH_SIZE = 100
MAX_WORKERS = 4
CHUNKSIZE = 10_000
REVENUE_UNIT = "dollars"
TIMEZONE = "UTC"
LEDGER_TABLE = "pagent_ledger"
UNKNOWN_OUTCOME = "resend"
CLAIM_TIMEOUT_S = 600.0
MAX_RETRIES = 5
READ_TIMEOUT_S = 30.0
#: How long a run waits, at its end, for rows another live run is sending.
CLAIMED_ELSEWHERE_WAIT_S = 60.0
#: The ingest API batches go to: "v1" (top-level session variables) or "v2" (bulk, session_data).
API = "v1"
INGEST_APIS = ("v1", "v2")
