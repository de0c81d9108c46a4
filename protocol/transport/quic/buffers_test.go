package quic_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol/transport/quic"
)

func TestBufferAdvice(t *testing.T) {
	big := quic.WantedBuffer
	if got := quic.BufferAdvice(big, big+1); got != "" {
		t.Fatalf("big enough buffers: got advice %q", got)
	}
	got := quic.BufferAdvice(416<<10, big)
	if !strings.Contains(got, "receive 416 KiB") || strings.Contains(got, "send ") {
		t.Fatalf("small receive buffer: got %q", got)
	}
	got = quic.BufferAdvice(416<<10, 208<<10)
	for _, want := range []string{"receive 416 KiB", "send 208 KiB", "7168 KiB"} {
		if !strings.Contains(got, want) {
			t.Fatalf("both small: %q lacks %q", got, want)
		}
	}
}

// TestSocketBuffersReadsTheSocket: the sizes read back follow what the
// socket was set to.
func TestSocketBuffersReadsTheSocket(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var sizes [2]int
	for i, size := range []int{32 << 10, 96 << 10} {
		if err := c.SetReadBuffer(size); err != nil {
			t.Fatal(err)
		}
		recv, send, err := quic.SocketBuffers(c)
		if err != nil {
			t.Fatal(err)
		}
		if recv < size || send <= 0 {
			t.Fatalf("after SetReadBuffer(%d): receive %d, send %d", size, recv, send)
		}
		sizes[i] = recv
	}
	if sizes[1] <= sizes[0] {
		t.Fatalf("receive buffer did not grow: %d then %d", sizes[0], sizes[1])
	}
}

// TestProbeBuffers: a privileged process gets what quic-go wants; any
// other gets the system's limit (Linux reports twice the size granted).
func TestProbeBuffers(t *testing.T) {
	recv, send, err := quic.ProbeBuffers()
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "linux" {
		if recv <= 0 || send <= 0 {
			t.Fatalf("probe: receive %d, send %d", recv, send)
		}
		return
	}
	if os.Geteuid() == 0 {
		if recv < quic.WantedBuffer || send < quic.WantedBuffer {
			t.Fatalf("as root: receive %d, send %d, want at least %d", recv, send, quic.WantedBuffer)
		}
		return
	}
	for _, c := range []struct {
		name string
		got  int
	}{{"rmem_max", recv}, {"wmem_max", send}} {
		b, err := os.ReadFile("/proc/sys/net/core/" + c.name)
		if err != nil {
			t.Skipf("cannot read the limit: %v", err)
		}
		limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		if want := 2 * min(limit, quic.WantedBuffer); c.got != want {
			t.Fatalf("%s %d: got %d, want %d", c.name, limit, c.got, want)
		}
	}
}

// TestLogBuffers: small buffers are a warning that says what to do; big
// ones and unknown ones are debug lines.
func TestLogBuffers(t *testing.T) {
	for _, tc := range []struct {
		name       string
		recv, send int
		err        error
		level      slog.Level
		msg        string
	}{
		{"small", 416 << 10, 416 << 10, nil, slog.LevelWarn, "net.core.rmem_max"},
		{"big", 2 * quic.WantedBuffer, 2 * quic.WantedBuffer, nil, slog.LevelDebug, "QUIC UDP socket buffers"},
		{"unknown", 0, 0, errors.ErrUnsupported, slog.LevelDebug, "sizes unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			quic.LogBuffers(log, tc.recv, tc.send, tc.err)
			var rec map[string]any
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
				t.Fatalf("one JSON record: %v in %q", err, buf.String())
			}
			if rec["level"] != tc.level.String() || !strings.Contains(rec["msg"].(string), tc.msg) {
				t.Fatalf("got %v %q, want %v and a message with %q", rec["level"], rec["msg"], tc.level, tc.msg)
			}
		})
	}
}
