package update

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"time"

	"github.com/tetherhq/tether/relay/internal/throttle"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// Downloads is the download listener (--download-listen): it serves the
// install scripts and the agent binaries of a directory (--download-dir,
// laid out by scripts/release) over HTTPS with the relay's own
// certificate, and the relay's CA certificate at /ca.der. Nothing there is
// secret; what makes a download trustworthy is the client: the install
// scripts check the CA against the fingerprint in the join token and then
// accept only a server certificate from that CA (see scripts/install.sh).
type Downloads struct {
	dir  string
	auth *trust.Authority
	log  *slog.Logger
	ln   net.Listener
	srv  *http.Server
	// stall is how long a download may wait for its client to take more
	// before it is cut (downloadStall).
	stall time.Duration
}

// downloadStall cuts a download whose client has taken nothing for a
// minute: one that stops reading would otherwise hold its connection,
// a goroutine and the file open for as long as it likes. A slow client
// that keeps reading is never cut.
const downloadStall = time.Minute

// downloadName is what may be downloaded: plain file names in the
// directory, no paths, no dot files.
var downloadName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// DownloadsConfig configures the download listener.
type DownloadsConfig struct {
	// Listen is its address (HTTPS).
	Listen string
	// Dir holds the files it serves.
	Dir string
	// HandshakeTimeout bounds the TLS handshake and reading a request's
	// headers.
	HandshakeTimeout time.Duration
	// Limits bounds the connections it holds open per source address, per
	// source network and in all (throttle.LimitListener); zero fields
	// take DefaultDownloadLimits'.
	Limits throttle.ListenerLimits
	// Refused, when set, is told the reason of each connection the
	// listener closed at accept for being beyond Limits.
	Refused func(reason string)
	Logger  *slog.Logger
}

// DefaultDownloadLimits are the download listener's bounds on connections
// held open: 64 from one address, 256 from one network, 512 in all.
// Agents fetch releases through their tunnel, not here: the listener
// serves the install scripts, whose install of one host makes a few short
// connections one after the other (the script, the CA, the binary), so one
// address (a NAT in front of a site) may install 64 hosts at once. The
// total bounds what the listener can take of the relay's file
// descriptors, which the agent port and the front doors need.
func DefaultDownloadLimits() throttle.ListenerLimits {
	return throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512}
}

// NewDownloads binds the download listener for the files of cfg.Dir.
// Call Run, or Close if Run will not be called.
func NewDownloads(cfg DownloadsConfig, tlsSrv *trust.Server, auth *trust.Authority) (*Downloads, error) {
	dir, log := cfg.Dir, cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("download listener: --download-dir must name a directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("download listener: %s is not a directory", dir)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("download listener: %w", err)
	}
	ln = throttle.LimitListener(ln, cfg.Limits.Or(DefaultDownloadLimits()), cfg.Refused)
	d := &Downloads{dir: dir, auth: auth, log: log, ln: tls.NewListener(ln, tlsSrv.Downloads()), stall: downloadStall}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ca.der", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/pkix-cert")
		http.ServeContent(w, req, "ca.der", time.Time{}, bytes.NewReader(d.auth.CA().Serving().Cert.Raw))
	})
	mux.HandleFunc("GET /{name}", d.serve)
	d.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		IdleTimeout:       15 * time.Second, // the install scripts make a connection per file
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return d, nil
}

// Addr is the listener's address.
func (d *Downloads) Addr() net.Addr { return d.ln.Addr() }

// Close releases a listener whose Run was never called.
func (d *Downloads) Close() error { return d.ln.Close() }

// Run serves until ctx ends, then closes every connection (downloads in
// progress are cut: the install scripts retry) and returns once the
// server has stopped.
func (d *Downloads) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { d.srv.Close() })
	defer stop()
	err := d.srv.Serve(d.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("download listener: %w", err)
}

func (d *Downloads) serve(w http.ResponseWriter, req *http.Request) {
	name := req.PathValue("name")
	log := d.log.With("door", "download", "remote", req.RemoteAddr, "file", name)
	if !downloadName.MatchString(name) {
		http.NotFound(w, req)
		return
	}
	// os.Root keeps symbolic links from leading out of the directory.
	root, err := os.OpenRoot(d.dir)
	if err != nil {
		log.Error("download directory", "err", err)
		http.Error(w, "download directory unavailable", http.StatusServiceUnavailable)
		return
	}
	defer root.Close()
	f, err := root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		log.Info("download: no such file")
		http.NotFound(w, req)
		return
	}
	if err != nil {
		log.Warn("download", "err", err)
		http.NotFound(w, req)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.NotFound(w, req)
		return
	}
	log.Info("download", "bytes", fi.Size())
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(progressing{w, http.NewResponseController(w), d.stall}, req, name, fi.ModTime(), f)
}

// progressing is a ResponseWriter whose every write must go out within
// stall: a client that keeps reading, however slowly, moves the
// deadline on; one that stops is cut.
type progressing struct {
	http.ResponseWriter
	rc    *http.ResponseController
	stall time.Duration
}

func (p progressing) Write(b []byte) (int, error) {
	p.rc.SetWriteDeadline(time.Now().Add(p.stall))
	return p.ResponseWriter.Write(b)
}
