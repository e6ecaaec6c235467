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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dpcache:", oneLine(err))
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		os.Exit(code)
	}
}

// exitError is an error that ends the process with its own exit code (3:
// the update ran against stale sources).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// oneLine keeps an error on one line of stderr, as scripts expect.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
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
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "", "log level: debug, info, warn or error (default: info for node and serve, error otherwise)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (see %s --help)", cmd.Name(), err, cmd.CommandPath())
	})
	root.AddCommand(
		newKeygen(),
		newPublish(),
		newResign(),
		newServe(),
		newNode(),
		newUpdate(),
		newRollback(),
		newMirror(),
		newStatus(),
		newEndpoints(),
		newPrefetch(),
		newDemo(),
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
		return fmt.Errorf("%s: missing %s (see %s --help)", cmd.Name(), strings.Join(missing, ", "), cmd.CommandPath())
	}
	return nil
}

// noArgs refuses positional arguments with a line naming the command.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s: unexpected argument %q (see %s --help)", cmd.Name(), args[0], cmd.CommandPath())
	}
	return nil
}

// oneArg wants exactly one positional argument, described by what.
func oneArg(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("%s: want one argument, %s; got %d (see %s --help)", cmd.Name(), what, len(args), cmd.CommandPath())
		}
		return nil
	}
}
