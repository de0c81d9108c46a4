// Package e2e runs Tether's real binaries for end-to-end tests. It builds
// tether-relay, tether-agent and tetherctl once per test binary (Build),
// starts them as processes whose output is kept and shown when a test
// fails (Start, StartRelay, RunAgent), and writes the agents'
// configurations. The end-to-end tests in test/ and the fault suite in
// test/faults share it.
//
// Every process is killed when its test ends, and by the kernel when the
// test process dies (on Linux), so an interrupted run leaves nothing
// behind. Every listener is on a port free at the time it is chosen, never
// a default port.
package e2e
