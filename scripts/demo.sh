#!/usr/bin/env bash
# Set up (first time) and run the bundled sample end to end: curate demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/curate demo --output "${1:-demo-output}"
