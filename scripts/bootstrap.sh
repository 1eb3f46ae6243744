#!/usr/bin/env bash
# Creates .venv and installs the project with every extra the demo and tests need.
# Idempotent: skips the install when pyproject.toml and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.curate-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # constraints.txt pins every transitive package to the versions we test with.
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[models,train,test,gcp]"
  # Beam's Flink and Spark job-server jars, with Maven into ~/.m2 (never fails the set-up). Only with an
  # install: each look-up starts a JVM; `bash scripts/fetch_job_servers.sh -U` asks again at any time.
  PYTHON=.venv/bin/python bash scripts/fetch_job_servers.sh
  echo "$want" > "$stamp"
fi
