#!/usr/bin/env bash
# `make run`: migrate, load demo data, then run everything in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
instance="${INSTANCE_PATH:-instance}"
mkdir -p "$instance"
# SECRET_KEY comes from the environment; without one, the portal and every `flask billing`
# command read the instance folder's secret_key, made here once (mode 600) so sessions
# survive restarts.
if [ -z "${SECRET_KEY:-}" ] && [ ! -s "$instance/secret_key" ]; then
  (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_hex(32))' > "$instance/secret_key")
fi
export FLASK_APP=wsgi
export PUBLIC_URL="${PUBLIC_URL:-http://127.0.0.1:${PORT:-5000}}"
.venv/bin/flask db upgrade
banner="$(.venv/bin/flask billing seed-demo)"
exec .venv/bin/flask billing serve --port "${PORT:-5000}" --banner "$banner"
