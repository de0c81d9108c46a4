#!/bin/sh
# install.sh installs the Tether agent on Linux as a systemd service, with
# one command on the tenant's machine:
#
#   curl -fsSk https://RELAY:7444/install.sh -o install.sh
#   sha256sum install.sh      # compare with the SHA-256 published with the release
#   sudo sh install.sh --relay RELAY:7443 --service db=10.0.0.5:5432
#
# The join token is read from $TETHER_JOIN_TOKEN, from --token-file FILE, or
# (without either) from the terminal without echo; it never appears on a
# command line. The script downloads only from the relay, and trusts a
# download only after checking the relay's CA certificate against the
# fingerprint inside the join token: the agent binary is fetched over TLS
# with that CA as the only trusted root, so neither the network nor another
# server can substitute it.
#
# Steps: check the relay's CA; download the agent for this machine; enrol
# (tether-agent enroll, token on standard input); write the config; run
# tether-agent install (copies the agent to /opt/tether-agent/bin, creates
# the tether-agent user, the hardened systemd unit and the state directory)
# and tether-agent start.
#
# Behind an HTTP proxy: set https_proxy (or HTTPS_PROXY, and no_proxy or
# NO_PROXY) for the script, as for curl. The downloads and the enrolment go
# through it, and a config the script writes records it as proxy: (and
# no_proxy:), since the service does not see this shell's environment.
# An https:// proxy whose certificate is from a private CA (not in this
# machine's trust store): add --proxy-ca FILE, the CA's certificate (PEM).
# curl and the enrolment trust it for the proxy only, and the config
# records a copy of it, /etc/tether-agent/proxy-ca.pem, as proxy_ca_file:.
#
# Options:
#   --relay HOST:PORT      the relay's agent address (required)
#   --download URL         where the relay serves downloads (default https://HOST:7444)
#   --service NAME=ADDR    allow the agent to reach ADDR as service NAME (repeatable)
#   --token-file FILE      read the join token from FILE ("-" for standard input)
#   --proxy-ca FILE        the CA certificate(s) (PEM) of an https:// proxy in https_proxy
#   --force                enrol again even if the machine already has an identity
#   --root DIR             write the files under DIR and stop before the
#                          service manager (needs --no-service; for tests and images)
#   --no-service           do everything but tether-agent install/start
set -eu

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

relay='' download='' token_file='' force='' root='' no_service='' services='' proxy_ca=''
while [ $# -gt 0 ]; do
	case $1 in
	--relay) relay=${2:?--relay needs HOST:PORT}; shift 2 ;;
	--download) download=${2:?--download needs a URL}; shift 2 ;;
	--service) services="$services
${2:?--service needs NAME=HOST:PORT}"; shift 2 ;;
	--token-file) token_file=${2:?--token-file needs a file}; shift 2 ;;
	--proxy-ca) proxy_ca=${2:?--proxy-ca needs a file}; shift 2 ;;
	--force) force=--force; shift ;;
	--root) root=${2:?--root needs a directory}; shift 2 ;;
	--no-service) no_service=1; shift ;;
	-h|--help) sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
[ -n "$relay" ] || die "--relay HOST:PORT is required"
[ -z "$root" ] || [ -n "$no_service" ] || die "--root needs --no-service"
[ -n "$no_service" ] || [ "$(id -u)" = 0 ] || die "run as root (sudo sh install.sh …), or with --no-service"
# The proxy, as curl and the agent take it from the environment.
proxy_var='' proxy_val=''
for v in https_proxy HTTPS_PROXY; do
	eval "val=\${$v:-}"
	if [ -n "$val" ]; then proxy_var=$v proxy_val=$val; break; fi
done
if [ -n "$proxy_ca" ]; then
	[ -f "$proxy_ca" ] && [ -r "$proxy_ca" ] || die "--proxy-ca $proxy_ca: not a readable file"
	case $proxy_val in
	https://*) ;;
	'') die "--proxy-ca is for an https:// proxy: set https_proxy (or HTTPS_PROXY) to its URL" ;;
	*) die "--proxy-ca is for an https:// proxy, and \$$proxy_var is not one (the agent speaks no TLS to an http:// proxy)" ;;
	esac
fi
for tool in curl base64 od tr; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
if command -v sha256sum >/dev/null 2>&1; then
	sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
	sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
	die "sha256sum is required"
fi

# The join token, from the environment, a file or the terminal.
token=${TETHER_JOIN_TOKEN:-}
unset TETHER_JOIN_TOKEN
if [ -z "$token" ] && [ -n "$token_file" ]; then
	if [ "$token_file" = - ]; then
		IFS= read -r token || true
	else
		IFS= read -r token <"$token_file" || true
	fi
fi
if [ -z "$token" ] && [ -r /dev/tty ]; then
	printf 'Join token: ' >/dev/tty
	stty -echo </dev/tty 2>/dev/null || true
	IFS= read -r token </dev/tty || true
	stty echo </dev/tty 2>/dev/null || true
	printf '\n' >/dev/tty
