#!/bin/sh
# Owners and modes the service needs (see installer/unit.go): the config
# readable by the service's group only, the state directory its alone, the
# binary's directory writable by it for self-update. The service is not
# started: it has no identity until it is enrolled.
set -e
chgrp tether-agent /etc/tether-agent /etc/tether-agent/agent.yaml
chmod 0750 /etc/tether-agent
chmod 0640 /etc/tether-agent/agent.yaml
install -d -m 0700 -o tether-agent -g tether-agent /var/lib/tether-agent /var/lib/tether-agent/update
chown tether-agent:tether-agent /opt/tether-agent/bin
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
