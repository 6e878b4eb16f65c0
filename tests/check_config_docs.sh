#!/usr/bin/env bash
# Fails when a key in a daemon's settings table is missing from
# docs/configuration.md, or the docs list a key the code does not know.
set -euo pipefail
build=${1:-build}
docs=docs/configuration.md
fail=0
for bin in sluice-ingest sluice-worker; do
	keys=$("$build/$bin" --list-keys | cut -f1)
	section=$(awk -v b="## $bin" '$0==b{on=1;next} /^## /{on=0} on' "$docs")
	for k in $keys; do
		if ! grep -q "^| \`$k\` |" <<<"$section"; then
			echo "$docs: $bin key '$k' is not documented" >&2
			fail=1
		fi
	done
	for k in $(grep -o '^| `[a-z_.A-Z]*` |' <<<"$section" | tr -d '|` '); do
		case $k in source.NAME.*) continue ;; esac
		if ! grep -qx "$k" <<<"$keys"; then
			echo "$docs: documents '$k' for $bin but the code has no such key" >&2
			fail=1
		fi
	done
done
if [ $fail -eq 0 ]; then echo "config docs: every key documented"; fi
exit $fail
