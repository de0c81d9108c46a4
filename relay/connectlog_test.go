package relay

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// A flood of CONNECT requests with malformed targets from one address,
// refused before any credential is asked for, is logged at info level
// within the source's log budget (10, then one every 5 s) and at debug
// level beyond it; every one is counted in tether_streams_opened_total.
func TestMalformedConnectTargetLogBudget(t *testing.T) {
	var logs logBuffer
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: "127.0.0.1:0",
		Logger: debugLogger(&logs)})
	const n = 60
	start := time.Now()
	for i := range n {
		c, err := net.Dial("tcp", r.ConnectAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT user%d@%s:7 HTTP/1.1\r\nHost: x\r\n\r\n", i, strings.Repeat("a", 200))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 400") {
			t.Fatalf("request %d: %q, %v; want 400", i, line, err)
		}
	}
	got := logs.lines(map[string]string{"msg": "refused", "code": "bad_request", "door": "connect"})
	limit := 10 + int(time.Since(start)/(5*time.Second))
	if got["INFO"] > limit || got["INFO"]+got["DEBUG"] != n {
		t.Errorf("%d malformed CONNECT requests from one address logged %d times at info level and %d at debug; want at most %d at info, the rest at debug", n, got["INFO"], got["DEBUG"], limit)
	}
	if v := counterValue(r.metrics.Streams.WithLabelValues("", "", "", "bad_request")); v != n {
		t.Errorf("tether_streams_opened_total{outcome=bad_request} = %v, want %d", v, n)
	}
}
