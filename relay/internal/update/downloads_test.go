package update

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// TestDownloadStalledClientCut: a download whose client stops reading is
// cut once it has waited stall for the client (before, it held its
// connection, a goroutine and the file open for as long as the client
// liked), and one whose client reads slowly but steadily gets every byte.
func TestDownloadStalledClientCut(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dir, authority, err := datadir.Open(ctx, t.TempDir(), datadir.Options{TrustDomain: "downloads.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	auth := trust.NewAuthority(dir.CAStorage(), authority)
	tlsSrv, err := trust.NewServer(auth, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	files := t.TempDir()
	const size = 32 << 20
	if err := os.WriteFile(filepath.Join(files, "tether-agent"), make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := NewDownloads(DownloadsConfig{Listen: "127.0.0.1:0", Dir: files, HandshakeTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)}, tlsSrv, auth)
	if err != nil {
		t.Fatal(err)
	}
	// Two seconds: on a loaded machine the slow client below can go a
	// second without being scheduled (a stall of 1 s cut it, at 9.7 of
	// its 32 MiB, in a run beside other test packages).
	d.stall = 2 * time.Second
	var wg sync.WaitGroup
	wg.Go(func() { d.Run(ctx) })
	defer wg.Wait()
	defer cancel()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, WriteBufferSize: 4 << 10, ReadBufferSize: 4 << 10}}
	defer client.CloseIdleConnections()
	get := func() *http.Response {
		resp, err := client.Get("https://" + d.Addr().String() + "/tether-agent")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("download: %s", resp.Status)
		}
		return resp
	}

	// A client that reads 256 KiB every 40 ms: its download takes more
	// than twice stall, each write well within it.
	resp := get()
	start := time.Now()
	var got int64
	buf := make([]byte, 256<<10)
	for {
		n, err := io.ReadFull(resp.Body, buf)
		got += int64(n)
		if err != nil {
			break
		}
		time.Sleep(40 * time.Millisecond)
	}
	resp.Body.Close()
	if got != size {
		t.Fatalf("a slow client that kept reading got %d of %d bytes", got, size)
	}
	if took := time.Since(start); took < 2*d.stall {
		t.Logf("the slow download took %v, less than twice stall (%v): the test shows less than it should", took, 2*d.stall)
	}

	// A client that stops reading for several times stall.
	resp = get()
	defer resp.Body.Close()
	time.Sleep(3 * d.stall) // the client stalls: what is under test
	n, err := io.Copy(io.Discard, resp.Body)
	if n >= size || err == nil {
		t.Fatalf("a client that stopped reading for %v still got %d of %d bytes (err %v); want the download cut", 3*d.stall, n, size, err)
	}
}
