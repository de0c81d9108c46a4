package relay

// The relay's parts
//
// Relay (relay.go) builds the parts below in New, starts each one's Run in
// Run, and owns the order in which they stop. Each part owns its
// listeners and goroutines; none reaches into another's fields.
//
//	internal/session    agent listeners (QUIC and TLS+yamux on one port),
//	                    handshake admission (global, per source), one Conn
//	                    per admitted agent session with its liveness, the
//	                    Set of live sessions, last-seen times
//	internal/route      Target parsing; the Table of carriers by tenant
//	                    (a session is a carrier); Router.Dial: pick the
//	                    least-loaded usable carrier, retry another, wait out
//	                    the reconnect grace after a restart
//	internal/frontdoor  SOCKS5, CONNECT and CONNECT-over-TLS; backend
//	                    authentication (API key, certificate, OIDC token),
//	                    authorization, tenant limits, the byte bridge and
//	                    its audit
//	internal/enrol      enrolment with join tokens, certificate renewal,
//	                    following a CA rotation
//	internal/update     agent rollouts, the download listener
//	internal/metrics    the Prometheus registry and the relay's counters,
//	                    bytes counted while streams move
//	internal/history    the last hour in memory for the dashboard's charts,
//	                    read from the parts by consoleview.go
//	admin               every operator action; internal/console serves it
//	                    as the admin API and dashboard
//
// Below them: policy (grants, limits, revocations in memory), trust (the
// live CA and every listener's TLS configuration), audit, throttle,
// credential, datadir, ca, store, socks5, atomicfile, streammem (the
// stream memory cap, one budget the front doors and the peer listener
// share), and restore (the first start on a data directory restored from
// a backup, which New runs before any state is read). Imports point down:
// route knows nothing of sessions (it sees carriers), session nothing of
// front doors, and no part imports this package.
//
// What changes in the store reaches a running relay through the change
// feed (feed.go): policy, limits, revocations and CA changes are applied
// from it, a changed backend is forgotten by the front doors' cache, and
// a new release wakes the rollouts.
