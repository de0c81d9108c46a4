#!/usr/bin/env bash
# deps.sh installs what the project's tests need and is not part of the Go
# toolchain: the PostgreSQL server binaries (initdb, pg_ctl, postgres,
# pgbench) used by internal/pgtest, curl, systemd-analyze (from
# Debian's systemd package) used by the installer's unit tests, and headless
# Chromium with its driver (Debian's chromium and chromium-driver) for the
# dashboard's browser test (test/dashboard_test.go), and iptables (Debian's
# iptables) with which the fault suite (test/faults) blocks UDP and makes
# blackholes inside its network namespaces, and strace (Debian's strace),
# with which the agent's crash tests kill an enrolment, a renewal or a
# self-update at each change of its files. It is idempotent and
# prints nothing when everything is already present. It works from any
# directory.
#
# Environment:
#   PGBIN_SEARCH_DIRS  space-separated directories (globs allowed) searched for
#                      the PostgreSQL binaries after PATH; default
#                      "/usr/lib/postgresql/*/bin" (Debian's layout).
#   DEPS_SKIP_PATH=1   do not look for the PostgreSQL binaries on PATH.
#   DEPS_DRY_RUN=1     print what would be installed, install nothing.
#   DEPS_BENCH=1       also what scripts/bench/run needs: proxychains4, which
#                      runs pgbench through the relay's SOCKS5 door.
set -euo pipefail

PG_BINARIES=(initdb pg_ctl postgres pgbench)
PGBIN_SEARCH_DIRS=${PGBIN_SEARCH_DIRS:-/usr/lib/postgresql/*/bin}

log() { printf 'deps.sh: %s\n' "$*" >&2; }

# has_all_pg_binaries DIR: DIR holds every PostgreSQL binary we need.
has_all_pg_binaries() {
	local dir=$1 b
	for b in "${PG_BINARIES[@]}"; do
		[[ -x "$dir/$b" && ! -d "$dir/$b" ]] || return 1
	done
}

# find_pg_bindir prints the first directory holding all PostgreSQL binaries:
# the real directory of an initdb on PATH, then the search directories, newest
# major version first.
find_pg_bindir() {
	local p dir
	if [[ ${DEPS_SKIP_PATH:-0} != 1 ]] && p=$(command -v initdb 2>/dev/null); then
		dir=$(dirname -- "$(readlink -f -- "$p")")
		if has_all_pg_binaries "$dir"; then
			printf '%s\n' "$dir"
			return 0
		fi
	fi
	local -a dirs=()
	# Unquoted on purpose: the search dirs may be globs.
	# shellcheck disable=SC2206
	dirs=($PGBIN_SEARCH_DIRS)
	while IFS= read -r dir; do
		[[ -n $dir ]] || continue
		if has_all_pg_binaries "$dir"; then
			printf '%s\n' "$dir"
			return 0
		fi
	done < <(printf '%s\n' "${dirs[@]}" | sort -rV)
	return 1
}

SUDO=()
need_root() {
	if [[ $(id -u) -ne 0 ]]; then
		if command -v sudo >/dev/null 2>&1; then
			SUDO=(sudo)
		else
			log "not root and sudo is not installed: cannot install $*"
			exit 1
		fi
	fi
}

APT_UPDATED=0
apt_install() {
	if [[ ${DEPS_DRY_RUN:-0} == 1 ]]; then
		log "would install: $*"
		return 0
	fi
	need_root "$@"
	if [[ $APT_UPDATED == 0 ]]; then
		log "apt-get update"
		"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
		APT_UPDATED=1
	fi
	log "installing: $*"
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "$@" >&2
}

missing=()
if ! find_pg_bindir >/dev/null; then
	missing+=(postgresql postgresql-contrib)
fi
if ! command -v curl >/dev/null 2>&1; then
	missing+=(curl)
fi
# systemd-analyze checks the agent's unit (installer tests); it works
# without systemd running as PID 1.
if ! command -v systemd-analyze >/dev/null 2>&1; then
	missing+=(systemd)
fi
if ! command -v chromium >/dev/null 2>&1; then
	missing+=(chromium)
fi
if ! command -v chromedriver >/dev/null 2>&1; then
	missing+=(chromium-driver)
fi
# strace watches the system calls of an atomic write (atomicfile's
# TestWriteSyncsDir: the directory is synced after the rename), and kills
# the agent's enrolment, renewal and self-update at each change of their
# files (agent/crash_linux_test.go).
if ! command -v strace >/dev/null 2>&1; then
	missing+=(strace)
fi
# iptables is in /usr/sbin, which a non-root PATH may lack.
if ! PATH=$PATH:/usr/sbin:/sbin command -v iptables >/dev/null 2>&1; then
	missing+=(iptables)
fi
if [[ ${DEPS_BENCH:-0} == 1 ]] && ! command -v proxychains4 >/dev/null 2>&1; then
	missing+=(proxychains4)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
	exit 0
fi

apt_install "${missing[@]}"
if [[ ${DEPS_DRY_RUN:-0} == 1 ]]; then
	exit 0
fi

if ! dir=$(find_pg_bindir); then
	log "PostgreSQL binaries (${PG_BINARIES[*]}) still not found after installing"
	exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
	log "curl still not found after installing"
	exit 1
fi
if [[ ${DEPS_BENCH:-0} == 1 ]] && ! command -v proxychains4 >/dev/null 2>&1; then
	log "proxychains4 still not found after installing"
	exit 1
fi
if ! PATH=$PATH:/usr/sbin:/sbin command -v iptables >/dev/null 2>&1; then
	log "iptables still not found after installing"
	exit 1
fi
for b in chromium chromedriver strace; do
	if ! command -v "$b" >/dev/null 2>&1; then
		log "$b still not found after installing"
		exit 1
	fi
done
log "PostgreSQL binaries in $dir"
