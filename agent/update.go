package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"aead.dev/minisign"
	"github.com/minio/selfupdate"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/protocol/transport"
)

// Self-update. The relay offers a signed release on the control stream;
// the updater checks the signed manifest (trusted key, platform, channel,
// expiry, newer than itself, not failed here before), asks for the binary,
// receives it on a stream the relay opens, checks its size and SHA-256
// while it is still a file in the state directory, and only then applies
// it: minio/selfupdate checks it again (the checksum and a minisign
// Verifier of the binary's own signature) and writes it beside the
// binary, and it is moved in so that the binary's path holds a whole
// binary at every moment, keeping the previous binary next to it
// (installBinary).
//
// The new binary is then tried while this process keeps serving: it runs
// as a child in trial mode, connects once to a relay, writes a marker and
// exits 0. A child that crashes, exits otherwise, or does not connect
// within the health timeout fails the trial: the previous binary is put
// back, the version is recorded as failed (never tried again) and the
// failure reported. A trial cut short because the agent is stopping is no
// verdict on the binary: the previous one is put back, and the version is
// neither recorded as failed nor reported as one. Only a binary that
// passed its trial is restarted into (exec in the foreground, exit
// ExitRestart under a service manager); the pending marker makes the
// restarted binary confirm itself, and restore the previous one if it
// does not connect within the health timeout.
//
// A confirmed binary is then on probation: pending.json stays, marked
// "probation", until one process of the new version has run for
// UpdateConfig.Probation. Each start marks it running and each clean stop
// clears the mark, so a start that finds the mark set follows a stop
// without a clean exit (a crash, a kill, a power loss); the
// maxUncleanStops-th such stop since the binary took over brings the
// previous binary back and records the version as failed, as a failed
// trial does. A trial proves a binary connects once; this catches one
// that crashes minutes later, or at every start, which the service
// manager would otherwise restart for ever.
//
// Files, in <state_dir>/update/: pending.json (an update between apply and
// confirmation), failed.json (versions never to try again),
// interrupted.json (updates the agent stopped in before a verdict, by
// version),
// tether-agent.unverified (a download before its checks), tether-agent.minisig,
// trial-ok (written by a passing trial). Next to the binary:
// <binary>.previous, and .<binary>.new while an update is being applied.

const (
	updateDirName   = "update"
	pendingFile     = "pending.json"
	failedFile      = "failed.json"
	interruptedFile = "interrupted.json"
	// maxUncleanStops is how many stops without a clean exit a new
	// binary on probation may have before the previous one comes back.
	maxUncleanStops = 3
	// maxInterruptedTrials is how many times the agent may stop during an
	// update to one version, before the trial's verdict, until the
	// version is recorded as failed: a binary whose trial brings the
	// machine or the agent down (memory, a crash of the service manager)
	// is not tried for ever.
	maxInterruptedTrials = 3
	unverifiedFile       = "tether-agent.unverified"
	binarySigFile        = "tether-agent.minisig"
	trialOKFile          = "trial-ok"
	previousSuffix       = ".previous"
	trialEnv             = "TETHER_UPDATE_TRIAL"
	// trialParentEnv gives a trial the pid of the agent that started it
	// (Config.TrialParent).
	trialParentEnv   = "TETHER_UPDATE_TRIAL_PARENT"
	statusSendWindow = 30 * time.Second
	// trialStopGrace is how long, after the trial child failed, the
	// updater waits to see whether the agent is stopping: a stop signal
	// sent to the whole service (systemd's control group, a terminal's
	// process group) reaches the child too, and the child, stopped before
	// it connected, may exit before this process sees its own signal.
	trialStopGrace = 2 * time.Second
)

// errTrialStopped is the trial's end when the agent stops during it: not a
// failure of the new binary.
var errTrialStopped = errors.New("the agent stopped during the trial of the new binary")

// pending is an update between apply and confirmation.
type pending struct {
	ID       string `json:"id"`
	From     string `json:"from"`
	To       string `json:"to"`
	State    string `json:"state"` // "trial", "applied", "probation", "rolled_back"
	Binary   string `json:"binary"`
	Previous string `json:"previous"`
	Reason   string `json:"reason,omitempty"`
	Message  string `json:"message,omitempty"`
	// Running is set while a process of version To runs (from its start
	// to its clean stop): found set at a start, the last process of To
	// stopped without a clean exit, counted in Unclean.
	Running bool `json:"running,omitempty"`
	Unclean int  `json:"unclean,omitempty"`
}

type offerOn struct {
	s *session
	m *protocol.UpdateOffer
}

// fetch is a download the updater waits for.
type fetch struct {
	id     string
	stream chan transport.Stream // handed over by handleStream
	// cancel is the relay's answer that it will not send the binary
	// (the release was removed since it was offered), handed over by
	// cancelled.
	cancel chan *protocol.UpdateCancel
	done   chan struct{} // closed when the updater is finished with the stream
}

