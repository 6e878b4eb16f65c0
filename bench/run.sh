#!/usr/bin/env bash
# make bench: the benchmarks, with the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/bench.py "$@"
