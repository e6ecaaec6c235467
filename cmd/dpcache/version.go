package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at build time by a release (see `make build`):
//
//	go build -ldflags "-X main.version=1.2.0 -X main.commit=abc1234" ./cmd/dpcache
//
// Unset, they come from the build information Go embeds (the module's
// version, vcs.revision and vcs.modified).
var (
	version string
	commit  string
)

// versionInfo is what `dpcache version --json` prints.
type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Modified bool   `json:"modified"`
	Go       string `json:"go"`
}

// buildVersion returns the stamped release and commit, completed from
// info (nil when the binary carries none): "(devel)" and "unknown" when
// nothing says.
func buildVersion(stampedVersion, stampedCommit string, info *debug.BuildInfo, ok bool) versionInfo {
	v := versionInfo{Version: stampedVersion, Commit: stampedCommit, Go: runtime.Version()}
	if ok && info != nil {
		if info.GoVersion != "" {
			v.Go = info.GoVersion
		}
		if v.Version == "" && info.Main.Version != "" {
			v.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				if v.Commit == "" {
					v.Commit = s.Value
					if len(v.Commit) > 12 {
						v.Commit = v.Commit[:12]
					}
				}
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
	}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	return v
}

func newVersion() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the release, commit and Go version of this binary",
		Long: `version prints the release and commit this binary was built from, and the Go
version that built it. A release build stamps them (make build); otherwise
they come from what Go records at build time ("(devel)" for a plain go build
of a checkout, whose commit carries "+modified" when the tree had changes).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			info, ok := debug.ReadBuildInfo()
			v := buildVersion(version, commit, info, ok)
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(v)
			}
			c := v.Commit
			if v.Modified {
				c += "+modified"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dpcache %s (commit %s, %s)\n", v.Version, c, v.Go)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"version", "commit", "modified", "go"}`)
	return cmd
}
