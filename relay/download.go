package relay

import (
	"bytes"
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
)

// The download listener (--download-listen) serves the install scripts and
// the agent binaries of a directory (--download-dir, laid out by
// scripts/release) over HTTPS with the relay's own certificate, and the
// relay's CA certificate at /ca.der. Nothing there is secret; what makes a
// download trustworthy is the client: the install scripts check the CA
// against the fingerprint in the join token and then accept only a server
// certificate from that CA (see scripts/install.sh).

// downloadName is what may be downloaded: plain file names in the
// directory, no paths, no dot files.
var downloadName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (r *Relay) downloadServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ca.der", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/pkix-cert")
		http.ServeContent(w, req, "ca.der", time.Time{}, bytes.NewReader(r.st.CA().Serving().Cert.Raw))
	})
	mux.HandleFunc("GET /{name}", r.serveDownload)
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: r.cfg.HandshakeTimeout,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelDebug),
	}
}

func (r *Relay) serveDownload(w http.ResponseWriter, req *http.Request) {
	name := req.PathValue("name")
	log := r.log.With("door", "download", "remote", req.RemoteAddr, "file", name)
	if !downloadName.MatchString(name) {
		http.NotFound(w, req)
		return
	}
	// os.Root keeps symbolic links from leading out of the directory.
	root, err := os.OpenRoot(r.cfg.DownloadDir)
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
	http.ServeContent(w, req, name, fi.ModTime(), f)
}

// DownloadAddr is the download listener's address, nil when it is off.
func (r *Relay) DownloadAddr() net.Addr { return addrOf(r.downloadLn) }

// listenDownloads opens the download listener when one is configured.
func (r *Relay) listenDownloads() error {
	if r.cfg.DownloadListen == Off {
		return nil
	}
	fi, err := os.Stat(r.cfg.DownloadDir)
	if err != nil {
		return fmt.Errorf("download listener: --download-dir must name a directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("download listener: %s is not a directory", r.cfg.DownloadDir)
	}
	ln, err := net.Listen("tcp", r.cfg.DownloadListen)
	if err != nil {
		return fmt.Errorf("download listener: %w", err)
	}
	r.downloadLn = tls.NewListener(ln, r.tls.Downloads())
	return nil
}
