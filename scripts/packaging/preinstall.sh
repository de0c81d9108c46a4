#!/bin/sh
# Creates the unprivileged system user the service runs as.
set -e
if ! getent passwd tether-agent >/dev/null; then
	shell=/usr/sbin/nologin
	[ -x "$shell" ] || shell=/sbin/nologin
	useradd --system --user-group --no-create-home --home-dir /var/lib/tether-agent \
		--shell "$shell" --comment "Tether agent" tether-agent
fi
