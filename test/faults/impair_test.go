//go:build linux

package faults

import (
	"math/rand/v2"
	"testing"
	"time"
)

// A minimal IPv4 packet: a 20-byte header and 12 bytes of payload.
func testPacket() []byte {
	p := make([]byte, 32)
	p[0] = 0x45
	return p
}

func TestImpairmentDecide(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 100000
	tests := []struct {
		name  string
		m     impairment
		pkt   []byte
		check func(t *testing.T, fates []fate)
	}{
		{"none", impairment{}, testPacket(), func(t *testing.T, fates []fate) {
			for _, f := range fates {
				if f.drop || f.delay != 0 || f.reorder || f.flipBit != -1 {
					t.Fatalf("got %+v, want every packet through at once, unchanged", f)
				}
			}
		}},
		{"loss", impairment{Loss: 0.05}, testPacket(), func(t *testing.T, fates []fate) {
			dropped := 0
			for _, f := range fates {
				if f.drop {
					dropped++
				}
			}
			if got := float64(dropped) / n; got < 0.045 || got > 0.055 {
				t.Errorf("dropped %.4f of the packets, want 0.05", got)
			}
		}},
		{"delay and jitter", impairment{Delay: 200 * time.Millisecond, Jitter: 50 * time.Millisecond}, testPacket(), func(t *testing.T, fates []fate) {
			lo, hi := time.Hour, time.Duration(0)
			for _, f := range fates {
				lo, hi = min(lo, f.delay), max(hi, f.delay)
			}
			if lo < 150*time.Millisecond || hi > 250*time.Millisecond || hi-lo < 90*time.Millisecond {
				t.Errorf("delays from %v to %v, want 200ms ± 50ms", lo, hi)
			}
		}},
		{"reorder", impairment{Delay: time.Second, Reorder: 1}, testPacket(), func(t *testing.T, fates []fate) {
			for _, f := range fates {
				if !f.reorder || f.delay != 0 {
					t.Fatalf("got %+v, want every packet sent ahead", f)
				}
			}
		}},
		{"corrupt the payload only", impairment{Corrupt: 1}, testPacket(), func(t *testing.T, fates []fate) {
			hit := map[int]bool{}
			for _, f := range fates {
				if f.flipBit < 8*20 || f.flipBit >= 8*32 {
					t.Fatalf("flipped bit %d, want one of the payload's bits 160–255", f.flipBit)
				}
				hit[f.flipBit] = true
			}
			if len(hit) != 8*12 {
				t.Errorf("flipped %d distinct bits, want all 96 of the payload", len(hit))
			}
		}},
		{"no payload, no corruption", impairment{Corrupt: 1}, testPacket()[:20], func(t *testing.T, fates []fate) {
			for _, f := range fates {
				if f.flipBit != -1 {
					t.Fatalf("flipped bit %d of a packet with no payload", f.flipBit)
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fates := make([]fate, n)
			for i := range fates {
				fates[i] = tc.m.decide(rng, tc.pkt)
			}
			tc.check(t, fates)
		})
	}
}

// Whatever the router reads, it neither panics nor corrupts outside the
// packet or inside a well-formed header.
func FuzzImpairmentDecide(f *testing.F) {
	f.Add(testPacket())
	f.Add([]byte{0x4f, 0, 0, 0})
	f.Add(append([]byte{0x46}, make([]byte, 23)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		rng := rand.New(rand.NewPCG(3, 4))
		m := impairment{Loss: 0.1, Delay: time.Millisecond, Jitter: time.Millisecond, Reorder: 0.1, Corrupt: 0.9}
		for range 20 {
			fa := m.decide(rng, pkt)
			if fa.flipBit == -1 {
				continue
			}
			hl, ok := ipv4HeaderLen(pkt)
			if !ok || fa.flipBit < 8*hl || fa.flipBit >= 8*len(pkt) {
				t.Fatalf("flipped bit %d of %d-byte packet %x", fa.flipBit, len(pkt), pkt)
			}
		}
	})
}
