package cli

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// BuildInfo says which build a binary is.
type BuildInfo struct {
	Program string `json:"program"`
	Version string `json:"version"`
	Commit  string `json:"commit"`
	// Date is when the binary was built, or its commit was made when only
	// that is known (RFC 3339).
	Date string `json:"build_date"`
	// Modified: built from a checkout with uncommitted changes.
	Modified bool   `json:"modified,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

// ReadBuildInfo returns prog's build information. version, commit and
// date are what the link set (scripts/release: -ldflags "-X
// main.version=… -X main.commit=… -X main.date=…"); where one is empty or
// "dev" it is taken from the binary's own build information (the module
// version after go install, the VCS revision and time after go build in a
// checkout), else "unknown".
func ReadBuildInfo(prog, version, commit, date string) BuildInfo {
	b := BuildInfo{Program: prog, Version: version, Commit: commit, Date: date, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if (b.Version == "" || b.Version == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = strings.TrimPrefix(bi.Main.Version, "v")
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.time":
				if b.Date == "" {
					b.Date = s.Value
				}
			case "vcs.modified":
				b.Modified = b.Modified || s.Value == "true"
			}
		}
		if bi.GoVersion != "" {
			b.Go = bi.GoVersion
		}
	}
	for _, p := range []*string{&b.Version, &b.Commit, &b.Date} {
		if *p == "" {
			*p = "unknown"
		}
	}
	return b
}

// String is the multi-line form "version" prints.
func (b BuildInfo) String() string {
	commit := b.Commit
	if b.Modified {
		commit += " (modified)"
	}
	return fmt.Sprintf("%s %s\n  commit:  %s\n  built:   %s\n  go:      %s %s\n", b.Program, b.Version, commit, b.Date, b.Go, b.Platform)
}

// VersionCommand is "version": the version, commit, build date and Go
// version (-o json or yaml for programs), or the version alone with
// --short.
func VersionCommand(info BuildInfo) *cobra.Command {
	var short bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, build date and Go version",
		Args:  NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if short {
				_, err := fmt.Fprintln(w, info.Version)
				return err
			}
			f, err := OutputOf(cmd)
			if err != nil {
				return err
			}
			return Print(w, f, info, func(w io.Writer) error {
				_, err := io.WriteString(w, info.String())
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&short, "short", false, "print the version only")
	return cmd
}
