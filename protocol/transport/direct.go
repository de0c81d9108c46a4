package transport

import "net"

// DirectListener returns ln with every connection it accepts passed
// through Direct, for a listener whose connections are wrapped (in TLS,
// say) before anything could unwrap them.
func DirectListener(ln net.Listener) net.Listener { return directListener{ln} }

type directListener struct{ net.Listener }

func (l directListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Direct(c), nil
}
