#!/usr/bin/env bash
# Airflow's MySQL provider (used by the MariaDB tests) depends on mysqlclient,
# which compiles against the MariaDB client headers. Install them when missing.
set -euo pipefail
if command -v mariadb_config >/dev/null 2>&1 || command -v mysql_config >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing the MariaDB client headers (libmariadb-dev) for mysqlclient" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmariadb-dev pkg-config >/dev/null
    exit 0
fi
echo "mysqlclient needs the MariaDB/MySQL client headers: install libmariadb-dev (Debian/Ubuntu)" \
     "or mysql-client (Homebrew), then run make test again" >&2
exit 1
