package throttle

import (
	"net"
	"sync"
)

// ListenerLimits bounds the connections a listener holds open at once
// (LimitListener): from one source address, from one source network (a
// /24 for IPv4, a /56 for IPv6, as Sources counts them) and in all. A
// bound of 0 or less is taken as 1.
type ListenerLimits struct {
	PerAddress, PerNetwork, Total int
}

// Reasons a limited listener turns a connection away, as counted in
// tether_listener_refused_total.
const (
	// RefusedSource: its source address or network holds its bound.
	RefusedSource = "source_limited"
	// RefusedFull: the listener holds its total.
	RefusedFull = "listener_full"
)

// LimitListener returns ln bounded by lim, for listeners that serve
// operators and tools rather than agents and backends (metrics, the admin
// API, downloads): an HTTP server keeps an idle keep-alive connection,
// and every connection costs a file descriptor, a goroutine and its
// buffers, so without a bound one client could hold as many as it likes
// and leave the relay none to accept agents and backends with. A
// connection holds its slots from Accept until it is closed. One beyond a
// bound is closed at once, before anything is read from or written to it
// (no TLS handshake), Accept goes on to the next, and refused, when not
// nil, is called with the reason (RefusedSource, RefusedFull); it must be
// quick. Closing the listener does not close the connections it accepted.
func LimitListener(ln net.Listener, lim ListenerLimits, refused func(reason string)) net.Listener {
	return &limitedListener{Listener: ln, src: NewSources(max(lim.PerAddress, 1), max(lim.PerNetwork, 1)),
		total: NewGate(lim.Total, 0), refused: refused}
}

type limitedListener struct {
	net.Listener
	src     *Sources
	total   *Gate
	refused func(reason string)
}

// Accept returns the next connection within the bounds; it returns an
// error only when the listener's own Accept does.
func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		leave, ok := l.src.Enter(c.RemoteAddr())
		if !ok {
			l.refuse(c, RefusedSource)
			continue
		}
		if !l.total.TryEnter() {
			leave()
			l.refuse(c, RefusedFull)
			continue
		}
		lc := &limitedConn{Conn: c}
		lc.leave = func() {
			leave()
			l.total.Leave()
		}
		return lc, nil
	}
}

func (l *limitedListener) refuse(c net.Conn, reason string) {
	c.Close()
	if l.refused != nil {
		l.refused(reason)
	}
}

// limitedConn gives its slots back when it is closed (once, however
// many times Close is called).
type limitedConn struct {
	net.Conn
	once  sync.Once
	leave func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.leave)
	return err
}

// Or returns l with each bound of 0 or less taken from def.
func (l ListenerLimits) Or(def ListenerLimits) ListenerLimits {
	for _, f := range []struct {
		v *int
		d int
	}{{&l.PerAddress, def.PerAddress}, {&l.PerNetwork, def.PerNetwork}, {&l.Total, def.Total}} {
		if *f.v <= 0 {
			*f.v = f.d
		}
	}
	return l
}
