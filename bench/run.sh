#!/usr/bin/env bash
# make bench: the benchmarks, with the project's venv.
#   bench/run.sh [ARGS]           bench/bench.py ARGS, then bench/contexts.py
#                                 (skipped when ARGS pick one with --only)
#   bench/run.sh contexts [ARGS]  only bench/contexts.py ARGS
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if [ "${1:-}" = contexts ]; then
	shift
	exec "$py" bench/contexts.py "$@"
fi
"$py" bench/bench.py "$@"
case " $* " in
*" --only"*) exit 0 ;;
esac
exec "$py" bench/contexts.py
