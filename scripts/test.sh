#!/usr/bin/env bash
# Run the test suite: start a throwaway PostgreSQL for the storage tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
eval "$(scripts/test-postgres.sh)"
exec "$VENV/bin/python" -m pytest "$@"
