package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A request body the API cannot take is refused with a message in the
// API's terms, its field names and JSON's kinds of value, never Go's
// types and struct fields (encoding/json's own: "cannot unmarshal string
// into Go struct field .limits.max_streams of type int").
func TestRequestBodyProblemsInAPITerms(t *testing.T) {
	type body struct {
		Name   string `json:"name"`
		Limits struct {
			MaxStreams int `json:"max_streams"`
		} `json:"limits"`
		Tenants []string `json:"tenants"`
		Enabled bool     `json:"enabled"`
	}
	for in, want := range map[string]string{
		`{"limits":{"max_streams":"ten"}}`: `field "limits.max_streams": want a number, got a JSON string`,
		`{"name":7}`:                       `field "name": want a string, got a JSON number`,
		`{"tenants":"acme"}`:               `field "tenants": want a list, got a JSON string`,
		`{"enabled":"yes"}`:                `field "enabled": want true or false, got a JSON string`,
		`{"limits":[]}`:                    `field "limits": want an object, got a JSON array`,
		`[1]`:                              `want an object, got a JSON array`,
		`{"name":"a",}`:                    `not valid JSON at byte 13`,
		`{"name":"a"`:                      `not valid JSON: it ends too soon`,
		`{"nmae":"a"}`:                     `unknown field "nmae"`,
		`{"name":"a"} {}`:                  `more than one JSON value`,
	} {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/x", strings.NewReader(in))
		req.Header.Set("Content-Type", "application/json")
		var v body
		e := decodeJSON(req, &v)
		if e == nil {
			t.Errorf("%s: accepted", in)
			continue
		}
		if e.Status != http.StatusBadRequest || e.Code != CodeBadRequest || !strings.Contains(e.Message, want) {
			t.Errorf("%s: %d %s %q; want 400 bad_request saying %q", in, e.Status, e.Code, e.Message, want)
		}
		for _, goTerm := range []string{"Go struct", "Go value", "of type", "json:", "int", "console."} {
			if strings.Contains(e.Message, goTerm) {
				t.Errorf("%s: %q names Go's terms (%q)", in, e.Message, goTerm)
			}
		}
	}
}
