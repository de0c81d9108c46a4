package installer

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// A failing status command of the service manager is reported with what
// it says, not only its exit status.
func TestManagerErrorSaysWhatTheManagerSaid(t *testing.T) {
	argv := []string{"sh", "-c", "echo 'System has not been booted with systemd as init system (PID 1). Can'\\''t operate.' >&2; exit 1"}
	err := exec.Command(argv[0], argv[1:]...).Run()
	if err == nil {
		t.Fatal("the command did not fail")
	}
	got := managerError(err, argv).Error()
	for _, want := range []string{"exit status 1", "System has not been booted with systemd as init system (PID 1). Can't operate."} {
		if !strings.Contains(got, want) {
			t.Errorf("got %q, want it to contain %q", got, want)
		}
	}
	if got := managerError(err, []string{"sh", "-c", "exit 1"}).Error(); !strings.Contains(got, "without saying why") {
		t.Errorf("a silent failure: got %q", got)
	}
	other := errors.New("not a command's failure")
	if got := managerError(other, argv); got != other {
		t.Errorf("another error: got %v, want it as it was", got)
	}
}
