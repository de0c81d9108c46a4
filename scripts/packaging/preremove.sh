#!/bin/sh
set -e
# Stop on removal, not on upgrade (deb: "remove"; rpm: $1 = 0).
if [ "$1" = remove ] || [ "$1" = 0 ]; then
	if [ -d /run/systemd/system ]; then
		systemctl disable --now tether-agent.service || true
	fi
fi
