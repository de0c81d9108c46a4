package console

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzConnectForm: whatever the "add a connector" form is sent, it is
// refused or turned into commands that hold nothing a shell would act on
// besides what the commands themselves use.
func FuzzConnectForm(f *testing.F) {
	f.Add("acme", "24h", "1", "relay.example.com:7443", "https://relay.example.com:7444", "db=10.0.0.5:5432\napi=[2001:db8::1]:443")
	f.Add("acme", "1h", "2", "[::1]:7443", "", "")
	f.Add("acme", "1h", "1", "relay:7443;id", "https://x:1/$(id)", "a=b:1`id`")
	// Near misses: one hostile field in a form otherwise accepted.
	f.Add("acme", "1h", "1", "re;lay:7443", "", "")
	f.Add("acme", "1h", "1", "relay:7443", "https://re$(id)lay:7444", "")
	f.Add("acme", "1h", "1", "relay:7443", "https://relay:7444/a'b", "")
	f.Add("acme", "1h", "1", "relay:7443", "", "db=h`id`:1")
	f.Add("acme", "1h", "1", "relay:7443", "", "db=h:1 --force")
	f.Fuzz(func(t *testing.T, tenant, ttl, uses, relay, download, services string) {
		form := url.Values{"tenant": {tenant}, "ttl": {ttl}, "uses": {uses}, "relay": {relay}, "download": {download}, "services": {services}}
		req, err := http.NewRequest(http.MethodPost, "/ui/connect", strings.NewReader(form.Encode()))
		if err != nil {
			t.Skip()
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		f, err := parseConnectForm(req)
		if err != nil {
			return
		}
		linux, windows, enrol := installCommands(f, Connector{InstallSHA256: strings.Repeat("0", 64)})
		for _, cmd := range []string{linux, windows, enrol} {
			// The commands' own syntax: && between steps, one pipe, quotes
			// around the hash line and around bracketed addresses.
			rest := strings.ReplaceAll(strings.TrimPrefix(cmd, ".\\install.ps1"), " && ", " ")
			rest = strings.Replace(rest, " | sha256sum", " sha256sum", 1)
			if strings.ContainsAny(rest, ";|&$`\\\n\r\"<>(){}*?!#~") {
				t.Fatalf("command %q from form %v holds shell syntax", cmd, form)
			}
			if strings.Count(cmd, "'")%2 != 0 {
				t.Fatalf("command %q has an unbalanced quote", cmd)
			}
		}
	})
}
