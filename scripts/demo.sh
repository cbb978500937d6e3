#!/usr/bin/env bash
# The main job: install into .venv (if needed) and run the compression demo.
set -euo pipefail
source "$(dirname "$0")/_venv.sh" ""
exec jaxcompress demo "$@"
