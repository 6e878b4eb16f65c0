#!/usr/bin/env bash
# Fails when a daemon's --help and its man page (docs/man/BIN.1) disagree:
# every option (-x, --long) and every command (the word after the program's
# name on a usage line, `[consume]` included) that --help shows must be
# documented in the page, and every option the page documents must be in
# --help. The page documents an option in the head of a tagged paragraph
# (the line after `.TP`) and a command as a subsection (`.SS NAME`).
# Also fails when `man -l` warns about the page.
#
# Usage: tests/check_man.sh [BUILD_DIR]   (default build)
set -euo pipefail
build=${1:-build}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fail=0

# Roff to plain text for the lines we read: fonts off, \- to -, quotes gone.
unroff() {
	sed -E -e 's/\\f[BIRP]//g' -e 's/\\f\(..//g' -e 's/\\-/-/g' \
		-e 's/\\&//g' -e 's/^\.(B|I|BR|RB|BI|IB|IR|RI) +//' -e 's/"//g'
}

# Options in a text: long ones anywhere, short ones standing alone
# ("-c FILE", "-c,", "[-c]", "| -V").
options_in() {
	local text
	text=$(cat)
	{ grep -oE -- '(^|[^A-Za-z0-9_-])--[a-z][a-z0-9-]*' <<<"$text" || true; } |
		sed -E 's/^[^-]+//'
	{ grep -oE -- '(^|[][ ,|(])-[A-Za-z]([], |)]|$)' <<<"$text" || true; } |
		grep -oE -- '-[A-Za-z]' || true
}

for bin in sluice-ingest sluice-worker; do
	page="$repo/docs/man/$bin.1"
	if [[ ! -f "$page" ]]; then
		echo "check_man: $page is missing" >&2
		fail=1
		continue
	fi
	help=$("$build/$bin" --help)

	help_opts=$(options_in <<<"$help" | sort -u)
	help_cmds=$(sed -nE "s/^(usage:)?[[:space:]]*$bin[[:space:]]+\[?([a-z][a-z-]*)\]?([[:space:]].*)?$/\2/p" \
		<<<"$help" | sort -u || true)

	tp_heads=$(awk '/^\.TP/{getline; print}' "$page" | unroff)
	man_opts=$(options_in <<<"$tp_heads" | sort -u)
	man_cmds=$(sed -nE 's/^\.SS +"?([a-z][a-z-]*)"? *$/\1/p' "$page" | sort -u || true)

	for o in $help_opts; do
		grep -qxF -- "$o" <<<"$man_opts" || {
			echo "check_man: $bin --help shows $o but $page does not document it" >&2
			fail=1
		}
	done
	for c in $help_cmds; do
		grep -qxF -- "$c" <<<"$man_cmds" || {
			echo "check_man: $bin --help shows the command '$c' but $page has no .SS $c" >&2
			fail=1
		}
	done
	for o in $man_opts; do
		grep -qxF -- "$o" <<<"$help_opts" || {
			echo "check_man: $page documents $o but $bin --help does not show it" >&2
			fail=1
		}
	done
	for c in $man_cmds; do
		grep -qxF -- "$c" <<<"$help_cmds" || {
			echo "check_man: $page documents the command '$c' but $bin --help does not show it" >&2
			fail=1
		}
	done

	if command -v man >/dev/null 2>&1; then
		warn=$(LC_ALL=C.UTF-8 MANWIDTH=80 man -l --warnings=w "$page" 2>&1 >/dev/null || true)
		if [[ -n "$warn" ]]; then
			printf 'check_man: man -l %s warns:\n%s\n' "$page" "$warn" >&2
			fail=1
		fi
	fi
done
if [[ $fail -eq 0 ]]; then echo "man pages: every option and command documented"; fi
exit $fail
