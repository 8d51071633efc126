#!/usr/bin/env bash
# The whole test suite, installs included: lint, types, unit tests, then real-engine and real-mount tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/mypy imagefs
exec .venv/bin/pytest -q "$@"
