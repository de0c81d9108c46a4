#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
# The state (the agent's identity) and the user are kept; remove them
# with: rm -rf /var/lib/tether-agent && userdel tether-agent