fi
token=$(printf '%s' "$token" | tr -d ' \r\n\t')
[ -n "$token" ] || die "no join token: set TETHER_JOIN_TOKEN, use --token-file FILE, or type it when asked"

# The CA fingerprint inside the token: "tjt1_" + base64url of version (1
# byte), id (8), secret (32), CA SHA-256 (32). See protocol/token.go.
case $token in
tjt1_*) ;;
*) die "that is not a join token (it should start with tjt1_)" ;;
esac
body=${token#tjt1_}
case $body in
*[!A-Za-z0-9_-]*) die "the join token is damaged" ;;
esac
[ ${#body} -eq 98 ] || die "the join token is damaged (wrong length)"
raw=$(printf '%s==' "$body" | tr '_-' '/+' | base64 -d 2>/dev/null | od -An -tx1 -v | tr -d ' \n') ||
	die "the join token is damaged"
[ ${#raw} -eq 146 ] || die "the join token is damaged"
[ "${raw%"${raw#??}"}" = 01 ] || die "join token version ${raw%"${raw#??}"} is not supported by this script"
want_fp=${raw#"$(printf '%.82s' "$raw")"}

# The allowlist, checked before anything is downloaded.
service_lines=''
old_ifs=$IFS
IFS='
'
set -f
for s in $services; do
	sname=${s%%=*}
	saddr=${s#*=}
	case $s in
	*=*) ;;
	*) die "--service $s: want NAME=HOST:PORT" ;;
	esac
	case $sname$saddr in
	'' | *[!A-Za-z0-9._:\[\]-]*) die "--service $s: unexpected character" ;;
	esac
	service_lines="$service_lines  $sname: \"$saddr\"
"
done
IFS=$old_ifs
set +f
case $relay in
*[!A-Za-z0-9._:\[\]-]*) die "--relay $relay: unexpected character" ;;
esac
case $root in
*[\"\\]*) die "--root: no quotes or backslashes, please" ;;
esac

# Where downloads come from.
relay_host=${relay%:*}
case $relay_host in
\[*\]) ;;
*:*) die "--relay: write an IPv6 address as [ADDR]:PORT" ;;
esac
[ -n "$download" ] || download="https://$relay_host:7444"
case $download in
https://*) ;;
*) die "--download must be an https:// URL" ;;
esac
hostport=${download#https://}
hostport=${hostport%%/*}
path_prefix=${download#https://"$hostport"}
path_prefix=${path_prefix%/}
case $hostport in
*\]:*|[!\[]*:*) dl_port=${hostport##*:}; dl_host=${hostport%:*} ;;
*) dl_port=443; dl_host=$hostport ;;
esac
dl_host=${dl_host#\[}
dl_host=${dl_host%\]}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# curl, trusting --proxy-ca for the proxy (only) when given.
pcurl() {
	if [ -n "$proxy_ca" ]; then
		curl --proxy-cacert "$proxy_ca" "$@"
	else
		curl "$@"
	fi
}

# 1. The relay's CA, checked against the token. Fetched without TLS
# verification (nothing is trusted yet); only the fingerprint check makes
# it trustworthy.
pcurl -fsS --proto '=https' -k --max-time 30 --max-filesize 65536 -o "$tmp/ca.der" "$download/ca.der" ||
	die "could not fetch the relay's CA from $download/ca.der"
got_fp=$(sha256 "$tmp/ca.der")
[ "$got_fp" = "$want_fp" ] ||
	die "the CA served at $download is not the one in the join token (sha256:$got_fp, token pins sha256:$want_fp): refusing to continue"
{
	echo '-----BEGIN CERTIFICATE-----'
	base64 <"$tmp/ca.der" | tr -d '\n' | fold -w 64
	echo
	echo '-----END CERTIFICATE-----'
} >"$tmp/ca.pem"
say "relay CA sha256:$got_fp matches the join token"

# 2. The agent binary, over TLS trusting only that CA. Relay certificates
# carry the DNS name relay.tether.invalid (protocol/identity), which curl
# checks while --connect-to sends the connection to the real address.
case $(uname -m) in
x86_64|amd64) arch=amd64 ;;
aarch64|arm64) arch=arm64 ;;
*) die "no agent build for $(uname -m)" ;;
esac
name=relay.tether.invalid
pinned() {
	pcurl -fsS --proto '=https' --tlsv1.2 --cacert "$tmp/ca.pem" \
		--connect-to "$name:$dl_port:$dl_host:$dl_port" --max-time 300 "$@"
}
pinned --max-filesize 209715200 -o "$tmp/tether-agent" "https://$name:$dl_port$path_prefix/tether-agent-linux-$arch" ||
	die "could not download the agent from $download (refused unless it comes from the relay's CA)"
chmod 0755 "$tmp/tether-agent"
version=$("$tmp/tether-agent" version --short) || die "the downloaded agent does not run on this machine"
say "downloaded tether-agent $version (linux/$arch)"

# 3. Enrol. The token goes through standard input.
state="$root/var/lib/tether-agent"
config="$root/etc/tether-agent/agent.yaml"
# With --force over an installed agent that runs (or is being restarted by
# systemd), stop it first: an agent holds its state directory, and enrol
# refuses to replace the identity under it. It is started again if the
# enrolment fails, and with the new identity in step 5. --no-service leaves
# the service alone: stopped here, nothing would start it again.
stopped=''
if [ -n "$force" ] && [ -z "$root" ] && [ -z "$no_service" ] && [ -x /opt/tether-agent/bin/tether-agent ] &&
	command -v systemctl >/dev/null 2>&1; then
	case $(systemctl is-active tether-agent 2>/dev/null || true) in
	active|activating|reloading)
		say "stopping the running agent to enrol this machine again (--force)"
		/opt/tether-agent/bin/tether-agent stop || die "could not stop the running agent (tether-agent stop)"
		stopped=1 ;;
	esac
fi
# An existing config is kept (step 4), so the identity goes where it says
# the agent keeps its state, which need not be the default.
where="--state-dir=$state"
if [ -e "$config" ]; then
	where="--config=$config"
fi
if ! printf '%s\n' "$token" | "$tmp/tether-agent" enroll --relay "$relay" --token-file - "$where" ${proxy_ca:+"--proxy-ca=$proxy_ca"} $force >/dev/null; then
	if [ -n "$stopped" ]; then
		if /opt/tether-agent/bin/tether-agent start; then
			say "started the agent again with its previous identity"
		else
			say "could not start the agent again (tether-agent start): it is stopped"
		fi
	fi
	die "enrolment failed"
fi
token=''

# 4. The config: relay, state, the services this machine allows, and the
# proxy the enrolment went through: the agent reads the same variables, in
# the same order, but a service does not see this shell's environment.
# YAML single quotes: a quote inside is doubled, nothing else is escaped.
yaml_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }
no_proxy_val=${no_proxy:-${NO_PROXY:-}}
if [ -e "$config" ]; then
	say "keeping the existing $config"
	[ -z "$proxy_var" ] || grep -q '^proxy:' "$config" ||
		say "warning: the enrolment used the proxy of \$$proxy_var, which the service does not see: set proxy: in $config if the agent needs it"
	[ -z "$proxy_ca" ] || grep -q '^proxy_ca_file:' "$config" ||
		say "warning: the enrolment trusted --proxy-ca $proxy_ca for the proxy: set proxy_ca_file: in $config if the agent needs it"
else
	mkdir -p "$(dirname "$config")"
	ca_copy="$(dirname "$config")/proxy-ca.pem"
	if [ -n "$proxy_ca" ]; then
		# A copy the service can read (the file given may be in a home
		# directory): certificates only, nothing secret.
		cp "$proxy_ca" "$tmp/proxy-ca.pem"
		chmod 0644 "$tmp/proxy-ca.pem"
		mv "$tmp/proxy-ca.pem" "$ca_copy"
	fi
	{
		echo "# Written by install.sh. The agent reaches only the services listed here;"
		echo "# edit the list and the running agent applies it."
		echo "relays: [\"$relay\"]"
		echo "state_dir: \"$state\""
		if [ -n "$proxy_var" ]; then
			echo "# The HTTP proxy of \$$proxy_var when this was written (it may hold a password:"
			echo "# keep this file readable by the agent only)."
			echo "proxy: $(yaml_quote "$proxy_val")"
			[ -z "$no_proxy_val" ] || echo "no_proxy: $(yaml_quote "$no_proxy_val")"
			[ -z "$proxy_ca" ] || echo "proxy_ca_file: \"$ca_copy\"   # the CA of the proxy's certificate (--proxy-ca)"
		fi
		if [ -z "$service_lines" ]; then
			echo "services: {}"
		else
			echo "services:"
			printf '%s' "$service_lines"
		fi
	} >"$tmp/agent.yaml"
	mv "$tmp/agent.yaml" "$config"
	chmod 0640 "$config"
	say "wrote $config"
	[ -z "$proxy_var" ] || say "recorded the HTTP proxy of \$$proxy_var in it (proxy:): the service does not see this shell's environment"
	[ -z "$proxy_ca" ] || say "recorded the proxy's CA in it (proxy_ca_file: $ca_copy)"
fi

# 5. The service.
if [ -n "$no_service" ]; then
	mkdir -p "$root/opt/tether-agent/bin"
	cp "$tmp/tether-agent" "$root/opt/tether-agent/bin/tether-agent"
	say "installed $root/opt/tether-agent/bin/tether-agent; not registering the service (--no-service)"
	exit 0
fi
"$tmp/tether-agent" install --config "$config"
/opt/tether-agent/bin/tether-agent start
say "the agent is running: systemctl status tether-agent; journalctl -u tether-agent"
