#!/usr/bin/env bash
# make bench: the benchmarks, with the project's venv.
#   bench/run.sh [ARGS]           bench/bench.py ARGS, then bench/contexts.py
#                                 and bench/chat.py (both skipped when ARGS
#                                 pick one with --only, e.g. --only peers)
#   bench/run.sh contexts [ARGS]  only bench/contexts.py ARGS
#   bench/run.sh chat [ARGS]      only bench/chat.py ARGS
#   bench/run.sh invalidate [ARGS] only bench/invalidate.py ARGS
#   bench/run.sh stuck [ARGS]     only bench/stuck.py ARGS
#   bench/run.sh compose [ARGS]   only bench/compose.py ARGS
# A full run ends with bench/summary.py: one table of every figure next to
# its baseline, as bench/out/summary.json and summary.png (matplotlib is
# installed into the venv for it when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
case "${1:-}" in
contexts | chat | invalidate | stuck | compose)
	name=$1
	shift
	exec "$py" "bench/$name.py" "$@"
	;;
esac
"$py" bench/bench.py "$@"
case " $* " in
*" --only"*) exit 0 ;;
esac
"$py" bench/contexts.py
"$py" bench/chat.py
"$py" bench/invalidate.py
"$py" bench/stuck.py
"$py" bench/compose.py
"$py" -c 'import matplotlib' 2>/dev/null || "$py" -m pip install -q matplotlib ||
	echo "bench: matplotlib not installed; the summary has no chart" >&2
exec "$py" bench/summary.py