type updater struct {
	a   *Agent
	log *slog.Logger
	// keys are the release keys trusted now: those built in and the config
	// file's, which a changed file replaces at once (reloadKeys), so that
	// a key a tenant removes is trusted no longer; fileKeys are the file's.
	keysMu   sync.Mutex
	keys     release.Keys
	fileKeys []string
	dir      string
	exe      string // the binary's path when the agent started
	offers   chan offerOn

	mu    sync.Mutex // guards fetch
	fetch *fetch

	connectedOnce sync.Once
	connected     chan struct{} // closed at the first Welcome

	restart func(*RestartError) // stops Run with a restart

	probationEnds atomic.Pointer[time.Time] // when this run's probation ends (status)
}

func newUpdater(a *Agent, restart func(*RestartError)) (*updater, error) {
	keys, err := release.ParseKeys(append(append([]string(nil), a.cfg.BuiltinUpdateKeys...), a.cfg.Update.PublicKeys...))
	if err != nil {
		return nil, err
	}
	exe := a.cfg.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find own binary: %w", err)
		}
		if exe, err = filepath.EvalSymlinks(exe); err != nil {
			return nil, fmt.Errorf("find own binary: %w", err)
		}
	}
	return &updater{a: a, log: a.log.With("component", "update"), keys: keys, fileKeys: a.cfg.Update.PublicKeys, dir: filepath.Join(a.cfg.StateDir, updateDirName), exe: exe,
		offers: make(chan offerOn, 1), connected: make(chan struct{}), restart: restart}, nil
}

// reloadKeys makes the built-in keys and fileKeys, the release keys of a
// changed config file (validated), the keys trusted from now on. An offer
// being verified keeps the keys it started with.
func (u *updater) reloadKeys(fileKeys []string) {
	u.keysMu.Lock()
	defer u.keysMu.Unlock()
	if slices.Equal(fileKeys, u.fileKeys) {
		return
	}
	keys, err := release.ParseKeys(append(append([]string(nil), u.a.cfg.BuiltinUpdateKeys...), fileKeys...))
	if err != nil {
		// Validate parsed them; a key built into the binary did not
		// change. Trust no key rather than the removed ones.
		u.log.Error("update: the release keys of the changed config file do not parse; refusing every update until they do", "err", err)
		keys = nil
	}
	u.keys, u.fileKeys = keys, slices.Clone(fileKeys)
	u.log.Info("update: release keys reloaded from the config file", "keys", len(keys), "from_file", len(fileKeys))
}

// trustedKeys are the release keys trusted now.
func (u *updater) trustedKeys() release.Keys {
	u.keysMu.Lock()
	defer u.keysMu.Unlock()
	return u.keys
}

// sessionUp is called at each Welcome.
func (u *updater) sessionUp() { u.connectedOnce.Do(func() { close(u.connected) }) }

// offered hands an offer from the control stream to run (dropped when
// one is being handled: the relay offers again).
func (u *updater) offered(s *session, m *protocol.UpdateOffer) {
	select {
	case u.offers <- offerOn{s, m}:
	default:
		if err := s.send(&protocol.UpdateStatus{ID: m.ID, Version: m.Version, State: protocol.UpdateRefused, Reason: release.ReasonBusy, Message: "another update is in progress"}); err != nil {
			u.log.Debug("send update status", "err", err)
		}
	}
}

// run handles offers one at a time until ctx ends. At start it finishes an
// update left pending by the previous process.
func (u *updater) run(ctx context.Context) {
	if u.a.cfg.UpdateTrial != "" {
		u.runTrial(ctx)
		return
	}
	if err := os.MkdirAll(u.dir, 0o700); err != nil {
		u.log.Error("self-update disabled: cannot create its directory", "dir", u.dir, "err", err)
		return
	}
	var probation <-chan time.Time
	if u.confirm(ctx) {
		t := time.NewTimer(u.a.cfg.Update.Probation)
		defer t.Stop()
		probation = t.C
		ends := time.Now().Add(u.a.cfg.Update.Probation)
		u.probationEnds.Store(&ends)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-probation:
			probation = nil
			u.endProbation()
		case o := <-u.offers:
			u.handle(ctx, o.s, o.m)
		}
	}
}

// runTrial is the whole job of a trial child: connect once, say so, stop.
func (u *updater) runTrial(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-u.connected:
	}
	if err := os.WriteFile(u.a.cfg.UpdateTrial, []byte(u.a.cfg.Version), 0o600); err != nil {
		u.log.Error("update trial: write marker", "err", err)
	}
	u.log.Info("update trial: connected to a relay; exiting so the parent restarts into this version", "version", u.a.cfg.Version)
	u.restart(nil)
}

