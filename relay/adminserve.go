package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// AdminAddr is the admin listener's address, or nil when off.
func (r *Relay) AdminAddr() net.Addr { return addrOf(r.adminLn) }

// listenAdmin binds the admin listener (TLS).
func (r *Relay) listenAdmin() error {
	tc, err := r.adminTLS()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", r.cfg.AdminListen)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	r.adminLn = tls.NewListener(ln, tc)
	return nil
}

// serveAdmin starts the admin API on wg when its listener is on; report
// receives how Serve ended.
func (r *Relay) serveAdmin(wg *sync.WaitGroup, report func(error)) *http.Server {
	if r.adminLn == nil {
		return nil
	}
	srv := &http.Server{
		Handler:           r.adminHandler(),
		ReadHeaderTimeout: r.cfg.HandshakeTimeout,
		ReadTimeout:       time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelDebug), // TLS handshake failures and the like
	}
	wg.Go(func() {
		err := srv.Serve(r.adminLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		report(err)
	})
	return srv
}

// stopAdmin shuts the admin API down on wg: requests in progress get a few
// seconds to finish.
func (r *Relay) stopAdmin(wg *sync.WaitGroup, srv *http.Server) {
	if srv == nil {
		return
	}
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
	})
}
