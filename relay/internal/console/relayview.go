package console

import (
	"time"

	"github.com/tetherhq/tether/relay/internal/history"
)

// Relay is the running relay as the dashboard sees it besides its Admin:
// its recent history (for the charts), its health, and where agents and
// installers reach it (for the "add a connector" flow). The relay
// provides it; nil in Config leaves the charts and the health panel out.
type Relay interface {
	// History copies the part of the relay's recent history q asks for.
	// The dashboard asks only for what the operator's scope sees.
	History(q history.Query) history.Window
	Health() Health
	Connector() Connector
}

// Health is the relay's health panel: what it runs, since when, and how
// it is doing.
type Health struct {
	Version, Commit, GoVersion string
	Started                    time.Time
	// Agents connected (distinct), their sessions, and the tenants they
	// belong to.
	Agents, Sessions, Tenants int
	StreamsOpen               int64
	FrontConnections          int
	// Agent handshakes since the relay started, by outcome, and in
	// progress now.
	HandshakesOK, HandshakesFailed, HandshakesThrottled, HandshakesSourceLimited int64
	HandshakesInProgress                                                         int
	// Store is each store operation's count and mean latency since the
	// relay started.
	Store      []StoreLatency
	AuditQueue int
	Goroutines int
	// HeapInuse and Sys are the Go runtime's heap in use and memory
	// obtained from the system, in bytes.
	HeapInuse, Sys uint64
}

// StoreLatency is one store operation's count and mean latency.
type StoreLatency struct {
	Op    string
	Count uint64
	Mean  time.Duration
}

// Connector is what the "add a connector" flow needs to know to write the
// install command.
type Connector struct {
	// AgentPort is the port agents connect to.
	AgentPort string
	// DownloadPort is the port of the download listener, which serves
	// install.sh and the agent binaries; "" when it is off.
	DownloadPort string
	// InstallSHA256 is the SHA-256 (hex) of the install.sh the download
	// listener serves; "" when unknown.
	InstallSHA256 string
}