// trialOverrun bounds how long a trial may run beyond its health
// timeout (and at most as long again as the timeout) before it stops on
// its own: by then the agent that started it has killed it, or is gone.
const trialOverrun = 10 * time.Second

// trialParentPoll is how often a trial looks for the agent that started
// it.
const trialParentPoll = 200 * time.Millisecond

// watchTrial stops a trial (stop) whose parent agent is gone, or that has
// outlived its health timeout, until ctx ends. A trial runs without the
// state directory's lock, under the lock of the agent that started it
// and waits for it; without that agent (killed, crashed) nothing would
// end it if it never connected, and it would keep connecting as the
// agent's identity, unlocked, beside the agent started next.
func (u *updater) watchTrial(ctx context.Context, stop context.CancelFunc) {
	hc := u.a.cfg.Update.HealthTimeout
	bound := time.NewTimer(hc + min(hc, trialOverrun))
	defer bound.Stop()
	var poll <-chan time.Time
	if u.a.cfg.TrialParent > 0 {
		t := time.NewTicker(trialParentPoll)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-bound.C:
			u.log.Error("update trial: still running past the health timeout, by when the agent that started it gave up on it; stopping", "health_timeout", hc)
			stop()
			return
		case <-poll:
			if trialParentGone(u.a.cfg.TrialParent) {
				u.log.Error("update trial: the agent that started this trial is gone; stopping", "parent_pid", u.a.cfg.TrialParent)
				stop()
				return
			}
		}
	}
}

// trialParentGone reports whether the process parent, which started this
// one, is gone: it has ended (or no longer exists), or this process has
// another parent now (on Unix an orphan is given another).
func trialParentGone(parent int) bool {
	if runtime.GOOS != "windows" && os.Getppid() != parent {
		return true
	}
	return processGone(parent)
}

// report sends a status on s, or on any live session when s is nil or
// gone, waiting a while for one.
func (u *updater) report(ctx context.Context, s *session, m *protocol.UpdateStatus) {
	lvl := slog.LevelInfo
	if m.State == protocol.UpdateRefused || m.State == protocol.UpdateRolledBack || m.State == protocol.UpdateFailed {
		lvl = slog.LevelWarn
	}
	u.log.Log(ctx, lvl, "update "+m.State, "version", m.Version, "from", m.From, "reason", m.Reason, "message", m.Message)
	if s != nil && s.send(m) == nil {
		return
	}
	deadline := time.Now().Add(statusSendWindow)
	for time.Now().Before(deadline) {
		if s := u.a.anyLive(); s != nil && s.send(m) == nil {
			return
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return
		}
	}
	u.log.Warn("update status not delivered: no relay connection", "state", m.State, "version", m.Version)
}

func (a *Agent) anyLive() *session {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	for s := range a.live {
		return s
	}
	return nil
}

func (u *updater) refuse(ctx context.Context, s *session, m *protocol.UpdateOffer, err error) {
	reason := release.ReasonOf(err)
	if reason == "" {
		reason = release.ReasonDownload
	}
	u.report(ctx, s, &protocol.UpdateStatus{ID: m.ID, Version: m.Version, From: u.a.cfg.Version, State: protocol.UpdateRefused, Reason: reason, Message: err.Error()})
}

func (u *updater) target() release.Target {
	return release.Target{OS: runtime.GOOS, Arch: runtime.GOARCH, Channel: u.a.cfg.Update.Channel, Version: u.a.cfg.Version, Now: time.Now(), Failed: u.failed()}
}

