// Command dpcache is a distribution-point peer cache for software updates:
// it publishes signed update repositories, runs distribution points that
// cache them for a site, and updates endpoints from them. Run
// `dpcache --help` for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/source"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dpcache:", oneLine(err))
		os.Exit(exitCode(err))
	}
}

// Exit codes of the design: 0 success, 1 failure, 2 usage error, 3 stale.
const (
	exitFailure = 1
	exitUsage   = 2
	exitStale   = 3
)

// exitError is an error that ends the process with its own exit code
// (exitUsage, exitStale).
type exitError struct {
	code int
	err  error
}

// usageError marks err as a usage error (exit 2): an unknown command or
// flag, a missing or unexpected argument, a bad flag value.
func usageError(err error) error { return &exitError{exitUsage, err} }

// exitCode is the process's exit code for err: an exitError's own; 2 for
// what the user typed wrong (cobra's unknown command, a bad source URL or
// agent setting); 1 for any other failure.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case strings.HasPrefix(err.Error(), "unknown command "),
		errors.Is(err, source.ErrBadURL),
		errors.Is(err, agent.ErrInvalidConfig):
		return exitUsage
	}
	return exitFailure
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// oneLine keeps an error on one line of stderr, as scripts expect, and
// says each step once: a command's name that the error it wraps repeats
// ("update: update av in DIR: ...", "keygen: keygen: ...") is dropped, and
// so is a leading "dpcache: " that main adds anyway.
func oneLine(err error) string {
	msg := strings.ReplaceAll(strings.ReplaceAll(err.Error(), ":\n", ": "), "\n", "; ")
	msg = strings.Join(strings.Fields(msg), " ")
	msg = strings.TrimPrefix(msg, "dpcache: ")
	parts := strings.Split(msg, ": ")
	out := parts[:0]
	for i, p := range parts {
		if i+1 < len(parts) && (parts[i+1] == p || strings.HasPrefix(parts[i+1], p+" ")) {
			continue
		}
		out = append(out, p)
	}
	return strings.Join(out, ": ")
}

func newRoot() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:   "dpcache",
		Short: "A distribution-point peer cache for software updates",
		Long: `dpcache publishes signed update repositories (antivirus databases and
application modules), runs distribution points that cache them for a site and
serve endpoints over gRPC, and updates endpoints from ordered sources.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			level := logLevel
			if level == "" {
				// Services log their life at info; one-shot commands
				// print their result, and their error as one line.
				level = "error"
				if cmd.Annotations["service"] == "true" {
					level = "info"
				}
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(level)); err != nil {
				return usageError(fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel))
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "", "log level: debug, info, warn or error (default: info for node and serve, error otherwise)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		if !cmd.HasParent() {
			return usageError(fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath()))
		}
		return usageError(fmt.Errorf("%s: %w (see %s --help)", cmd.Name(), err, cmd.CommandPath()))
	})
	root.AddCommand(
		newKeygen(),
		newCA(),
		newPublish(),
		newResign(),
		newServe(),
		newNode(),
		newUpdate(),
		newRollback(),
		newUnhold(),
		newMirror(),
		newStatus(),
		newEndpoints(),
		newPrefetch(),
		newLoadtest(),
		newDemo(),
		newVersion(),
		newHealthcheck(),
	)
	return root
}

// requireFlags fails with one clear line naming the missing flags.
func requireFlags(cmd *cobra.Command, names ...string) error {
	var missing []string
	for _, n := range names {
		if !cmd.Flags().Changed(n) {
			missing = append(missing, "--"+n)
		}
	}
	if len(missing) > 0 {
		return usageError(fmt.Errorf("%s: missing %s (see %s --help)", cmd.Name(), strings.Join(missing, ", "), cmd.CommandPath()))
	}
	return nil
}

// noArgs refuses positional arguments with a line naming the command.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError(fmt.Errorf("%s: unexpected argument %q (see %s --help)", cmd.Name(), args[0], cmd.CommandPath()))
	}
	return nil
}

// oneArg wants exactly one positional argument, described by what.
func oneArg(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usageError(fmt.Errorf("%s: want one argument, %s; got %d (see %s --help)", cmd.Name(), what, len(args), cmd.CommandPath()))
		}
		return nil
	}
}
