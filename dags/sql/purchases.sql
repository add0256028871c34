-- One data interval of purchases. The interval bounds are bound parameters in
-- SQLAlchemy's colon-name style, which works on SQLite, PostgreSQL and MariaDB alike.
SELECT
    order_id,
    session_id,
    user_id,
    conversion_id,
    label,
    amount_usd,
    converted_at,
    channel,
    coupon
FROM conversions
WHERE converted_at >= :start
  AND converted_at < :end
ORDER BY converted_at, order_id