// handle takes one offer from verification to restart or rollback.
func (u *updater) handle(ctx context.Context, s *session, o *protocol.UpdateOffer) {
	if p, _ := u.loadPending(); p != nil {
		// One update at a time, its probation included: taking another
		// would make this binary the previous one and lose the one this
		// version's probation would bring back. Busy is not final: the
		// relay offers the release again.
		msg := "an earlier update is still pending"
		if p.State == "probation" {
			msg = fmt.Sprintf("version %s is on probation (update.probation: %v from its start); the release is taken once it ends", p.To, u.a.cfg.Update.Probation)
		}
		u.refuse(ctx, s, o, &release.Refusal{Reason: release.ReasonBusy, Message: msg})
		return
	}
	// 1. The signed manifest, before anything is downloaded.
	m, key, err := u.trustedKeys().Verify(o.Manifest, o.ManifestSignature)
	if err == nil {
		err = u.target().Check(m)
	}
	if err == nil && m.Version != o.Version {
		err = &release.Refusal{Reason: release.ReasonManifest, Message: fmt.Sprintf("the offer names version %s but its signed manifest %s", o.Version, m.Version)}
	}
	if err != nil {
		u.refuse(ctx, s, o, err)
		return
	}
	log := u.log.With("version", m.Version, "offer", o.ID)
	log.Info("update offered: manifest verified; downloading", "key", release.KeyID(key.ID()), "sha256", m.SHA256, "size", m.Size)
	// 2. The binary, into a file of the state directory, checked there.
	path, err := u.download(ctx, s, o, m)
	if err != nil {
		u.refuse(ctx, s, o, err)
		return
	}
	u.report(ctx, s, &protocol.UpdateStatus{ID: o.ID, Version: m.Version, From: u.a.cfg.Version, State: protocol.UpdateDownloaded})
	// 3. Apply, keeping the previous binary, then try it.
	p := &pending{ID: o.ID, From: u.a.cfg.Version, To: m.Version, State: "trial", Binary: u.exe, Previous: u.exe + previousSuffix}
	if err := u.savePending(p); err != nil {
		u.report(ctx, s, &protocol.UpdateStatus{ID: o.ID, Version: m.Version, From: p.From, State: protocol.UpdateFailed, Reason: release.ReasonApply, Message: err.Error()})
		return
	}
	if err := u.apply(path, m, key, o.BinarySignature); err != nil {
		u.removePending()
		u.report(ctx, s, &protocol.UpdateStatus{ID: o.ID, Version: m.Version, From: p.From, State: protocol.UpdateFailed, Reason: release.ReasonApply, Message: err.Error()})
		return
	}
	log.Info("update applied; trying the new binary", "binary", u.exe, "previous", p.Previous, "health_timeout", u.a.cfg.Update.HealthTimeout)
	if !u.tryApplied(ctx, s, p) {
		return
	}
	p.State = "applied"
	if err := u.savePending(p); err != nil {
		u.rollback(ctx, s, p, "record the update: "+err.Error())
		return
	}
	u.report(ctx, s, &protocol.UpdateStatus{ID: o.ID, Version: m.Version, From: p.From, State: protocol.UpdateApplied})
	u.restart(&RestartError{Path: u.exe, Why: "run version " + m.Version})
}

