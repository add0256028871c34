"""Tests of pagent_provider.core.transform: warehouse rows -> pagent v1 events."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagent_provider.core.transform import (
    EVENT_FIELDS,
    REQUIRED_FIELDS,
    Converted,
    RowReject,
    TransformConfig,
    check_columns,
    gather_properties,
    ids_to_strings,
    properties_to_json_objects,
    revenue_to_cents,
    time_to_unix_ms,
    transform_chunk,
)
from pagent_provider.core.transform import times as times_module
from pagent_provider.exceptions import PagentConfigError

UTC = dt.UTC
#: A fixed "now" (2027-01-15T08:00:00Z) so that the future check is deterministic.
NOW_MS = 1_800_000_000_000
MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z


def ms(moment: dt.datetime) -> int:
    """Unix milliseconds of an aware datetime, computed independently of the code under test."""
    return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)


def pairs(converted: Converted) -> list[tuple[object, object]]:
    """(value, reason) per row."""
    return list(zip(converted.values.tolist(), converted.reasons.tolist(), strict=True))


def values(converted: Converted) -> list[object]:
    return converted.values.tolist()


def reasons(converted: Converted) -> list[object]:
    return converted.reasons.tolist()


def reference_cents(written: str) -> int:
    """The definition: the decimal value as written, times 100, rounded half away from zero."""
    return int(Decimal(written).scaleb(2).quantize(Decimal(1), ROUND_HALF_UP))


def reference_or_none(written: str) -> int | None:
    """The reference cents, or None beyond JSON's safe integer range (the transform rejects those)."""
    cents = reference_cents(written)
    return cents if abs(cents) <= 2**53 - 1 else None


def frame(**columns: object) -> pd.DataFrame:
    """A chunk with valid defaults for every column not given."""
    size = len(next(iter(columns.values()))) if columns else 2
    base: dict[str, object] = {
        "session_id": [f"s{i}" for i in range(size)],
        "user_id": [f"u{i}" for i in range(size)],
        "conversion_id": ["goal-uuid"] * size,
        "time": pd.to_datetime(["2026-11-26T10:00:00"] * size),
    }
    base.update(columns)
    return pd.DataFrame(base)


# --------------------------------------------------------------------------
# TransformConfig and check_columns
# --------------------------------------------------------------------------


class TestTransformConfig:
    def test_defaults_are_valid(self) -> None:
        config = TransformConfig()
        assert config.revenue_unit == "dollars"
        assert config.column_for("session_id") == "session_id"

    def test_columns_map_event_fields_to_columns(self) -> None:
        config = TransformConfig(columns={"revenue": "amount"})
        assert config.column_for("revenue") == "amount"
        assert config.column_for("time") == "time"

    def test_unknown_event_field_is_a_config_error(self) -> None:
        with pytest.raises(PagentConfigError, match=r"unknown event field.*'amount'"):
            TransformConfig(columns={"amount": "revenue"})

    def test_config_does_not_change_with_the_callers_dict(self) -> None:
        mapping = {"revenue": "amount"}
        config = TransformConfig(columns=mapping)
        mapping["revenue"] = "other"
        assert config.column_for("revenue") == "amount"

    @pytest.mark.parametrize("unit", ["euros", "Dollars", ""])
    def test_bad_revenue_unit(self, unit: str) -> None:
        with pytest.raises(PagentConfigError, match="revenue_unit"):
            TransformConfig(revenue_unit=unit)  # type: ignore[arg-type]

    @pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd"])
    def test_unknown_timezone(self, zone: str) -> None:
        with pytest.raises(PagentConfigError, match="timezone"):
            TransformConfig(timezone=zone)

    @pytest.mark.parametrize("name", ["label", "conversion_id"])
    @pytest.mark.parametrize("value", ["", "   "])
    def test_empty_constants(self, name: str, value: str) -> None:
        with pytest.raises(PagentConfigError, match=name):
            TransformConfig(**{name: value})

    def test_constant_and_explicit_column_conflict(self) -> None:
        with pytest.raises(PagentConfigError, match="both as a constant"):
            TransformConfig(label="purchase", columns={"label": "goal"})

    def test_properties_columns_must_be_a_list_not_a_string(self) -> None:
        with pytest.raises(PagentConfigError, match="list of column names"):
            TransformConfig(properties_columns="country")

    def test_properties_columns_without_repeats(self) -> None:
        with pytest.raises(PagentConfigError, match="more than once"):
            TransformConfig(properties_columns=["a", "a"])

    def test_empty_key_column(self) -> None:
        with pytest.raises(PagentConfigError, match="key_column"):
            TransformConfig(key_column="")


class TestCheckColumns:
    def test_all_present(self) -> None:
        check_columns(["session_id", "user_id", "conversion_id", "time"], TransformConfig())

    def test_names_missing_and_available_columns(self) -> None:
        with pytest.raises(PagentConfigError) as info:
            check_columns(["session_id", "uid", "time"], TransformConfig(key_column="order_id"))
        message = str(info.value)
        assert "'user_id'" in message and "'conversion_id'" in message and "'order_id'" in message
        assert "Available columns: 'session_id', 'uid', 'time'" in message

    def test_constant_conversion_id_needs_no_column(self) -> None:
        check_columns(["session_id", "user_id", "time"], TransformConfig(conversion_id="goal-uuid"))

    def test_time_needed_only_when_required(self) -> None:
        with pytest.raises(PagentConfigError, match="'time'"):
            check_columns(["session_id", "user_id", "conversion_id"], TransformConfig())
        check_columns(["session_id", "user_id", "conversion_id"], TransformConfig(require_time=False))

    def test_mapped_columns_and_properties_columns(self) -> None:
        config = TransformConfig(columns={"time": "paid_at"}, properties_columns=["country"])
        with pytest.raises(PagentConfigError) as info:
            check_columns(["session_id", "user_id", "conversion_id", "time"], config)
        assert "'paid_at'" in str(info.value) and "'country'" in str(info.value)

    def test_explicitly_mapped_optional_column_must_exist(self) -> None:
        with pytest.raises(PagentConfigError, match="'amount'"):
            check_columns(
                ["session_id", "user_id", "conversion_id", "time"], TransformConfig(columns={"revenue": "amount"})
            )

    def test_duplicate_column_names(self) -> None:
        with pytest.raises(PagentConfigError, match="more than one column named 'session_id'"):
            check_columns(["session_id", "session_id", "user_id", "conversion_id", "time"], TransformConfig())

    def test_transform_chunk_checks_columns(self) -> None:
        with pytest.raises(PagentConfigError, match="'user_id'"):
            transform_chunk(pd.DataFrame({"session_id": ["s"], "conversion_id": ["c"], "time": [1]}), TransformConfig())


# --------------------------------------------------------------------------
# revenue_to_cents
# --------------------------------------------------------------------------


