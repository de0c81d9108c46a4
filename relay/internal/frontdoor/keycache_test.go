package frontdoor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// signedBy signs payload with key under key id kid.
func signedBy(t *testing.T, key *ecdsa.PrivateKey, kid, payload string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := signer.Sign([]byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestKeyCacheFetchBlocksNoCachedKey: while a fetch of the issuer's keys
// is under way (a token named a key the relay does not know, and the
// issuer is slow), a token signed with a key already cached verifies at
// once, and another token for an unknown key waits no longer than its own
// context. The cache held its lock across the fetch, so every bearer
// request waited up to the fetch's 5 s, and anyone could start one every
// 10 s with a token naming a made-up key.
func TestKeyCacheFetchBlocksNoCachedKey(t *testing.T) {
	known, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := jose.JSONWebKey{Key: &known.PublicKey, KeyID: "known", Algorithm: string(jose.ES256), Use: "sig"}
	asked, release := make(chan struct{}, 4), make(chan struct{})
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		asked <- struct{}{}
		<-release
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	}))
	defer issuer.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	k := &keyCache{issuer: issuer.URL, jwksURL: issuer.URL + "/jwks", file: filepath.Join(t.TempDir(), "keys.json"),
		client: issuer.Client(), now: time.Now, keys: []jose.JSONWebKey{pub}, fetched: time.Now()}
	ctx := context.Background()

	fetched := make(chan error, 1)
	go func() {
		_, err := k.VerifySignature(ctx, signedBy(t, stranger, "stranger", "first"))
		fetched <- err
	}()
	<-asked // the fetch is under way, held by the issuer

	got, err := within(t, "a token of a cached key during a fetch", func() ([]byte, error) {
		return k.VerifySignature(ctx, signedBy(t, known, "known", "cached"))
	})
	if err != nil || string(got) != "cached" {
		t.Errorf("a token of a cached key during a fetch: %q, %v", got, err)
	}
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := within(t, "a token of an unknown key, its context ended", func() ([]byte, error) {
		return k.VerifySignature(gone, signedBy(t, stranger, "other", "second"))
	}); err == nil {
		t.Error("a token of an unknown key verified")
	}

	close(release)
	select {
	case err := <-fetched:
		if err == nil || !strings.Contains(err.Error(), "not one of the issuer's keys") {
			t.Errorf("the unknown key after the fetch: %v, want it named as not one of the issuer's keys", err)
		}
	case <-time.After(watchdog):
		t.Fatal("the request that started the fetch did not return once the issuer answered")
	}
	if len(asked) != 0 {
		t.Errorf("%d more fetches", len(asked))
	}
}

// watchdog bounds each wait of these tests for something that must not
// wait on the issuer.
const watchdog = 5 * time.Second

func within(t *testing.T, what string, f func() ([]byte, error)) ([]byte, error) {
	t.Helper()
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := f()
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-time.After(watchdog):
		t.Fatalf("%s did not return within %v", what, watchdog)
		return nil, errors.New("unreachable")
	}
}