// download asks the relay for the binary and writes it to a file of the
// update directory, within the size the manifest gives and the download
// timeout; it returns the file once its size and SHA-256 match.
func (u *updater) download(ctx context.Context, s *session, o *protocol.UpdateOffer, m release.Manifest) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, u.a.cfg.Update.DownloadTimeout)
	defer cancel()
	f := &fetch{id: o.ID, stream: make(chan transport.Stream, 1), cancel: make(chan *protocol.UpdateCancel, 1), done: make(chan struct{})}
	u.mu.Lock()
	u.fetch = f
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.fetch = nil
		u.mu.Unlock()
		close(f.done)
	}()
	if err := s.send(&protocol.UpdateFetch{ID: o.ID, Version: m.Version}); err != nil {
		return "", &release.Refusal{Reason: release.ReasonDownload, Message: "ask for the binary: " + err.Error()}
	}
	var st transport.Stream
	select {
	case st = <-f.stream:
	case c := <-f.cancel:
		// Not a verdict on the release: it is not recorded as failed,
		// and taken again if the relay offers it again.
		// The relay's words are clipped, as its other text is, before
		// they go to the log and back to the relay.
		return "", &release.Refusal{Reason: release.ReasonRemoved, Message: "download cancelled by the relay: " + protocol.Clip(c.Err().Error(), maxCancelText)}
	case <-ctx.Done():
		return "", &release.Refusal{Reason: release.ReasonDownload, Message: fmt.Sprintf("the relay did not start sending the binary within %v", u.a.cfg.Update.DownloadTimeout)}
	}
	dl, _ := ctx.Deadline()
	st.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	path := filepath.Join(u.dir, unverifiedFile)
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", &release.Refusal{Reason: release.ReasonDownload, Message: err.Error()}
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(st, m.Size+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	fail := func(reason, format string, args ...any) (string, error) {
		os.Remove(path)
		return "", &release.Refusal{Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	switch {
	case n > m.Size:
		return fail(release.ReasonSize, "the relay sent more than the %d bytes the manifest gives: download stopped", m.Size)
	case err != nil && (ctx.Err() != nil || !time.Now().Before(dl)):
		return fail(release.ReasonDownload, "download too slow: %d of %d bytes after %v", n, m.Size, u.a.cfg.Update.DownloadTimeout)
	case err != nil:
		return fail(release.ReasonDownload, "download failed after %d of %d bytes: %v", n, m.Size, err)
	case n < m.Size:
		return fail(release.ReasonSize, "the download ended after %d of the %d bytes the manifest gives", n, m.Size)
	case hex.EncodeToString(h.Sum(nil)) != m.SHA256:
		return fail(release.ReasonHash, "the binary's SHA-256 %x is not the manifest's %s: it was altered", h.Sum(nil), m.SHA256)
	}
	return path, nil
}

// maxCancelText bounds the relay's reason for an UpdateCancel in the
// agent's refusal of the update.
const maxCancelText = 512

// cancelled takes the relay's answer to a fetch that it will not send the
// binary (the release was removed since it was offered): the download of
// that offer ends at once. One that names no download under way is
// ignored.
func (u *updater) cancelled(m *protocol.UpdateCancel) {
	u.mu.Lock()
	f := u.fetch
	u.mu.Unlock()
	if f == nil || f.id != m.ID {
		u.log.Debug("update: the relay cancelled a download this agent is not making", "offer", m.ID, "version", m.Version)
		return
	}
	select {
	case f.cancel <- m:
	default: // already cancelled
	}
}

// updateStream serves a stream the relay opened for a release binary.
func (u *updater) updateStream(st transport.Stream, h protocol.StreamHeader) {
	u.mu.Lock()
	f := u.fetch
	u.mu.Unlock()
	if u.a.cfg.UpdateTrial != "" || f == nil || f.id != h.RequestID {
		refuse(st, protocol.Errorf(protocol.CodeNotAllowed, "this agent is not downloading release %q", h.RequestID))
		return
	}
	if err := protocol.WriteReply(st, protocol.Reply{}); err != nil {
		return
	}
	select {
	case f.stream <- st:
		<-f.done
	case <-f.done:
	}
}

// apply replaces the binary with the verified download. selfupdate checks
// the bytes (the checksum and the minisign Verifier of the binary's own
// signature) and writes them beside the binary as .<name>.new before
// anything is renamed; installBinary then moves them in (update_unix.go,
// update_other.go). A .new left by a failed write (a full disk) is
// removed.
func (u *updater) apply(path string, m release.Manifest, key minisign.PublicKey, binarySig []byte) error {
	sigPath := filepath.Join(u.dir, binarySigFile)
	if err := os.WriteFile(sigPath, binarySig, 0o600); err != nil {
		return err
	}
	keyText, _ := key.MarshalText()
	v := selfupdate.NewVerifier()
	if err := v.LoadFromFile(sigPath, string(keyText)); err != nil {
		return fmt.Errorf("binary signature: %w", err)
	}
	sum, _ := hex.DecodeString(m.SHA256)
	mode := os.FileMode(0o755)
	if fi, err := os.Stat(u.exe); err == nil {
		mode = fi.Mode().Perm()
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	defer os.Remove(path)
	opts := selfupdate.Options{TargetPath: u.exe, TargetMode: mode, Checksum: sum, Verifier: v, OldSavePath: u.exe + previousSuffix}
	newPath := newBinaryPath(u.exe)
	if err := selfupdate.PrepareAndCheckBinary(io.LimitReader(f, m.Size), opts); err != nil {
		os.Remove(newPath)
		return err
	}
	if err := installBinary(newPath, opts); err != nil {
		os.Remove(newPath)
		return err
	}
	return nil
}

// newBinaryPath is where selfupdate.PrepareAndCheckBinary writes the
// checked binary: .<name>.new beside exe.
func newBinaryPath(exe string) string {
	return filepath.Join(filepath.Dir(exe), "."+filepath.Base(exe)+".new")
}

// trial runs the new binary in trial mode and waits until it has
// connected to a relay and exited, for at most the health timeout.
func (u *updater) trial(ctx context.Context, version string) error {
	marker := filepath.Join(u.dir, trialOKFile)
	os.Remove(marker)
	cmd := exec.Command(u.exe, u.a.cfg.Args...)
	cmd.Env = append(os.Environ(), trialEnv+"="+marker, trialParentEnv+"="+strconv.Itoa(os.Getpid()))
	cmd.Stdout, cmd.Stderr = u.a.cfg.TrialOutput, u.a.cfg.TrialOutput
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the new binary: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t := time.NewTimer(u.a.cfg.Update.HealthTimeout)
	defer t.Stop()
	var werr error
	select {
	case werr = <-exited:
	case <-t.C:
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("the new binary did not connect to a relay within %v", u.a.cfg.Update.HealthTimeout)
	case <-ctx.Done():
		cmd.Process.Kill()
		<-exited
		return errTrialStopped
	}
	got, _ := os.ReadFile(marker)
	os.Remove(marker)
	var err error
	switch {
	case werr != nil:
		err = fmt.Errorf("the new binary failed before connecting to a relay: %v", werr)
	case string(got) != version:
		err = fmt.Errorf("the new binary exited without connecting to a relay as version %s", version)
	default:
		return nil
	}
	// The child may have been stopped with this process.
	grace := time.NewTimer(trialStopGrace)
	defer grace.Stop()
	select {
	case <-ctx.Done():
		return errTrialStopped
	case <-grace.C:
	}
	return err
}

// tryApplied runs the trial of the applied version p.To and reports
// whether it passed. When it did not, the previous binary is put back: a
// failed trial is a rollback (the version is recorded as failed), a trial
// cut short by the agent's stop is not.
func (u *updater) tryApplied(ctx context.Context, s *session, p *pending) bool {
	err := u.trial(ctx, p.To)
	switch {
	case err == nil:
		return true
	case errors.Is(err, errTrialStopped):
		u.abandonTrial(ctx, s, p)
	default:
		u.rollback(ctx, s, p, err.Error())
	}
	return false
}

// abandonTrial puts the previous binary back after a trial cut short by
// the agent's stop. The new binary did not fail: its version is not
// recorded as failed, and the relay is told the agent was busy, which
// does not count against the rollout, so it offers the release again.
func (u *updater) abandonTrial(ctx context.Context, s *session, p *pending) {
	if err := u.restorePrevious(p); err != nil {
		// pending.json stays: the binary that starts next settles the
		// update (the new one confirms itself once connected, or puts the
		// previous one back after the health timeout).
		u.log.Error("update: the agent stopped during the trial of the new binary and cannot restore the previous binary; the next start settles the update", "version", p.To, "err", err)
		return
	}
	u.removePending()
	u.report(ctx, s, &protocol.UpdateStatus{ID: p.ID, Version: p.To, From: p.From, State: protocol.UpdateRefused, Reason: release.ReasonBusy,
		Message: errTrialStopped.Error() + "; the previous binary is back and the release is tried again when offered"})
}

// rollback puts the previous binary back and records the version as failed.
func (u *updater) rollback(ctx context.Context, s *session, p *pending, why string) {
	if err := u.restorePrevious(p); err != nil {
		u.log.Error("update: cannot restore the previous binary", "err", err)
		why += "; restoring the previous binary failed: " + err.Error()
	}
	u.addFailed(p.To, why)
	u.removePending()
	u.report(ctx, s, &protocol.UpdateStatus{ID: p.ID, Version: p.To, From: p.From, State: protocol.UpdateRolledBack, Reason: release.ReasonUnhealthy, Message: why})
}

// restorePrevious puts the previous binary back at the binary's path
// (restoreBinary, per system) so that the path never stays empty and the
// service still has a binary to start.
func (u *updater) restorePrevious(p *pending) error {
	if _, err := os.Stat(p.Previous); err != nil {
		return err
	}
	return restoreBinary(p.Previous, p.Binary)
}

// rename is os.Rename; a test replaces it to make one rename fail.
var rename = os.Rename

// confirm finishes an update the previous process left pending: this
// process is the new version (confirm it once connected, or restore the
// previous binary after the health timeout; count a stop without a clean
// exit while on probation), or the previous one after a rollback (report
// it). It reports whether this process runs a new version on probation.
func (u *updater) confirm(ctx context.Context) bool {
	p, err := u.loadPending()
	if err != nil {
		u.log.Warn("update: unreadable pending update; ignoring it", "err", err)
		u.removePending()
		return false
	}
	if p == nil {
		return false
	}
	if p.To != u.a.cfg.Version {
		if p.State == "probation" {
			// The new version took over and confirmed itself, and another
			// binary was put in its place since (by hand): nothing to
			// settle, nothing to hold against the version.
			u.log.Warn("update: the version on probation no longer runs; another binary was put in its place; the update is over",
				"version", p.To, "running", u.a.cfg.Version)
			u.removePending()
			return false
		}
		// The previous binary runs: the new one was rolled back, or never
		// took over.
		why := p.Message
		if p.State == "trial" {
			// The previous process stopped (killed, the machine went down)
			// before its trial of the new binary gave a verdict, perhaps
			// before the new binary was even in place: no verdict on the
			// binary. It is offered again, unless such stops recur.
			n := u.interruptedAgain(p.To)
			if n < maxInterruptedTrials {
				u.log.Warn("update: the agent stopped during the update before the trial of the new binary ended; the previous binary runs, and the release is tried again when offered",
					"version", p.To, "times", n)
				u.removePending()
				if !u.waitConnected(ctx, 0) {
					return false
				}
				u.report(ctx, nil, &protocol.UpdateStatus{ID: p.ID, Version: p.To, From: p.From, State: protocol.UpdateRefused, Reason: release.ReasonBusy,
					Message: "the agent stopped during the update before the trial of the new binary ended; the release is tried again when offered"})
				return false
			}
			why = fmt.Sprintf("the agent stopped %d times during the update to %s before the trial of the new binary ended", n, p.To)
		}
		if why == "" {
			why = "the new binary did not take over"
		}
		u.addFailed(p.To, why)
		u.removePending()
		if !u.waitConnected(ctx, 0) {
			return false
		}
		u.report(ctx, nil, &protocol.UpdateStatus{ID: p.ID, Version: p.To, From: p.From, State: protocol.UpdateRolledBack, Reason: release.ReasonUnhealthy, Message: why})
		return false
	}
	// This process is the new version (begin counted its start).
	switch p.State {
	case "applied", "probation":
	default:
		return false // rolled back at this start (begin): the previous binary reports it
	}
	if p.State == "probation" {
		// Confirmed before (reported succeeded then).
		u.onProbation(p)
		return true
	}
	if u.waitConnected(ctx, u.a.cfg.Update.HealthTimeout) {
		p.State = "probation"
		if err := u.savePending(p); err != nil {
			u.log.Error("update: cannot record the new version's confirmation", "version", p.To, "err", err)
		}
		u.onProbation(p)
		u.report(ctx, nil, &protocol.UpdateStatus{ID: p.ID, Version: p.To, From: p.From, State: protocol.UpdateSucceeded})
		return true
	}
	if ctx.Err() != nil {
		return false // stopped before the verdict: the next start decides (Run clears the mark)
	}
	why := fmt.Sprintf("version %s did not connect to a relay within %v of starting", p.To, u.a.cfg.Update.HealthTimeout)
	u.log.Error("update: the new binary is unhealthy; restoring the previous one", "version", p.To, "previous", p.Previous)
	if err := u.restorePrevious(p); err != nil {
		u.log.Error("update: cannot restore the previous binary", "err", err)
		return false
	}
	p.State, p.Reason, p.Message, p.Running = "rolled_back", release.ReasonUnhealthy, why, false
	u.savePending(p)
	u.restart(&RestartError{Path: u.exe, Why: "run version " + p.From + " again"})
	return false
}

func (u *updater) onProbation(p *pending) {
	u.log.Info("update: the new version is on probation: it must run this long from a start before the update is final",
		"version", p.To, "probation", u.a.cfg.Update.Probation, "unclean_stops", p.Unclean, "previous_back_at", maxUncleanStops)
}

// begin runs as the agent starts, before anything that may fail: when
// this process is a new version being confirmed or on probation, it
// counts the last run's stop without a clean exit (its running mark still
// set), brings the previous binary back at the maxUncleanStops-th (the
// restart it asks for stops the agent), and marks this run. A start that
// fails after it (an exit with an error) leaves the mark set and counts
// at the next start, as a crash does; only a stop or restart asked for,
// and a relay's final refusal, clear it (stoppedCleanly, from Run).
func (u *updater) begin() {
	if u.a.cfg.UpdateTrial != "" {
		return
	}
	p, err := u.loadPending()
	if err != nil || p == nil || p.To != u.a.cfg.Version || (p.State != "applied" && p.State != "probation") {
		return // confirm reports or settles it
	}
	if p.Running {
		p.Unclean++
		if p.Unclean >= maxUncleanStops {
			u.uncleanRollback(p)
			return
		}
		u.log.Warn("update: the last run of the new version stopped without a clean exit (a crash, an error at start, or it was killed)",
			"version", p.To, "unclean_stops", p.Unclean, "previous_back_at", maxUncleanStops, "probation", u.a.cfg.Update.Probation)
	}
	p.Running = true
	if err := u.savePending(p); err != nil {
		u.log.Error("update: cannot record the new version's start; its crashes go uncounted", "version", p.To, "err", err)
	}
}

// uncleanRollback brings the previous binary back after the new version,
// on probation, stopped without a clean exit maxUncleanStops times; the
// previous binary, restarted into, records the version as failed and
// reports the rollback.
func (u *updater) uncleanRollback(p *pending) {
	why := fmt.Sprintf("version %s stopped without a clean exit (a crash, an error at start, or it was killed) %d times since it took over, each within %v of starting", p.To, p.Unclean, u.a.cfg.Update.Probation)
	u.log.Error("update: the new binary keeps stopping without a clean exit; restoring the previous one", "version", p.To, "previous", p.Previous, "unclean_stops", p.Unclean)
	if err := u.restorePrevious(p); err != nil {
		// Keep this version running rather than none; the next unclean
		// stop tries again.
		u.log.Error("update: cannot restore the previous binary; the new version keeps running", "err", err)
		p.Running = true
		u.savePending(p)
		return
	}
	p.State, p.Reason, p.Message, p.Running = "rolled_back", release.ReasonUnhealthy, why, false
	if err := u.savePending(p); err != nil {
		u.log.Error("update: cannot record the rollback", "version", p.To, "err", err)
	}
	u.restart(&RestartError{Path: u.exe, Why: "run version " + p.From + " again"})
}

// stoppedCleanly clears the running mark of this version's pending update,
// if any, as the agent stops as asked (Run returns nil, a restart, or a
// relay's final refusal): the next start is not counted as following a
// crash.
func (u *updater) stoppedCleanly() {
	p, err := u.loadPending()
	if err != nil || p == nil || p.To != u.a.cfg.Version || !p.Running {
		return
	}
	p.Running = false
	if err := u.savePending(p); err != nil {
		u.log.Error("update: cannot record the clean stop of the new version; the next start counts as following a crash", "version", p.To, "err", err)
	}
}

// UpdateState is a self-update of the agent under way, as
// update/pending.json records it, for the status: the new version being
// tried, confirmed, or on probation.
type UpdateState struct {
	Version string `json:"version"`
	From    string `json:"from"`
	// State is trial (the new binary is being tried), applied (it is
	// being confirmed) or probation.
	State string `json:"state"`
	// UncleanStops counts the new version's stops without a clean exit
	// since it took over; the previous binary comes back at
	// UncleanStopsMax.
	UncleanStops    int `json:"unclean_stops"`
	UncleanStopsMax int `json:"unclean_stops_max"`
	// ProbationEnds is when this run's probation ends (zero before it
	// started).
	ProbationEnds time.Time `json:"probation_ends,omitzero"`
}

// state reports the update under way, or nil.
func (u *updater) state() *UpdateState {
	p, err := u.loadPending()
	if err != nil || p == nil || (p.State != "trial" && p.State != "applied" && p.State != "probation") {
		return nil
	}
	st := &UpdateState{Version: p.To, From: p.From, State: p.State, UncleanStops: p.Unclean, UncleanStopsMax: maxUncleanStops}
	if ends := u.probationEnds.Load(); ends != nil && p.State == "probation" && p.To == u.a.cfg.Version {
		st.ProbationEnds = ends.UTC()
	}
	return st
}

// endProbation makes the update final once this process of the new
// version has run for the probation period.
func (u *updater) endProbation() {
	p, err := u.loadPending()
	if err != nil || p == nil || p.To != u.a.cfg.Version || p.State != "probation" {
		return
	}
	u.removePending()
	u.probationEnds.Store(nil)
	u.log.Info("update: the new version ran through its probation; the update is final", "version", p.To, "probation", u.a.cfg.Update.Probation, "unclean_stops", p.Unclean)
}

// waitConnected waits for the first Welcome (d 0: no limit but ctx).
func (u *updater) waitConnected(ctx context.Context, d time.Duration) bool {
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-u.connected:
		return true
	case <-ctx.Done():
	case <-timeout:
	}
	return false
}

func (u *updater) loadPending() (*pending, error) {
	b, err := os.ReadFile(filepath.Join(u.dir, pendingFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p pending
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	if p.To == "" || p.Binary == "" || p.Previous == "" {
		return nil, errors.New("pending update without its versions or paths")
	}
	return &p, nil
}

// savePending writes p atomically and durably (writeFileAtomic syncs the
// file and its directory): pending.json is on disk before the binary is
// replaced, so that a power loss cannot leave the new binary without the
// record that makes it confirm itself or roll back.
func (u *updater) savePending(p *pending) error {
	b, _ := json.Marshal(p)
	return writeFileAtomic(filepath.Join(u.dir, pendingFile), b)
}

func (u *updater) removePending() { os.Remove(filepath.Join(u.dir, pendingFile)) }

// failed returns the versions that failed here and are never tried again.
func (u *updater) failed() map[string]bool {
	b, err := os.ReadFile(filepath.Join(u.dir, failedFile))
	out := map[string]bool{}
	if err != nil {
		return out
	}
	var m map[string]string
	if json.Unmarshal(b, &m) == nil {
		for v := range m {
			out[v] = true
		}
	}
	return out
}

// interruptedAgain counts one more update to version that the agent
// stopped in before its trial's verdict (interruptedFile), and returns the
// count so far.
func (u *updater) interruptedAgain(version string) int {
	path := filepath.Join(u.dir, interruptedFile)
	m := map[string]int{}
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &m)
	}
	m[version]++
	n := m[version]
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := writeFileAtomic(path, b); err != nil {
		u.log.Error("update: cannot record the interrupted update", "version", version, "err", err)
	}
	return n
}

func (u *updater) addFailed(version, why string) {
	m := map[string]string{}
	if b, err := os.ReadFile(filepath.Join(u.dir, failedFile)); err == nil {
		json.Unmarshal(b, &m)
	}
	m[version] = strings.TrimSpace(why)
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := writeFileAtomic(filepath.Join(u.dir, failedFile), b); err != nil {
		u.log.Error("update: cannot record the failed version", "version", version, "err", err)
	}
}
