package agent

import "testing"

// FuzzParseConfig: a config file is hostile input; parsing never panics, and
// a config that parses also validates (ParseConfig validates).
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"state_dir: /x\nservices: {db: 10.0.0.5:5432}\n",
		"relays: [r:7443]\nstate_dir: /x\ntransport: auto\nconnections: 2\nservices:\n  api: {address: a:1}\n",
		"state_dir: /x\nreconnect: {initial: 1s, max: 2s}\ndial_timeout: 5s\nlog: {level: debug, format: json}\n",
		"state_dir: /x\nproxy: http://agent:secret@proxy.corp:3128\nno_proxy: .internal,10.0.0.0/8\n",
		"state_dir: /x\nproxy: https://proxy.corp\ntransport: tcp\n", "state_dir: /x\nproxy: direct\ntransport: quic\n",
		"state_dir: /x\nproxy: http://a:b@p:1\ntransport: quic\n", "state_dir: /x\nproxy: socks5://p:1080\n",
		"state_dir: /x\nproxy: \"http://u:p%zz@[::1:3128/x?y#z\"\n", "state_dir: /x\nproxy: proxy.corp:8080\n",
		"services: [1, 2]\n", "state_dir: [\n", "", "bogus: 1\n", "state_dir: /x\nservices: {db: {address: a:1, extra: 2}}\n",
		"state_dir: /x\nservices: {db: {address: a:1, backends: [billing, rep-*]}}\n", "state_dir: /x\nservices: {db: {address: a:1, backends: '*'}}\n",
		"state_dir: /x\nproxy: https://proxy.corp:3128\nproxy_ca_file: /nonexistent/proxy-ca.pem\n",
		"state_dir: /x\nproxy: http://proxy.corp:3128\nproxy_ca_file: /nonexistent/proxy-ca.pem\n", "state_dir: /x\nproxy: direct\nproxy_ca_file: .\n",
		"state_dir: /x\nproxy_ca_file: [a]\n", "state_dir: /x\nproxy_ca_file: /dev/null\n",
		"state_dir: /x\naccess_log: {key_rotation: 24h}\n", "state_dir: /x\naccess_log: {key_rotation: off}\n", "state_dir: /x\naccess_log: {key_rotation: [1h]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted a config that does not validate: %v", err)
		}
	})
}
