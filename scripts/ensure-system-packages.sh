#!/usr/bin/env bash
# System packages the test suite needs, installed when missing (idempotent, quiet).
#
# * MariaDB client headers: Airflow's MySQL provider (used by the MariaDB tests)
#   depends on mysqlclient, which compiles against them. Required: without them
#   `pip install -e '.[test]'` fails, so this script fails when it cannot install them.
# * Chromium (Debian's `chromium`, /usr/bin/chromium): drives the connection-form
#   test in Airflow's web UI (tests/test_connection_form_browser.py). Optional
#   here: when it cannot be installed, that test skips (and fails in CI, where
#   PAGENT_REQUIRE_SERVICES=1), so this script only says what to install.
# * Redis (Debian's `redis-server`, /usr/bin/redis-server): the Celery broker of
#   tests/test_celery_scale_out.py, which starts its own server on a free port
#   (never the one on 6379). Optional in the same way as Chromium.
#
# Installs only as root with apt-get; elsewhere it prints what to install.
set -euo pipefail

CHROMIUM="${PAGENT_CHROMIUM:-/usr/bin/chromium}"
REDIS_SERVER="${PAGENT_REDIS_SERVER:-/usr/bin/redis-server}"

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

os_id() { (. /etc/os-release 2>/dev/null && echo "${ID:-}") || true; }

apt_updated=0
apt_install() {  # quiet; apt's output is shown only when it fails
    local log rc=0
    log="$(mktemp)"
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq >"$log" 2>&1 || rc=$?
        apt_updated=1
    fi
    if [ "$rc" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$log" 2>&1 || rc=$?
    fi
    [ "$rc" = 0 ] || cat "$log" >&2
    rm -f "$log"
    return "$rc"
}

status=0

# --- MariaDB client headers (required)
if ! command -v mariadb_config >/dev/null 2>&1 && ! command -v mysql_config >/dev/null 2>&1; then
    if can_apt; then
        echo "installing the MariaDB client headers (libmariadb-dev) for mysqlclient" >&2
        apt_install libmariadb-dev pkg-config
    else
        echo "mysqlclient needs the MariaDB/MySQL client headers: install libmariadb-dev (Debian/Ubuntu)" \
             "or mysql-client (Homebrew), then run make test again" >&2
        status=1
    fi
fi

# --- Chromium for the browser test (optional)
if [ ! -x "$CHROMIUM" ]; then
    # Only Debian's package is a real browser; Ubuntu's `chromium` is a snap shim.
    if can_apt && [ "$(os_id)" = debian ] && [ "$CHROMIUM" = /usr/bin/chromium ]; then
        echo "installing Debian's chromium for the connection-form browser test" >&2
        if ! apt_install chromium; then
            echo "could not install chromium: the browser test will skip (fail in CI)" >&2
        fi
    else
        echo "note: no Chromium at $CHROMIUM, so the connection-form browser test will skip." \
             "Install it (Debian: apt-get install chromium) or point PAGENT_CHROMIUM at a Chromium binary." >&2
    fi
fi

# --- redis-server for the CeleryExecutor test (optional)
if [ ! -x "$REDIS_SERVER" ]; then
    if can_apt && [ "$REDIS_SERVER" = /usr/bin/redis-server ]; then
        echo "installing redis-server, the Celery broker of the CeleryExecutor test" >&2
        if ! apt_install redis-server; then
            echo "could not install redis-server: the CeleryExecutor test will skip (fail in CI)" >&2
        fi
    else
        echo "note: no redis-server at $REDIS_SERVER, so the CeleryExecutor test will skip." \
             "Install it (Debian/Ubuntu: apt-get install redis-server) or point PAGENT_REDIS_SERVER at one." >&2
    fi
fi

exit "$status"
