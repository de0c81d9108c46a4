package yamux

import (
	"testing"
	"time"
)

// A stream is answered once the remote end acknowledges it (on accept),
// not by frames of other streams; a stream the remote end opened is
// answered from the start, and a reset answers an opening too.
func TestStreamAnswered(t *testing.T) {
	// The client may have more openings unacknowledged than the server
	// takes in its backlog (yamux bounds both by AcceptBacklog).
	clientConf := testConf()
	clientConf.AcceptBacklog = 128
	clientConn, serverConn := testConnTLS(t)
	client, server := testClientServerConfig(t, clientConn, serverConn, clientConf, testConf())
	defer client.Close()
	defer server.Close()

	// Traffic on a first stream, both ways, while a second waits to be
	// accepted.
	first, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if first.Answered() {
		t.Fatal("a stream is answered before its SYN was even read")
	}
	acceptedFirst, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if !acceptedFirst.Answered() {
		t.Fatal("a stream the remote end opened is not answered")
	}
	second, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	for i := 0; i < 3; i++ {
		if _, err := acceptedFirst.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := first.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if !first.Answered() {
		t.Fatal("a stream acknowledged and read from is not answered")
	}
	if second.Answered() {
		t.Fatal("a stream not yet accepted is answered (by the other stream's frames)")
	}
	acceptedSecond, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, second)
	acceptedSecond.Close()

	// The remote end's reset answers the opening: one stream beyond its
	// accept backlog (64) is refused with a reset; the streams in the
	// backlog, not accepted, are not answered.
	var waiting []*Stream
	for i := 0; i < 64; i++ {
		s, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		waiting = append(waiting, s)
	}
	refused, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	waitAnswered(t, refused)
	for i, s := range waiting {
		if s.Answered() {
			t.Fatalf("stream %d, in the accept backlog, is answered", i)
		}
	}
}

func waitAnswered(t *testing.T, s *Stream) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !s.Answered() {
		if time.Now().After(deadline) {
			t.Fatal("stream not answered within 5 s of its acknowledgement")
		}
		time.Sleep(time.Millisecond)
	}
}
