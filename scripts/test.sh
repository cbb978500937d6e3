#!/usr/bin/env bash
# Install the project with its dev extras into .venv (if needed) and run the test suite.
set -euo pipefail
source "$(dirname "$0")/_venv.sh" "dev,text"
exec python -m pytest "$@"