class TestRevenueDollars:
    EXAMPLES = [  # noqa: RUF012 - test data
        (19.99, 1999),
        (0.29, 29),
        (1234567.89, 123456789),
        (1.005, 101),
        (2.675, 268),
        (0.125, 13),
        (-1.005, -101),
        (0.0, 0),
        (100.0, 10000),
    ]

    def test_floats(self) -> None:
        result = revenue_to_cents(pd.Series([x for x, _ in self.EXAMPLES]), "dollars")
        assert values(result) == [cents for _, cents in self.EXAMPLES]
        assert all(type(v) is int for v in values(result))
        assert reasons(result) == [None] * len(self.EXAMPLES)

    def test_int_times_100_is_wrong_but_we_are_not(self) -> None:
        assert int(0.29 * 100) == 28  # the classic bug this module avoids
        assert values(revenue_to_cents(pd.Series([0.29]), "dollars")) == [29]

    def test_decimals_in_object_column(self) -> None:
        column = pd.Series([Decimal(str(x)) for x, _ in self.EXAMPLES] + [None], dtype=object)
        assert values(revenue_to_cents(column, "dollars")) == [c for _, c in self.EXAMPLES] + [None]

    def test_numeric_strings(self) -> None:
        texts = ["19.99", "0.29", "1234567.89", "1.005", "2.675", "0.125", "-1.005", " 7 ", "1e2", ".5"]
        result = revenue_to_cents(pd.Series(texts, dtype="str"), "dollars")
        assert values(result) == [1999, 29, 123456789, 101, 268, 13, -101, 700, 10000, 50]

    def test_ints(self) -> None:
        assert values(revenue_to_cents(pd.Series([0, 5, -3]), "dollars")) == [0, 500, -300]

    def test_nullable_int_and_float(self) -> None:
        ints = pd.Series(pd.array([19, None], dtype="Int64"))
        floats = pd.Series(pd.array([19.99, None], dtype="Float64"))
        assert pairs(revenue_to_cents(ints, "dollars")) == [(1900, None), (None, None)]
        assert pairs(revenue_to_cents(floats, "dollars")) == [(1999, None), (None, None)]

    def test_float32_is_read_as_written(self) -> None:
        column = pd.Series(np.array([19.99, 1.005], dtype=np.float32))
        assert values(revenue_to_cents(column, "dollars")) == [1999, 101]

    def test_missing_is_left_out_and_valid(self) -> None:
        column = pd.Series([None, np.nan, pd.NA], dtype=object)
        assert pairs(revenue_to_cents(column, "dollars")) == [(None, None)] * 3
        assert pairs(revenue_to_cents(pd.Series([np.nan]), "dollars")) == [(None, None)]
        assert pairs(revenue_to_cents(pd.Series([None], dtype="str"), "dollars")) == [(None, None)]

    @pytest.mark.parametrize(
        "column",
        [
            pd.Series([np.inf, -np.inf]),
            pd.Series([Decimal("Infinity"), float("-inf")], dtype=object),
        ],
    )
    def test_infinity_is_invalid(self, column: pd.Series) -> None:
        result = revenue_to_cents(column, "dollars")
        assert values(result) == [None, None]
        assert all("not a finite number" in r for r in reasons(result))

    @pytest.mark.parametrize("text", ["abc", "$19.99", "19,99", "", "Infinity", "1_000"])
    def test_non_numeric_text_is_invalid(self, text: str) -> None:
        for column in (pd.Series([text], dtype="str"), pd.Series([text], dtype=object)):
            result = revenue_to_cents(column, "dollars")
            assert values(result) == [None]
            assert "is not a number" in reasons(result)[0]

    @pytest.mark.parametrize(
        "column",
        [
            pd.Series([True, False]),
            pd.Series(pd.array([True, False], dtype="boolean")),
            pd.Series([True, np.False_], dtype=object),
        ],
    )
    def test_booleans_are_invalid(self, column: pd.Series) -> None:
        result = revenue_to_cents(column, "dollars")
        assert values(result) == [None, None]
        assert all("boolean" in r for r in reasons(result))

    def test_other_types_are_invalid(self) -> None:
        result = revenue_to_cents(pd.Series([{"a": 1}, dt.datetime(2026, 1, 1)], dtype=object), "dollars")
        assert values(result) == [None, None]
        assert "dict" in reasons(result)[0] and "datetime" in reasons(result)[1]

    @pytest.mark.parametrize("nan", [Decimal("NaN"), Decimal("sNaN"), Decimal("-NaN")])
    def test_decimal_nan_is_invalid_not_null(self, nan: Decimal) -> None:
        # PostgreSQL's numeric 'NaN' arrives as Decimal('NaN'); a NULL arrives as None.
        result = revenue_to_cents(pd.Series([Decimal("1.00"), nan, None], dtype=object), "dollars")
        assert values(result) == [100, None, None]
        assert reasons(result)[0] is None and reasons(result)[2] is None
        assert "NaN" in reasons(result)[1] and "not NULL" in reasons(result)[1]

    def test_float_nan_is_null(self) -> None:
        # pandas marks NULL as NaN in float columns (and NaN as NA in Float64 ones): indistinguishable.
        assert pairs(revenue_to_cents(pd.Series([np.nan, 1.5]), "dollars")) == [(None, None), (150, None)]

    def test_overflow_is_invalid(self) -> None:
        limit = (2**53 - 1) // 100
        result = revenue_to_cents(pd.Series([limit, limit + 1, -(limit + 1)]), "dollars")
        assert values(result) == [limit * 100, None, None]
        assert "safe integer range" in reasons(result)[1]
        huge = revenue_to_cents(pd.Series([1e17, 1e300]), "dollars")
        assert values(huge) == [None, None]
        assert revenue_to_cents(pd.Series([Decimal("1E+30")], dtype=object), "dollars").values[0] is None
        assert revenue_to_cents(pd.Series(["1e30"], dtype="str"), "dollars").values[0] is None

    def test_uint64_beyond_int64_is_invalid(self) -> None:
        result = revenue_to_cents(pd.Series(np.array([1, 2**64 - 1], dtype=np.uint64)), "dollars")
        assert values(result) == [100, None]

    def test_unknown_unit_is_a_config_error(self) -> None:
        with pytest.raises(PagentConfigError):
            revenue_to_cents(pd.Series([1.0]), "euros")  # type: ignore[arg-type]

    def test_keeps_the_index(self) -> None:
        result = revenue_to_cents(pd.Series([1.5, 2.5], index=[10, 20]), "dollars")
        assert list(result.values.index) == [10, 20] and list(result.reasons.index) == [10, 20]


class TestRevenueCents:
    def test_whole_numbers_pass(self) -> None:
        columns = [
            pd.Series([1999]),
            pd.Series([1999.0]),
            pd.Series([Decimal("1999"), Decimal("1999.00")], dtype=object),
            pd.Series(["1999", "1999.00"], dtype="str"),
            pd.Series(pd.array([1999, None], dtype="Int64")),
        ]
        for column in columns:
            result = revenue_to_cents(column, "cents")
            assert [v for v in values(result) if v is not None] == [1999] * int(column.notna().sum())
            assert reasons(result) == [None] * len(column)

    @pytest.mark.parametrize(
        "column",
        [pd.Series([19.99]), pd.Series([Decimal("19.99")], dtype=object), pd.Series(["19.99"], dtype="str")],
    )
    def test_fractions_are_invalid_with_a_hint(self, column: pd.Series) -> None:
        result = revenue_to_cents(column, "cents")
        assert values(result) == [None]
        assert "not whole cents" in reasons(result)[0]
        assert "revenue_unit='dollars'" in reasons(result)[0]

    def test_json_safe_integer_limits(self) -> None:
        limit = 2**53 - 1
        result = revenue_to_cents(pd.Series([limit, -limit, limit + 1, -(2**63), 2**63 - 1]), "cents")
        assert values(result) == [limit, -limit, None, None, None]
        assert "safe integer range" in reasons(result)[2]
        assert values(revenue_to_cents(pd.Series([float(limit), 2.0**53, 2.0**63]), "cents")) == [limit, None, None]
        texts = revenue_to_cents(pd.Series([str(limit), str(limit + 1)], dtype=object), "cents")
        assert values(texts) == [limit, None]

    def test_missing_and_infinity(self) -> None:
        assert pairs(revenue_to_cents(pd.Series([np.nan]), "cents")) == [(None, None)]
        assert values(revenue_to_cents(pd.Series([np.inf]), "cents")) == [None]


