package accesslog

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"testing"
)

// BenchmarkAdd is what a stream's handler pays to log its stream (queue
// a record), with the writer committing to a real file meanwhile.
func BenchmarkAdd(b *testing.B) {
	cert := leaf(b, newTestCA(b), testAgent)
	l := startLog(b, Options{Path: filepath.Join(b.TempDir(), "access.log"), Certificate: func() *tls.Certificate { return cert }})
	r := record(1)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Add(r)
		}
	})
	b.StopTimer()
	l.stop()
}

// BenchmarkWrite is the writer's cost per record: b.N records queued,
// then written (batches of up to 1024, one fsync each), rotated at the
// default 10 MiB.
func BenchmarkWrite(b *testing.B) {
	cert := leaf(b, newTestCA(b), testAgent)
	l := New(Options{Path: filepath.Join(b.TempDir(), "access.log"), QueueSize: b.N + 1, Certificate: func() *tls.Certificate { return cert }})
	r := record(1)
	for range b.N {
		l.Add(r)
	}
	l.Open()
	b.ResetTimer()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run writes what is queued, then stops
	l.Run(ctx)
	b.StopTimer()
	if err := l.Err(); err != nil {
		b.Fatal(err)
	}
	if l.seq < uint64(b.N) {
		b.Fatalf("%d lines written for %d records", l.seq, b.N)
	}
}
