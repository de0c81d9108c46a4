package protocol_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

func sampleToken() protocol.JoinToken {
	var t protocol.JoinToken
	for i := range t.ID {
		t.ID[i] = byte(i + 1)
	}
	for i := range t.Secret {
		t.Secret[i] = byte(0x80 + i)
	}
	for i := range t.CAFingerprint {
		t.CAFingerprint[i] = byte(0xff - i)
	}
	return t
}

// rawToken builds a token string from raw bytes, bypassing String.
func rawToken(raw []byte) string {
	return protocol.JoinTokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
}

func TestJoinTokenRoundTrip(t *testing.T) {
	var ones protocol.JoinToken
	for i := range ones.ID {
		ones.ID[i] = 0xff
	}
	for i := range ones.Secret {
		ones.Secret[i] = 0xff
	}
	for i := range ones.CAFingerprint {
		ones.CAFingerprint[i] = 0xff
	}
	tests := []struct {
		name string
		tok  protocol.JoinToken
		wrap func(string) string
	}{
		{"zero", protocol.JoinToken{}, nil},
		{"all ones", ones, nil},
		{"sample", sampleToken(), nil},
		{"trailing newline", sampleToken(), func(s string) string { return s + "\n" }},
		{"surrounding white space", sampleToken(), func(s string) string { return " \t" + s + "\r\n" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.tok.String()
			if !strings.HasPrefix(s, protocol.JoinTokenPrefix) {
				t.Errorf("got %q, want the prefix %q", s, protocol.JoinTokenPrefix)
			}
			if got, want := len(s), len(protocol.JoinTokenPrefix)+98; got != want {
				t.Errorf("got a string of %d characters, want %d", got, want)
			}
			if strings.ContainsAny(s[len(protocol.JoinTokenPrefix):], "+/=") {
				t.Errorf("got %q, want unpadded URL-safe base64", s)
			}
			if tc.wrap != nil {
				s = tc.wrap(s)
			}
			got, err := protocol.ParseJoinToken(s)
			if err != nil {
				t.Fatalf("ParseJoinToken(%q): %v", s, err)
			}
			if got != tc.tok {
				t.Errorf("got %+v, want %+v", got, tc.tok)
			}
		})
	}
}

func TestJoinTokenWireFormat(t *testing.T) {
	tok := sampleToken()
	raw := concat([]byte{1}, tok.ID[:], tok.Secret[:], tok.CAFingerprint[:])
	if got, want := tok.String(), rawToken(raw); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := tok.IDString(), "0102030405060708"; got != want {
		t.Errorf("IDString got %q, want %q", got, want)
	}
}

func TestParseJoinTokenErrors(t *testing.T) {
	tok := sampleToken()
	good := tok.String()
	raw := concat([]byte{1}, tok.ID[:], tok.Secret[:], tok.CAFingerprint[:])
	version := func(v byte) string {
		r := bytes.Clone(raw)
		r[0] = v
		return rawToken(r)
	}
	body := good[len(protocol.JoinTokenPrefix):]
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"white space only", " \n"},
		{"prefix only", protocol.JoinTokenPrefix},
		{"no prefix", body},
		{"other prefix", "tjt2_" + body},
		{"upper-case prefix", "TJT1_" + body},
		{"one byte short", rawToken(raw[:len(raw)-1])},
		{"one byte long", rawToken(append(bytes.Clone(raw), 0))},
		{"one character short", good[:len(good)-1]},
		{"padded", protocol.JoinTokenPrefix + base64.URLEncoding.EncodeToString(raw)},
		{"standard alphabet", protocol.JoinTokenPrefix + strings.NewReplacer("-", "+", "_", "/").Replace(body) + "+/"},
		{"invalid character", good[:20] + "*" + good[21:]},
		{"inner space", good[:20] + " " + good[20:]},
		{"version 0", version(0)},
		{"version 2", version(2)},
		{"version 255", version(255)},
		{"not UTF-8", protocol.JoinTokenPrefix + "\xff\xfe" + body[2:]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.ParseJoinToken(tc.in)
			checkCode(t, err, protocol.ErrInvalidToken)
			if got != (protocol.JoinToken{}) {
				t.Errorf("got token %+v with the error, want the zero token", got)
			}
		})
	}
}

// TestParseJoinTokenTruncated cuts a token at every character.
func TestParseJoinTokenTruncated(t *testing.T) {
	s := sampleToken().String()
	for i := range len(s) {
		if got, err := protocol.ParseJoinToken(s[:i]); err == nil {
			t.Errorf("at %d: got %+v, want an error", i, got)
		}
	}
}

func TestJoinTokenSecret(t *testing.T) {
	tok := sampleToken()
	sum := sha256.Sum256(tok.Secret[:])
	if got := tok.SecretHash(); !bytes.Equal(got, sum[:]) {
		t.Errorf("SecretHash got %x, want %x", got, sum)
	}
	other := tok
	other.Secret[31] ^= 1
	tests := []struct {
		name string
		hash []byte
		want bool
	}{
		{"own hash", tok.SecretHash(), true},
		{"hash of another secret", other.SecretHash(), false},
		{"secret itself, not its hash", tok.Secret[:], false},
		{"nil", nil, false},
		{"empty", []byte{}, false},
		{"truncated hash", tok.SecretHash()[:31], false},
		{"hash with a byte appended", append(tok.SecretHash(), 0), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tok.SecretMatches(tc.hash); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	der := []byte("not really DER")
	fp := protocol.Fingerprint(der)
	if want := sha256.Sum256(der); fp != want {
		t.Errorf("got %x, want %x", fp, want)
	}
	var zero [32]byte
	if got, want := protocol.FormatFingerprint(zero), "sha256:"+strings.Repeat("00", 32); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	fp = [32]byte{0xab, 0x01}
	if got, want := protocol.FormatFingerprint(fp), "sha256:ab01"+strings.Repeat("00", 30); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