# Values as written: floats (their shortest repr), Decimals and text.
_written_decimals = st.decimals(
    min_value=Decimal("-1e15"), max_value=Decimal("1e15"), allow_nan=False, allow_infinity=False, places=None
).filter(lambda d: d.adjusted() > -30)


class TestRevenueProperties:
    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.floats(min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False),
                # Short decimals are where half-cent ties live: 1.005, 2.675, ...
                st.decimals(min_value=-(10**9), max_value=10**9, places=3).map(lambda d: float(str(d))),
            ),
            min_size=1,
            max_size=40,
        )
    )
    def test_floats_match_the_decimal_reference(self, numbers: list[float]) -> None:
        result = revenue_to_cents(pd.Series(numbers, dtype=np.float64), "dollars")
        assert values(result) == [reference_or_none(repr(x)) for x in numbers]

    @settings(max_examples=100, deadline=None)
    @given(st.lists(_written_decimals, min_size=1, max_size=30))
    def test_decimals_and_text_match_the_decimal_reference(self, numbers: list[Decimal]) -> None:
        expected = [reference_or_none(str(d)) for d in numbers]
        assert values(revenue_to_cents(pd.Series(numbers, dtype=object), "dollars")) == expected
        texts = [str(d) for d in numbers]
        assert values(revenue_to_cents(pd.Series(texts, dtype="str"), "dollars")) == expected
        assert values(revenue_to_cents(pd.Series(texts, dtype=object), "dollars")) == expected

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1), min_size=1, max_size=40))
    def test_two_decimals_are_exact(self, cents: list[int]) -> None:
        texts = [f"{'-' if c < 0 else ''}{abs(c) // 100}.{abs(c) % 100:02d}" for c in cents]
        for column in (
            pd.Series([float(t) for t in texts]),
            pd.Series([Decimal(t) for t in texts], dtype=object),
            pd.Series(texts, dtype="str"),
        ):
            assert values(revenue_to_cents(column, "dollars")) == cents


# --------------------------------------------------------------------------
# time_to_unix_ms
# --------------------------------------------------------------------------

NOV_26_10_UTC = ms(dt.datetime(2026, 11, 26, 10, tzinfo=UTC))


class TestTimeDatetime64:
    @pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
    def test_aware_any_resolution(self, unit: str) -> None:
        column = pd.Series(pd.to_datetime(["2026-11-26T11:00:00+01:00", None], utc=True)).dt.as_unit(unit)
        assert pairs(time_to_unix_ms(column.dt.tz_convert("Asia/Kolkata"), "UTC", now_ms=NOW_MS)) == [
            (NOV_26_10_UTC, None),
            (None, None),
        ]

    def test_sub_millisecond_parts_are_floored(self) -> None:
        column = pd.Series(pd.to_datetime(["2026-11-26T10:00:00.123999999Z"], format="ISO8601")).dt.as_unit("ns")
        assert values(time_to_unix_ms(column, "UTC", now_ms=NOW_MS)) == [NOV_26_10_UTC + 123]

    @pytest.mark.parametrize("unit", ["s", "us", "ns"])
    def test_naive_read_in_timezone(self, unit: str) -> None:
        column = pd.Series(pd.to_datetime(["2026-11-26 11:00:00"])).dt.as_unit(unit)
        assert values(time_to_unix_ms(column, "Europe/Berlin", now_ms=NOW_MS)) == [NOV_26_10_UTC]
        assert values(time_to_unix_ms(column, "UTC", now_ms=NOW_MS)) == [NOV_26_10_UTC + 3_600_000]

    def test_ambiguous_wall_time_is_the_first_occurrence(self) -> None:
        # Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        column = pd.Series(pd.to_datetime(["2026-10-25 02:30:00"]))
        first = ms(dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC))  # 02:30 CEST (+02:00)
        assert values(time_to_unix_ms(column, "Europe/Berlin", now_ms=NOW_MS)) == [first]

    def test_nonexistent_wall_time_shifts_forward(self) -> None:
        # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        column = pd.Series(pd.to_datetime(["2026-03-29 02:30:00"]))
        first_valid = ms(dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC))  # 03:00 CEST
        assert values(time_to_unix_ms(column, "Europe/Berlin", now_ms=NOW_MS)) == [first_valid]

    def test_unknown_timezone(self) -> None:
        with pytest.raises(PagentConfigError):
            time_to_unix_ms(pd.Series(pd.to_datetime(["2026-01-01"])), "Nowhere/Land")


