#!/usr/bin/env bash
# Fetches Beam's Flink and Spark job-server jars (for `curate run --engine flink-local|spark-local`) with
# Maven into ~/.m2, where pipeline/engine/runners.py finds them; Beam's own run-time downloader is never used.
# The jars match the installed apache-beam.  Never fails the set-up: a jar Maven cannot get is reported,
# and the tests that need it skip saying so.  Arguments go to mvn (e.g. -U).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if ! command -v mvn >/dev/null 2>&1; then
  echo "fetch_job_servers: no mvn on PATH: Flink/Spark job servers not fetched (their tests will skip)"
  exit 0
fi
# One line per engine: <groupId:artifactId:version> <where engines.py looks for the jar>
"$PYTHON" -m pipeline.engine.runners | while read -r artifact jar; do
  if [ -f "$jar" ]; then
    echo "fetch_job_servers: have $artifact"
  # Maven remembers a failed look-up for a day (so a set-up without the jar stays quick): pass -U to ask again.
  elif timeout 900 mvn -B -q "$@" dependency:get -Dartifact="$artifact" -Dtransitive=false >/dev/null 2>&1 \
      && [ -f "$jar" ]; then
    echo "fetch_job_servers: fetched $artifact"
  else
    echo "fetch_job_servers: Maven could not get $artifact: runs with its engine are refused, its tests skip"
  fi
done
