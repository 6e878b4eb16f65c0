#!/usr/bin/env bash
# Fetch and build the peers that bench/peers.py measures sluice against,
# from Maven Central, into a local cache:
#
#   ${SLUICE_CACHE:-$HOME/.cache/sluice}/peers-<hash>/
#     camel/libs/      Apache Camel (camel/pom.xml) and its dependencies
#     camel/classes/   the route, bench/peers/camel/src (javac)
#     connect/libs/    Kafka Connect's runtime (connect/pom.xml, profile runtime)
#     connect/plugins/debezium-connector-jdbc/   the sink (profile plugin)
#
# <hash> covers the poms and the route's source, so a change rebuilds and a
# second run is instant. Each part is fetched into a temporary directory
# that is renamed into place once complete.
#
# Usage: bench/peers/fetch.sh [--print-dir]
#   --print-dir   print the cache directory on stdout (after fetching)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "peers/fetch.sh: error: $*" >&2; exit 1; }

print_dir=0
for arg in "$@"; do
	case "$arg" in
	--print-dir) print_dir=1 ;;
	-h | --help)
		awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*) die "unknown argument: $arg (usage: fetch.sh [--print-dir])" ;;
	esac
done

sources=("$here/camel/pom.xml" "$here/connect/pom.xml")
mapfile -t java < <(find "$here/camel/src" -name '*.java' | sort)
sources+=("${java[@]}")
hash="$(cat "${sources[@]}" | sha256sum | cut -c1-12)"
cache_root="${SLUICE_CACHE:-${HOME:?HOME is not set}/.cache/sluice}"
base="$cache_root/peers-$hash"

# copy_deps POM DEST [MAVEN ARGS...]: the runtime dependencies of POM into DEST.
copy_deps() {
	local pom=$1 dest=$2 log
	shift 2
	log="$dest.mvn.log"
	mkdir -p "$(dirname "$dest")"
	if ! mvn -q -B -f "$pom" "$@" dependency:copy-dependencies \
		-DoutputDirectory="$dest" -DincludeScope=runtime >"$log" 2>&1; then
		tail -n 40 "$log" >&2 || true
		die "maven could not fetch the dependencies of $pom (log above)"
	fi
	rm -f "$log"
}

# part NAME: build NAME (camel, connect) into $base/NAME unless it is there.
part() {
	local name=$1 tmp
	[[ -f "$base/$name/.complete" ]] && return 0
	tmp="$(mktemp -d "$base/$name.tmp.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	case "$name" in
	camel)
		copy_deps "$here/camel/pom.xml" "$tmp/libs"
		mkdir -p "$tmp/classes"
		javac --release 17 -d "$tmp/classes" -cp "$tmp/libs/*" "${java[@]}" ||
			die "javac failed on the Camel route"
		;;
	connect)
		copy_deps "$here/connect/pom.xml" "$tmp/libs"
		copy_deps "$here/connect/pom.xml" "$tmp/plugins/debezium-connector-jdbc" \
			-P '!runtime,plugin'
		compgen -G "$tmp/libs/connect-runtime-*.jar" >/dev/null ||
			die "connect-runtime missing after maven"
		compgen -G "$tmp/plugins/debezium-connector-jdbc/debezium-connector-jdbc-*.jar" >/dev/null ||
			die "debezium-connector-jdbc missing after maven"
		;;
	esac
	touch "$tmp/.complete"
	rm -rf "${base:?}/$name"
	mv -T "$tmp" "$base/$name" || die "cannot move $name into $base"
	trap - EXIT
}

if [[ ! -f "$base/camel/.complete" || ! -f "$base/connect/.complete" ]]; then
	command -v mvn >/dev/null 2>&1 || die "mvn not found (run deploy/install-deps.sh)"
	command -v javac >/dev/null 2>&1 || die "javac not found (run deploy/install-deps.sh)"
	mkdir -p "$base" || die "cannot create cache directory $base"
	# Serialize concurrent fetches of the same cache.
	exec 9>"$base/.lock"
	flock 9 || die "cannot lock $base/.lock"
	part camel
	part connect
	exec 9>&-
fi

if [[ "$print_dir" == 1 ]]; then
	printf '%s\n' "$base"
fi