class TestTimeText:
    def test_iso_8601_variants_and_mixed_offsets(self) -> None:
        texts = [
            "2026-11-26 10:00:00",
            "2026-11-26T10:00:00.123Z",
            "2026-11-26T10:00:00+02:00",
            "2026-11-26T10:00:00-0330",
            " 2026-11-26T10:00:00 ",
            None,
        ]
        result = time_to_unix_ms(pd.Series(texts, dtype="str"), "UTC", now_ms=NOW_MS)
        hour = 3_600_000
        assert pairs(result) == [
            (NOV_26_10_UTC, None),
            (NOV_26_10_UTC + 123, None),
            (NOV_26_10_UTC - 2 * hour, None),
            (NOV_26_10_UTC + 3.5 * hour, None),
            (NOV_26_10_UTC, None),
            (None, None),
        ]

    def test_naive_text_is_read_in_timezone_and_offsets_are_kept(self) -> None:
        texts = ["2026-11-26 11:00:00", "2026-11-26T10:00:00Z", "2026-11-26"]
        result = time_to_unix_ms(pd.Series(texts, dtype="str"), "Europe/Berlin", now_ms=NOW_MS)
        assert values(result) == [NOV_26_10_UTC, NOV_26_10_UTC, ms(dt.datetime(2026, 11, 25, 23, tzinfo=UTC))]

    def test_dst_rules_apply_to_text(self) -> None:
        texts = ["2026-10-25 02:30:00", "2026-03-29 02:30:00"]
        result = time_to_unix_ms(pd.Series(texts, dtype="str"), "Europe/Berlin", now_ms=NOW_MS)
        assert values(result) == [
            ms(dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
            ms(dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        ]

    def test_digit_text_is_milliseconds(self) -> None:
        result = time_to_unix_ms(pd.Series([str(NOV_26_10_UTC)], dtype="str"), "UTC", now_ms=NOW_MS)
        assert values(result) == [NOV_26_10_UTC]

    @pytest.mark.parametrize("text", ["garbage", "2026-02-30", "26/11/2026", ""])
    def test_unparseable_is_invalid(self, text: str) -> None:
        for column in (pd.Series([text], dtype="str"), pd.Series([text], dtype=object)):
            result = time_to_unix_ms(column, "UTC", now_ms=NOW_MS)
            assert values(result) == [None]
            assert "is not a timestamp" in reasons(result)[0]


class TestTimeObjectsAndNumbers:
    def test_python_datetimes_in_object_column(self) -> None:
        column = pd.Series(
            [
                dt.datetime(2026, 11, 26, 11, 0),  # naive: Berlin
                dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
                dt.datetime(2026, 11, 26, 5, 0, tzinfo=ZoneInfo("America/New_York")),
                pd.Timestamp("2026-11-26T10:00:00.5Z"),
                "2026-11-26T10:00:00Z",
                None,
            ],
            dtype=object,
        )
        assert values(time_to_unix_ms(column, "Europe/Berlin", now_ms=NOW_MS)) == [
            NOV_26_10_UTC,
            NOV_26_10_UTC,
            NOV_26_10_UTC,
            NOV_26_10_UTC + 500,
            NOV_26_10_UTC,
            None,
        ]

    def test_dst_rules_apply_to_python_datetimes(self) -> None:
        column = pd.Series([dt.datetime(2026, 10, 25, 2, 30), dt.datetime(2026, 3, 29, 2, 30)], dtype=object)
        assert values(time_to_unix_ms(column, "Europe/Berlin", now_ms=NOW_MS)) == [
            ms(dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
            ms(dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        ]

    def test_integers_are_milliseconds(self) -> None:
        assert values(time_to_unix_ms(pd.Series([NOV_26_10_UTC]), "Europe/Berlin", now_ms=NOW_MS)) == [NOV_26_10_UTC]
        nullable = pd.Series(pd.array([NOV_26_10_UTC, None], dtype="Int64"))
        assert pairs(time_to_unix_ms(nullable, "UTC", now_ms=NOW_MS)) == [(NOV_26_10_UTC, None), (None, None)]

    def test_integer_column_with_nulls_arrives_as_float(self) -> None:
        column = pd.Series([NOV_26_10_UTC, None])
        assert column.dtype == np.float64
        assert pairs(time_to_unix_ms(column, "UTC", now_ms=NOW_MS)) == [(NOV_26_10_UTC, None), (None, None)]

    def test_decimal_and_int_objects(self) -> None:
        column = pd.Series([Decimal(NOV_26_10_UTC), np.int64(NOV_26_10_UTC), Decimal("1764151200000.7")], dtype=object)
        assert values(time_to_unix_ms(column, "UTC", now_ms=NOW_MS)) == [NOV_26_10_UTC, NOV_26_10_UTC, 1764151200000]

    def test_seconds_get_a_hint(self) -> None:
        result = time_to_unix_ms(pd.Series([NOV_26_10_UTC // 1000]), "UTC", now_ms=NOW_MS)
        assert values(result) == [None]
        assert "before 2000-01-01" in reasons(result)[0]
        assert "looks like Unix seconds: multiply by 1000" in reasons(result)[0]

    def test_small_numbers_before_2000_without_seconds_hint(self) -> None:
        reason = reasons(time_to_unix_ms(pd.Series([5]), "UTC", now_ms=NOW_MS))[0]
        assert "before 2000-01-01" in reason and "looks like" not in reason

    def test_timestamps_before_2000_are_invalid(self) -> None:
        column = pd.Series(pd.to_datetime(["1999-12-31T23:59:59.999", "2000-01-01T00:00:00"], format="ISO8601"))
        result = time_to_unix_ms(column, "UTC", now_ms=NOW_MS)
        assert values(result) == [None, MIN_MS]
        assert "before 2000-01-01" in reasons(result)[0]

    def test_future_beyond_one_hour_is_invalid(self) -> None:
        result = time_to_unix_ms(pd.Series([NOW_MS + 3_600_000, NOW_MS + 3_600_001]), "UTC", now_ms=NOW_MS)
        assert values(result) == [NOW_MS + 3_600_000, None]
        assert "more than one hour in the future" in reasons(result)[1]

    def test_microseconds_get_a_hint(self) -> None:
        reason = reasons(time_to_unix_ms(pd.Series([NOV_26_10_UTC * 1000]), "UTC", now_ms=NOW_MS))[0]
        assert "looks like Unix microseconds: divide by 1000" in reason

    def test_now_defaults_to_the_clock(self) -> None:
        far = ms(dt.datetime(2200, 1, 1, tzinfo=UTC))
        assert values(time_to_unix_ms(pd.Series([NOV_26_10_UTC - 10**9, far]), "UTC")) == [NOV_26_10_UTC - 10**9, None]

    def test_booleans_infinity_and_other_types_are_invalid(self) -> None:
        for column in (
            pd.Series([True]),
            pd.Series([np.inf]),
            pd.Series([{"a": 1}], dtype=object),
            pd.Series([pd.Timedelta(1)]),
        ):
            result = time_to_unix_ms(column, "UTC", now_ms=NOW_MS)
            assert values(result) == [None] and reasons(result)[0]

    def test_missing_is_none_without_reason(self) -> None:
        column = pd.Series([None, np.nan, pd.NaT], dtype=object)
        assert pairs(time_to_unix_ms(column, "UTC", now_ms=NOW_MS)) == [(None, None)] * 3
        assert pairs(time_to_unix_ms(pd.Series([pd.NaT]), "UTC", now_ms=NOW_MS)) == [(None, None)]


class TestTimeProperties:
    @settings(max_examples=100, deadline=None)
    @given(
        millis=st.lists(st.integers(min_value=MIN_MS, max_value=NOW_MS), min_size=1, max_size=20),
        sub_ms=st.integers(min_value=0, max_value=999_999),
        zone=st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu", "Australia/Lord_Howe"]),
        unit=st.sampled_from(["s", "ms", "us", "ns"]),
    )
    def test_aware_timestamps_round_trip(self, millis: list[int], sub_ms: int, zone: str, unit: str) -> None:
        if unit == "s":
            millis = [m - m % 1000 for m in millis]
        ticks = pd.Series(pd.to_datetime(millis, unit="ms", utc=True)).dt.as_unit("ns")
        # Sub-millisecond noise that the resolution can hold must be floored away.
        noise = {"s": 0, "ms": 0, "us": sub_ms // 1000 * 1000, "ns": sub_ms}[unit]
        column = (ticks + pd.Timedelta(noise, unit="ns")).dt.as_unit(unit).dt.tz_convert(zone)
        assert values(time_to_unix_ms(column, "Asia/Tokyo", now_ms=NOW_MS + 10_000)) == millis

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.datetimes(min_value=dt.datetime(2001, 1, 1), max_value=dt.datetime(2026, 12, 31)), min_size=1),
        st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
    )
    def test_naive_matches_zoneinfo_outside_gaps(self, walls: list[dt.datetime], zone: str) -> None:
        tz = ZoneInfo(zone)

        def exists(wall: dt.datetime) -> bool:
            # zoneinfo keeps a nonexistent time as is; a round trip through UTC moves it.
            return wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall

        walls = [w for w in walls if exists(w)]
        column = pd.Series(pd.to_datetime(walls), dtype="datetime64[us]")
        # fold=0 is zoneinfo's "first occurrence", the documented rule for ambiguous times.
        expected = [ms(w.replace(tzinfo=tz, fold=0)) for w in walls]
        assert values(time_to_unix_ms(column, zone, now_ms=NOW_MS)) == expected


_ISO_LAYOUTS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dt%H:%M", "%Y-%m-%d")
_OFFSETS = ("", "Z", "z", "+05:30", "-0330", "+02", "-00:00")


class TestUniformTextColumns:
    """A column all naive or all of one offset is parsed whole; it must read exactly as text by text."""

    @settings(max_examples=150, deadline=None)
    @given(
        walls=st.lists(
            st.one_of(
                st.datetimes(min_value=dt.datetime(1971, 1, 2), max_value=dt.datetime(2030, 12, 31)),
                st.sampled_from(["garbage", "2026-02-30", "26/11/2026 10:00"]),
            ),
            min_size=1,
            max_size=30,
        ),
        layout=st.sampled_from(_ISO_LAYOUTS),
        offset=st.sampled_from(_OFFSETS),
        zone=st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns"]),
    )
    def test_a_uniform_column_reads_as_text_by_text(
        self, walls: list[dt.datetime | str], layout: str, offset: str, zone: str
    ) -> None:
        if layout == "%Y-%m-%d":
            offset = ""  # a date alone carries no offset
        texts = pd.Series([w if isinstance(w, str) else w.strftime(layout) + offset for w in walls], dtype="str")
        uniform = times_module._parse_uniform_iso(texts)
        whole = times_module._text_by_text_iso_to_utc(texts, ZoneInfo(zone)).to_numpy()
        if not times_module._REFUSES_MIXED_OFFSETS:
            assert uniform is None  # pandas 2: every column text by text
            return
        assert uniform is not None
        fast = times_module._uniform_to_utc(uniform, ZoneInfo(zone)).to_numpy()
        assert np.array_equal(np.isnat(fast), np.isnat(whole))
        assert np.array_equal(
            fast[~np.isnat(fast)].astype("datetime64[us]"), whole[~np.isnat(whole)].astype("datetime64[us]")
        )

    @pytest.mark.parametrize(
        "texts",
        [
            ["2026-11-26 11:00:00", "2026-11-26T10:00:00Z"],  # naive (Berlin) and aware
            ["2026-11-26T11:00:00+01:00", "2026-11-26T12:00:00+02:00"],  # two offsets
            ["2026-11-26T10:00:00Z", "2026-11-26T06:30:00-0330", "garbage"],
        ],
    )
    def test_mixed_offsets_are_read_text_by_text(self, texts: list[str]) -> None:
        column = pd.Series(texts, dtype="str")
        assert times_module._parse_uniform_iso(column) is None
        expected = [NOV_26_10_UTC, NOV_26_10_UTC, None][: len(texts)]
        assert values(time_to_unix_ms(column, "Europe/Berlin", now_ms=NOW_MS)) == expected


# --------------------------------------------------------------------------
# ids_to_strings
# --------------------------------------------------------------------------


class TestIds:
    def test_strings_are_sent_as_stored(self) -> None:
        result = ids_to_strings(pd.Series([" abc ", "x y", None], dtype="str"), field="session_id")
        assert pairs(result) == [(" abc ", None), ("x y", None), (None, None)]

    @pytest.mark.parametrize("dtype", ["str", object])
    def test_empty_and_blank_are_invalid(self, dtype: object) -> None:
        result = ids_to_strings(pd.Series(["", "   ", "\t\n"], dtype=dtype), field="user_id")
        assert values(result) == [None, None, None]
        assert all(r.startswith("user_id is ") for r in reasons(result))
        assert "empty string" in reasons(result)[0] and "whitespace only" in reasons(result)[1]

    def test_integers_never_get_a_trailing_zero(self) -> None:
        assert values(ids_to_strings(pd.Series([123, -5]))) == ["123", "-5"]
        with_nulls = pd.Series([123, None])
        assert with_nulls.dtype == np.float64
        assert values(ids_to_strings(with_nulls)) == ["123", None]
        assert values(ids_to_strings(pd.Series(pd.array([123, None], dtype="Int64")))) == ["123", None]
        assert values(ids_to_strings(pd.Series(pd.array([123.0, None], dtype="Float64")))) == ["123", None]

    def test_non_integral_floats_use_repr(self) -> None:
        assert values(ids_to_strings(pd.Series([2.5, 0.1]))) == ["2.5", "0.1"]

    def test_floats_too_large_to_be_exact_integers_are_invalid(self) -> None:
        result = ids_to_strings(pd.Series([2.0**53, 2.0**53 - 1]))
        assert values(result) == [None, str(2**53 - 1)]
        assert "cast the column to text" in reasons(result)[0]

    def test_object_values(self) -> None:
        column = pd.Series(
            [uuid.UUID(int=5), Decimal("12.00"), Decimal("1.5"), b"ab", np.int64(7), 3.0, None], dtype=object
        )
        assert pairs(ids_to_strings(column)) == [
            ("00000000-0000-0000-0000-000000000005", None),
            ("12", None),
            ("1.5", None),
            ("ab", None),
            ("7", None),
            ("3", None),
            (None, None),
        ]

    def test_unusable_values_are_invalid(self) -> None:
        column = pd.Series([True, float("inf"), {"a": 1}, b"\xff"], dtype=object)
        result = ids_to_strings(column, field="session_id")
        assert values(result) == [None] * 4
        assert all(r and r.startswith("session_id") for r in reasons(result))
        assert values(ids_to_strings(pd.Series([True, False]))) == [None, None]


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------


class TestPropertiesColumn:
    def test_objects_and_arrays_of_objects(self) -> None:
        column = pd.Series(
            ['{"plan": "pro"}', '[{"a": 1}, {"b": 2}]', {"plan": "pro"}, [{"a": 1}], None, "[]"], dtype=object
        )
        assert pairs(properties_to_json_objects(column)) == [
            ({"plan": "pro"}, None),
            ([{"a": 1}, {"b": 2}], None),
            ({"plan": "pro"}, None),
            ([{"a": 1}], None),
            (None, None),
            ([], None),
        ]

    def test_json_text_in_str_column(self) -> None:
        column = pd.Series(['{"a": 1.5}', None], dtype="str")
        assert pairs(properties_to_json_objects(column)) == [({"a": 1.5}, None), (None, None)]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("1", "not an object"),
            ('"text"', "not an object"),
            ("null", "not an object"),
            ("[1, 2]", "element 0"),
            ('[{"a": 1}, "x"]', "element 1"),
            ("{not json", "not valid JSON"),
            ('{"a": NaN}', "not valid JSON"),
            (42, "pagent accepts a JSON object"),
            ([{"a": 1}, 3], "element 1"),
        ],
    )
    def test_invalid_values(self, value: object, expected: str) -> None:
        result = properties_to_json_objects(pd.Series([value], dtype=object))
        assert values(result) == [None]
        assert expected in reasons(result)[0]

    def test_driver_values_are_made_json_safe(self) -> None:
        column = pd.Series(
            [
                {
                    "amount": Decimal("1.50"),
                    "n": Decimal("2"),
                    "at": dt.datetime(2026, 1, 1),
                    "x": np.int64(3),
                    "missing": pd.NA,
                }
            ],
            dtype=object,
        )
        (value,) = values(properties_to_json_objects(column))
        assert value == {"amount": 1.5, "n": 2, "at": "2026-01-01T00:00:00", "x": 3, "missing": None}
        json.dumps(value, allow_nan=False)

    def test_unrepresentable_value_is_invalid(self) -> None:
        result = properties_to_json_objects(pd.Series([{"tags": {1, 2}}], dtype=object))
        assert values(result) == [None] and "set" in reasons(result)[0]


class TestGatherProperties:
    def test_json_safe_values(self) -> None:
        df = pd.DataFrame(
            {
                "country": pd.Series(["DE", None], dtype="str"),
                "items": [3, 4],
                "weight": [1.5, np.nan],
                "paid": pd.to_datetime(["2026-01-01T10:00:00", None]),
                "shipped": pd.Series(pd.to_datetime(["2026-01-01T10:00:00.5", None])).dt.tz_localize("Europe/Berlin"),
                "net": pd.Series([Decimal("10.00"), Decimal("10.5")], dtype=object),
                "gift": pd.array([True, None], dtype="boolean"),
                "count": pd.array([1, None], dtype="Int64"),
                "np": pd.Series([np.int64(1), np.float64(2.5)], dtype=object),
            }
        )
        result = gather_properties(df, list(df.columns))
        assert values(result) == [
            {
                "country": "DE",
                "items": 3,
                "weight": 1.5,
                "paid": "2026-01-01T10:00:00",
                "shipped": "2026-01-01T09:00:00.500Z",
                "net": 10,
                "gift": True,
                "count": 1,
                "np": 1,
            },
            {
                "country": None,
                "items": 4,
                "weight": None,
                "paid": None,
                "shipped": None,
                "net": 10.5,
                "gift": None,
                "count": None,
                "np": 2.5,
            },
        ]
        assert reasons(result) == [None, None]
        for obj in values(result):
            assert all(type(v) in (str, int, float, bool, type(None)) for v in obj.values())
            json.dumps(obj, allow_nan=False)

    def test_only_the_given_columns_in_order(self) -> None:
        df = pd.DataFrame({"a": [1], "b": [2], "c": [3]})
        assert list(values(gather_properties(df, ["c", "a"]))[0]) == ["c", "a"]

    def test_unrepresentable_value_rejects_the_row(self) -> None:
        df = pd.DataFrame({"tags": pd.Series([{1}, None], dtype=object)})
        result = gather_properties(df, ["tags"])
        assert reasons(result)[0] and "'tags'" in reasons(result)[0]
        assert reasons(result)[1] is None


# --------------------------------------------------------------------------
# transform_chunk
# --------------------------------------------------------------------------


class TestTransformChunk:
    def test_typical_chunk(self) -> None:
        df = frame(
            label=pd.Series(["purchase", None], dtype="str"),
            revenue=[19.99, np.nan],
            time=pd.to_datetime(["2026-11-26T10:00:00", "2026-11-26T10:00:01"]),
        )
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert chunk.events == [
            {
                "session_id": "s0",
                "user_id": "u0",
                "conversion_id": "goal-uuid",
                "label": "purchase",
                "revenue": 1999,
                "time": NOV_26_10_UTC,
            },
            {"session_id": "s1", "user_id": "u1", "conversion_id": "goal-uuid", "time": NOV_26_10_UTC + 1000},
        ]
        assert chunk.keys is None and chunk.rejects == [] and chunk.rows == 2
        json.dumps(chunk.events, allow_nan=False)
        assert all(type(e["time"]) is int and type(e.get("revenue", 0)) is int for e in chunk.events)

    def test_field_order_and_types(self) -> None:
        df = frame(label=["l", "l"], revenue=[1, 2], properties=['{"a": 1}', None])
        event = transform_chunk(df, TransformConfig(), now_ms=NOW_MS).events[0]
        assert tuple(event) == EVENT_FIELDS
        assert set(REQUIRED_FIELDS) <= set(event)

    def test_column_mapping(self) -> None:
        df = pd.DataFrame(
            {
                "sid": ["s"],
                "uid": ["u"],
                "goal": ["g"],
                "amount": [Decimal("9.99")],
                "paid_at": ["2026-11-26T10:00:00Z"],
            }
        )
        config = TransformConfig(
            columns={
                "session_id": "sid",
                "user_id": "uid",
                "conversion_id": "goal",
                "revenue": "amount",
                "time": "paid_at",
            }
        )
        assert transform_chunk(df, config, now_ms=NOW_MS).events == [
            {"session_id": "s", "user_id": "u", "conversion_id": "g", "revenue": 999, "time": NOV_26_10_UTC}
        ]

    def test_constants_replace_columns(self) -> None:
        df = frame(label=["old", None], conversion_id=[None, "x"])
        config = TransformConfig(label="purchase", conversion_id="goal-2")
        events = transform_chunk(df, config, now_ms=NOW_MS).events
        assert [(e["label"], e["conversion_id"]) for e in events] == [("purchase", "goal-2")] * 2

    def test_null_required_ids_are_rejected(self) -> None:
        df = frame(
            session_id=pd.Series([None, "s", "s", "s"], dtype="str"),
            user_id=pd.Series(["u", None, "u", "u"], dtype="str"),
            conversion_id=pd.Series(["c", "c", None, "c"], dtype="str"),
        )
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert [e["session_id"] for e in chunk.events] == ["s"]
        assert [(r.row, r.field) for r in chunk.rejects] == [
            ("row 0", "session_id"),
            ("row 1", "user_id"),
            ("row 2", "conversion_id"),
        ]
        conversion_reason = chunk.rejects[2].reason
        assert '_pgnt.variables("label")' in conversion_reason and "Tracking settings" in conversion_reason

    def test_first_problem_wins_in_a_fixed_order(self) -> None:
        df = frame(session_id=[None, None], revenue=["abc", "abc"], time=[None, None])
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert [r.field for r in chunk.rejects] == ["session_id", "session_id"]
        chunk = transform_chunk(frame(revenue=["abc", "1"], time=[None, None]), TransformConfig(), now_ms=NOW_MS)
        assert [r.field for r in chunk.rejects] == ["revenue", "time"]

    def test_missing_time(self) -> None:
        df = frame(time=pd.to_datetime([None, "2026-11-26T10:00:00"]))
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert len(chunk.events) == 1 and chunk.rejects[0].field == "time"
        assert "upload time" in chunk.rejects[0].reason and "conversion time column" in chunk.rejects[0].reason
        relaxed = transform_chunk(df, TransformConfig(require_time=False), now_ms=NOW_MS)
        assert "time" not in relaxed.events[0] and relaxed.events[1]["time"] == NOV_26_10_UTC

    def test_time_column_optional_when_not_required(self) -> None:
        df = frame().drop(columns="time")
        events = transform_chunk(df, TransformConfig(require_time=False), now_ms=NOW_MS).events
        assert all("time" not in e for e in events)

    def test_key_column(self) -> None:
        df = frame(order_id=[1001.0, None, 1003.0], session_id=["a", "b", ""])
        chunk = transform_chunk(df, TransformConfig(key_column="order_id"), now_ms=NOW_MS)
        assert chunk.keys == ["1001"]
        assert [e["session_id"] for e in chunk.events] == ["a"]
        assert chunk.rejects[0] == RowReject(row="row 1", field="order_id", reason=chunk.rejects[0].reason)
        assert "NULL" in chunk.rejects[0].reason
        assert (chunk.rejects[1].row, chunk.rejects[1].field) == ("1003", "session_id")

    def test_empty_key_is_rejected(self) -> None:
        df = frame(order_id=pd.Series(["A-1", " "], dtype="str"))
        chunk = transform_chunk(df, TransformConfig(key_column="order_id"), now_ms=NOW_MS)
        assert chunk.keys == ["A-1"] and [(r.row, r.field) for r in chunk.rejects] == [("row 1", "order_id")]

    def test_duplicate_keys_are_not_checked_here(self) -> None:
        df = frame(order_id=[7, 7])
        assert transform_chunk(df, TransformConfig(key_column="order_id"), now_ms=NOW_MS).keys == ["7", "7"]

    def test_row_offset_numbers_rows_across_chunks(self) -> None:
        df = frame(session_id=["s", None])
        chunk = transform_chunk(df, TransformConfig(), row_offset=5000, now_ms=NOW_MS)
        assert chunk.rejects[0].row == "row 5001"

    def test_index_is_ignored(self) -> None:
        df = frame(session_id=["s", None]).set_axis([40, 7])
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert [e["session_id"] for e in chunk.events] == ["s"] and chunk.rejects[0].row == "row 1"

    def test_revenue_unit_and_timezone_are_used(self) -> None:
        df = frame(revenue=[1999, 5], time=pd.to_datetime(["2026-11-26 11:00:00"] * 2))
        config = TransformConfig(revenue_unit="cents", timezone="Europe/Berlin")
        events = transform_chunk(df, config, now_ms=NOW_MS).events
        assert [(e["revenue"], e["time"]) for e in events] == [(1999, NOV_26_10_UTC), (5, NOV_26_10_UTC)]

    def test_properties_column_and_gathered_columns_merge(self) -> None:
        df = frame(
            properties=pd.Series(['{"plan": "pro", "country": "old"}', None, '[{"a": 1}]'], dtype="str"),
            country=["DE", "FR", "IT"],
            session_id=["a", "b", "c"],
            user_id=["u", "u", "u"],
            conversion_id=["g", "g", "g"],
            time=pd.to_datetime(["2026-11-26T10:00:00"] * 3),
        )
        chunk = transform_chunk(df, TransformConfig(properties_columns=["country"]), now_ms=NOW_MS)
        assert [e["properties"] for e in chunk.events] == [{"plan": "pro", "country": "DE"}, {"country": "FR"}]
        assert len(chunk.rejects) == 1 and chunk.rejects[0].field == "properties"
        assert "array" in chunk.rejects[0].reason and "properties_columns" in chunk.rejects[0].reason

    def test_properties_column_alone(self) -> None:
        df = frame(properties=[[{"a": 1}], "7"])
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert chunk.events[0]["properties"] == [{"a": 1}]
        assert chunk.rejects[0].field == "properties"

    def test_invalid_rows_never_reach_events_and_order_is_kept(self) -> None:
        df = frame(
            session_id=[f"s{i}" for i in range(6)],
            revenue=[1.0, np.inf, 2.0, "x", 3.0, True],
            time=pd.to_datetime(["2026-11-26T10:00:00"] * 6),
        )
        df["revenue"] = df["revenue"].astype(object)
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert [e["session_id"] for e in chunk.events] == ["s0", "s2", "s4"]
        assert [r.row for r in chunk.rejects] == ["row 1", "row 3", "row 5"]
        assert len(chunk.events) + len(chunk.rejects) == chunk.rows

    def test_empty_chunk(self) -> None:
        df = frame().iloc[:0]
        chunk = transform_chunk(df, TransformConfig(key_column="session_id"), now_ms=NOW_MS)
        assert (chunk.events, chunk.keys, chunk.rejects, chunk.rows) == ([], [], [], 0)

    def test_sqlite_style_text_and_object_columns(self) -> None:
        # SQLite hands back text for timestamps and numeric ids; NUMERIC may stay Decimal.
        df = pd.DataFrame(
            {
                "session_id": pd.Series(["s"], dtype=object),
                "user_id": [42],
                "conversion_id": pd.Series(["g"], dtype="str"),
                "revenue": pd.Series([Decimal("2.675")], dtype=object),
                "time": pd.Series(["2026-11-26T12:00:00+02:00"], dtype="str"),
            }
        )
        assert transform_chunk(df, TransformConfig(), now_ms=NOW_MS).events == [
            {"session_id": "s", "user_id": "42", "conversion_id": "g", "revenue": 268, "time": NOV_26_10_UTC}
        ]

    def test_large_chunk_is_consistent(self) -> None:
        size = 20_000
        rng = np.random.default_rng(1)
        df = pd.DataFrame(
            {
                "order_id": np.arange(size),
                "session_id": pd.Series([f"s{i}" for i in range(size)], dtype="str"),
                "user_id": pd.Series([f"u{i % 97}" for i in range(size)], dtype="str"),
                "conversion_id": pd.Series(["g"] * size, dtype="str"),
                "revenue": np.round(rng.uniform(0, 1000, size), 2),
                "time": pd.Series(pd.to_datetime(MIN_MS + rng.integers(0, NOW_MS - MIN_MS, size), unit="ms")),
            }
        )
        chunk = transform_chunk(df, TransformConfig(key_column="order_id"), now_ms=NOW_MS)
        assert len(chunk.events) == size and chunk.keys == [str(i) for i in range(size)]
        assert [e["revenue"] for e in chunk.events] == [reference_cents(repr(x)) for x in df["revenue"]]


# --------------------------------------------------------------------------
# Poison values: what JSON or UTF-8 cannot carry is rejected, never sent or raised
# --------------------------------------------------------------------------


def _deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


class TestPoisonIds:
    @pytest.mark.parametrize("dtype", ["str", object])
    def test_lone_surrogates_are_invalid(self, dtype: object) -> None:
        column = pd.Series(["ok", "x\ud800", "\udcff", "caf\u00e9", "\U0001f600", None], dtype=dtype)
        result = ids_to_strings(column, field="session_id")
        assert values(result) == ["ok", None, None, "caf\u00e9", "\U0001f600", None]
        assert [r is not None for r in reasons(result)] == [False, True, True, False, False, False]
        assert "lone surrogate" in reasons(result)[1] and "\\ud800" in reasons(result)[1]
        for reason in reasons(result):
            (reason or "").encode("utf-8")  # the reason shows the surrogate escaped

    def test_decimal_nan_and_huge_integers_are_invalid_not_null_or_a_crash(self) -> None:
        column = pd.Series([Decimal("NaN"), Decimal("sNaN"), 10**5000, Decimal("1E+5000")], dtype=object)
        result = ids_to_strings(column, field="user_id")
        assert values(result) == [None] * 4
        assert all(r.startswith("user_id ") for r in reasons(result))
        assert "integer of" in reasons(result)[2]

    def test_a_key_with_a_lone_surrogate_rejects_its_row_under_its_number(self) -> None:
        df = frame(order_id=pd.Series(["A-1", "A-\ud800"], dtype="str"))
        chunk = transform_chunk(df, TransformConfig(key_column="order_id"), now_ms=NOW_MS)
        assert chunk.keys == ["A-1"]
        assert [(r.row, r.field) for r in chunk.rejects] == [("row 1", "order_id")]

    @pytest.mark.parametrize("name", ["label", "conversion_id"])
    def test_constants_with_lone_surrogates_are_config_errors(self, name: str) -> None:
        with pytest.raises(PagentConfigError, match="lone surrogate"):
            TransformConfig(**{name: "purchase\ud800"})

    def test_properties_column_names_with_lone_surrogates_are_config_errors(self) -> None:
        with pytest.raises(PagentConfigError, match="lone surrogate"):
            TransformConfig(properties_columns=["ok", "bad\udc00"])


class TestPoisonTimes:
    @pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity")])
    def test_non_finite_decimals_are_invalid_not_null(self, value: Decimal) -> None:
        result = time_to_unix_ms(pd.Series([value, NOV_26_10_UTC], dtype=object), "UTC", now_ms=NOW_MS)
        assert values(result) == [None, NOV_26_10_UTC]
        assert "not a finite number" in reasons(result)[0]

    def test_huge_integers_are_out_of_range_not_a_crash(self) -> None:
        result = time_to_unix_ms(pd.Series([10**5000], dtype=object), "UTC", now_ms=NOW_MS)
        assert values(result) == [None] and "out of range" in reasons(result)[0]


class TestPoisonRevenue:
    def test_nan_text_says_nan_is_not_null(self) -> None:
        result = revenue_to_cents(pd.Series(["NaN", " nan ", "19.99"], dtype="str"), "dollars")
        assert values(result) == [None, None, 1999]
        assert all("not NULL" in r for r in reasons(result)[:2])

    def test_huge_integer_objects_are_too_large_not_a_crash(self) -> None:
        result = revenue_to_cents(pd.Series([10**5000], dtype=object), "cents")
        assert values(result) == [None] and "too large" in reasons(result)[0]

    def test_chunk_reason_names_the_revenue_column(self) -> None:
        df = frame(amount=pd.Series([Decimal("1.00"), Decimal("NaN"), Decimal("Infinity"), None], dtype=object))
        chunk = transform_chunk(df, TransformConfig(columns={"revenue": "amount"}), now_ms=NOW_MS)
        assert [e.get("revenue") for e in chunk.events] == [100, None]  # NULL: sent without revenue
        assert [(r.row, r.field) for r in chunk.rejects] == [("row 1", "revenue"), ("row 2", "revenue")]
        assert all(r.reason.startswith("column 'amount': revenue Decimal(") for r in chunk.rejects)
        assert "not NULL" in chunk.rejects[0].reason


class TestPoisonProperties:
    @pytest.mark.parametrize(
        ("value", "path", "words"),
        [
            ('{"a": "\\ud800"}', "properties.a ", "lone surrogate"),
            ('{"a": "x\ud800"}', "properties.a ", "lone surrogate"),
            ('{"\\udc00": 1}', "properties ", "lone surrogate"),
            ('{"items": [{"price": 1}, {"price": 1e400}]}', "properties.items[1].price ", "not a finite number"),
            ('[{"a": -1e400}]', "properties[0].a ", "inf"),
            ('{"n": 18446744073709551616}', "properties.n ", "64 bits"),
            ('{"a":' * 33 + "1" + "}" * 33, "properties" + ".a" * 32 + " ", "deeper than 32"),
            ('{"a":' * 100_000 + "1" + "}" * 100_000, "properties '", "deeper than 32"),
            ('{"odd key": [NaN]}', "properties '", "not valid JSON"),
            ({"a": float("nan")}, "properties.a ", "not a finite number"),
            ({"a": np.float64("inf")}, "properties.a ", "not a finite number"),
            ({"a": Decimal("NaN")}, "properties.a ", "Decimal('NaN')"),
            ({"a": Decimal("sNaN")}, "properties.a ", "not a finite number"),
            ({"a": Decimal("1E+400")}, "properties.a ", "64 bits"),
            ({"a": b"\xff"}, "properties.a ", "not UTF-8"),
            ({"a": {1, 2}}, "properties.a ", "set"),
            ({"a": 1j}, "properties.a ", "complex"),
            ({"a": object()}, "properties.a ", "object"),
            ({1: "x"}, "properties ", "keys are strings"),
            ({"a": {"b\ud800": 1}}, "properties.a ", "lone surrogate"),
            ({"odd key": [None, "\udfff"]}, "properties['odd key'][1] ", "lone surrogate"),
            (_deep(33), "properties" + ".a" * 32 + " ", "deeper than 32"),
        ],
    )
    def test_rejected_with_the_path(self, value: object, path: str, words: str) -> None:
        result = properties_to_json_objects(pd.Series([value, '{"fine": 1}'], dtype=object))
        assert values(result) == [None, {"fine": 1}]
        reason = reasons(result)[0]
        assert reason.startswith(path) and words in reason, reason
        reason.encode("utf-8")

    def test_a_circular_structure_is_rejected_not_a_recursion_error(self) -> None:
        loop: dict[str, object] = {}
        loop["again"] = loop
        result = properties_to_json_objects(pd.Series([loop], dtype=object))
        assert values(result) == [None] and "deeper than 32" in reasons(result)[0]

    def test_documented_conversions_are_kept(self) -> None:
        column = pd.Series(
            [
                {
                    "at": pd.Timestamp("2026-01-01T10:00:00.5", tz="UTC"),
                    "day": dt.date(2026, 1, 2),
                    "amount": Decimal("1.50"),
                    "whole": Decimal("2.00"),
                    "id": uuid.UUID(int=1),
                    "text": b"caf\xc3\xa9",
                    "np": [np.int64(1), np.float64(2.5), np.bool_(True), np.datetime64("NaT")],
                    "na": pd.NA,
                    "pair": (1, 2),
                    "emoji": "\U0001f600",
                    "deep": _deep(31),
                }
            ],
            dtype=object,
        )
        [value] = values(properties_to_json_objects(column))
        assert value == {
            "at": "2026-01-01T10:00:00.500000+00:00",
            "day": "2026-01-02",
            "amount": 1.5,
            "whole": 2,
            "id": "00000000-0000-0000-0000-000000000001",
            "text": "café",
            "np": [1, 2.5, True, None],
            "na": None,
            "pair": [1, 2],
            "emoji": "\U0001f600",
            "deep": _deep(31),
        }


class TestPoisonGatheredProperties:
    def test_float_column_infinity_is_invalid_and_nan_is_null(self) -> None:
        df = pd.DataFrame({"weight": [1.5, np.inf, np.nan, -np.inf]})
        result = gather_properties(df, ["weight"])
        assert [r is not None for r in reasons(result)] == [False, True, False, True]
        assert values(result)[2] == {"weight": None}
        assert "properties column 'weight' (properties.weight) is inf" in reasons(result)[1]

    @pytest.mark.parametrize("dtype", ["str", object])
    def test_text_with_a_lone_surrogate_is_invalid(self, dtype: object) -> None:
        df = pd.DataFrame({"note": pd.Series(["fine \u4e2d", "ab\udcff", None], dtype=dtype)})
        result = gather_properties(df, ["note"])
        assert [r is not None for r in reasons(result)] == [False, True, False]
        assert "'note'" in reasons(result)[1] and "lone surrogate" in reasons(result)[1]

    def test_object_values_follow_the_nested_rules(self) -> None:
        df = pd.DataFrame(
            {"meta": pd.Series([{"a": [1, float("nan")]}, Decimal("NaN"), np.nan, None, {"ok": True}], dtype=object)}
        )
        result = gather_properties(df, ["meta"])
        assert [r is not None for r in reasons(result)] == [True, True, False, False, False]
        assert reasons(result)[0].startswith("properties column 'meta' (properties.meta.a[1]) is nan")
        assert values(result)[2:] == [{"meta": None}, {"meta": None}, {"meta": {"ok": True}}]


class TestPoisonChunk:
    def test_poison_rows_are_rejected_and_the_rest_go_on(self) -> None:
        df = frame(
            session_id=pd.Series(["s0", "s\ud800", "s2", "s3", "s4"], dtype="str"),
            properties=pd.Series(['{"a": 1}', None, '{"a": 1e400}', '{"a": "\\udfff"}', '{"a": "é"}'], dtype="str"),
            time=pd.to_datetime(["2026-11-26T10:00:00"] * 5),
        )
        chunk = transform_chunk(df, TransformConfig(), row_offset=100, now_ms=NOW_MS)
        assert [e["session_id"] for e in chunk.events] == ["s0", "s4"]
        assert chunk.positions == [0, 4]
        assert [(r.row, r.field) for r in chunk.rejects] == [
            ("row 101", "session_id"),
            ("row 102", "properties"),
            ("row 103", "properties"),
        ]
        for event in chunk.events:
            json.dumps(event, allow_nan=False, ensure_ascii=False).encode("utf-8")

    def test_positions_follow_the_valid_rows(self) -> None:
        df = frame(session_id=[None, "a", None, "b"])
        chunk = transform_chunk(df, TransformConfig(), now_ms=NOW_MS)
        assert chunk.positions == [1, 3] and len(chunk.positions) == len(chunk.events)

    def test_a_mapped_column_is_named_in_the_reason(self) -> None:
        df = frame(paid_at=[None, "2026-11-26T10:00:00Z"]).drop(columns="time")
        chunk = transform_chunk(df, TransformConfig(columns={"time": "paid_at"}), now_ms=NOW_MS)
        assert chunk.rejects[0].reason.startswith("column 'paid_at': time is NULL")


_ascii_or_any = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))


class TestPoisonProperty:
    @settings(max_examples=150, deadline=None)
    @given(st.lists(_ascii_or_any, min_size=1, max_size=30))
    def test_text_ids_are_valid_exactly_when_utf8_and_postgresql_can_hold_them(self, texts: list[str]) -> None:
        def encodable(text: str) -> bool:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
            return True

        result = ids_to_strings(pd.Series(texts, dtype="str"), field="session_id")
        expected = [t if t.strip() and encodable(t) and "\x00" not in t else None for t in texts]
        assert values(result) == expected
