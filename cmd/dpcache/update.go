package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/manifest"
)

func newUpdate() *cobra.Command {
	cfg := agent.DefaultConfig()
	var sources, trust []string
	var sf sourceFlags
	var asJSON, discover, watch bool
	var jitter, poll time.Duration
	cmd := &cobra.Command{
		Use:   "update --source URL[,URL...] --product P --dir DIR --trust FILE [flags]",
		Short: "Update a product on this endpoint from ordered sources",
		Long: `update installs the newest version of a product into DIR/<product>/current/:
it fetches latest.json and the manifest from the first source that answers,
verifies both against --trust, downloads only the files that changed (each
verified by SHA-256, resuming interrupted downloads), and switches current
atomically (on Windows, current is a text file naming the version's folder).
The previous version stays on disk for dpcache rollback. When a
source fails the next one is used. A lower serial than installed is refused.
After dpcache rollback the product is held: update installs nothing and says
"held" (exit 0) until dpcache unhold. When the source is a distribution point,
the result is reported to it, under an endpoint id generated once and kept in
DIR (--id overrides it), with this host's name beside it.

With --discover, the first grpc:// or grpcs:// source is asked for the DPs of --site
(its own site by default), and those are tried first, nearest first. With
--watch, update keeps running and updates whenever the first DP among the
sources announces a new version, after a random delay within --jitter (so a
site's endpoints do not all start at once). When that DP stops answering it
watches the next DP of the sources (those --discover gave), and every --poll
it also checks the sources in case an announcement was missed, and goes back
to the first DP. With --discover it also asks the site's DPs again at every
--poll, so DPs that join the site later are used.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if err := requireFlags(cmd, "source", "product", "dir", "trust"); err != nil {
				return err
			}
			if asJSON && !watch {
				// Scripts read one object on failure too (stderr keeps the
				// line for people).
				defer func() {
					var ee *exitError
					if err != nil && (!errors.As(err, &ee) || ee.code != exitStale) {
						json.NewEncoder(cmd.OutOrStdout()).Encode(failedJSON{Product: cfg.Product, Status: agent.StatusFailed, Error: oneLine(err)})
					}
				}()
			}
			t, err := manifest.LoadTrust(trust...)
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			if jitter < 0 {
				return usageError(fmt.Errorf("update: --jitter %v must not be negative", jitter))
			}
			if cmd.Flags().Changed("jitter") && !watch {
				return usageError(fmt.Errorf("update: --jitter applies only with --watch"))
			}
			if cmd.Flags().Changed("poll") && (!watch || poll <= 0) {
				return usageError(fmt.Errorf("update: --poll applies only with --watch and must be positive"))
			}
			// With a certificate, the endpoint is its certificate's name:
			// a DP with --client-ca takes reports under that id only.
			certName, err := sf.clientName()
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			if certName != "" {
				if cfg.EndpointID != "" && cfg.EndpointID != certName {
					return usageError(fmt.Errorf("update: --id %q differs from the name of --cert, %q: with a certificate, the endpoint id is its name (drop --id)", cfg.EndpointID, certName))
				}
				cfg.EndpointID = certName
			}
			srcs, err := sf.open(sources)
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			var sites *siteSources
			defer func() {
				if sites != nil {
					sites.close()
				} else {
					closeSources(srcs)
				}
			}()
			if discover {
				opts, err := sf.options()
				if err != nil {
					return fmt.Errorf("update: %w", err)
				}
				sites = &siteSources{configured: srcs, current: srcs, site: cfg.Site, opts: opts}
				if srcs, err = sites.discover(cmd.Context()); err != nil {
					return fmt.Errorf("update: --discover: %w", err)
				}
			}
			cfg.Sources, cfg.Trust, cfg.StallTimeout = srcs, t, sf.stall
			cfg.Logger = slog.Default()
			out := cmd.OutOrStdout()
			print := func(res *agent.Result) error {
				if asJSON {
					return json.NewEncoder(out).Encode(res)
				}
				if res.Status == agent.StatusHeld {
					fmt.Fprintf(out, "%s is held at %s (serial %d) after a rollback; nothing installed (`dpcache unhold --dir %s --product %s` releases it)\n",
						res.Product, res.Version, res.Serial, cfg.Dir, res.Product)
					return nil
				}
				if res.Status == agent.StatusUpToDate || res.Status == agent.StatusStale && res.FilesChanged == 0 {
					fmt.Fprintf(out, "%s %s (serial %d) is up to date (checked %s)\n", res.Product, res.Version, res.Serial, res.Source)
					return nil
				}
				fmt.Fprintf(out, "updated %s to %s (serial %d) from %s: %d files changed, %s downloaded\n",
					res.Product, res.Version, res.Serial, res.Source, res.FilesChanged, formatBytes(res.BytesDownloaded))
				return nil
			}
			if watch {
				var dps []string
				for _, s := range srcs {
					if _, ok := s.(agent.Watcher); ok {
						dps = append(dps, s.String())
					}
				}
				if len(dps) == 0 {
					return usageError(fmt.Errorf("update: --watch needs a grpc:// or grpcs:// source (a DP announces new versions)"))
				}
				if f := cmd.Flag("log-level"); f == nil || !f.Changed {
					// A watcher is a service: it logs its life at info
					// (what it watches, each update, each DP it moves to).
					slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
					cfg.Logger = slog.Default()
				}
				if term.IsTerminal(int(os.Stderr.Fd())) {
					fmt.Fprintf(os.Stderr, "watching %s for new versions of %s (the next DP when one stops answering; checking the sources every %v)\n",
						strings.Join(dps, ", "), cfg.Product, poll)
				}
				wc := agent.WatchConfig{Jitter: jitter, Poll: poll}
				if sites != nil {
					wc.Discover = sites.discover
				}
				wc.Result = func(res *agent.Result, err error) {
					if err != nil {
						fmt.Fprintln(os.Stderr, "dpcache: update:", oneLine(err))
						return
					}
					print(res)
				}
				return agent.Watch(cmd.Context(), cfg, wc)
			}
			bar := newProgress(!asJSON, "downloading "+cfg.Product)
			cfg.Progress = bar.update
			res, err := agent.Update(cmd.Context(), cfg)
			bar.finish()
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			if err := print(res); err != nil {
				return err
			}
			if res.Status == agent.StatusStale {
				return &exitError{exitStale, fmt.Errorf("update: every source offers an expired version of %s (%s serial %d is the newest, from %s); check that the sources are still being updated",
					res.Product, res.Version, res.Serial, res.Source)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&sources, "source", nil, "update sources, tried in order: "+sourceSchemes)
	f.StringVar(&cfg.Product, "product", "", "product to update")
	f.StringVar(&cfg.Dir, "dir", "", "install root (files go to DIR/<product>/current/)")
	f.StringSliceVar(&trust, "trust", nil, "minisign public key file(s) the documents must be signed with")
	f.StringSliceVar(&cfg.Components, "components", cfg.Components, "components to install: databases, modules")
	sf.register(f, "sources")
	sf.registerClientCert(f)
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.StringVar(&cfg.EndpointID, "id", "", "endpoint identifier reported to a DP (default: generated once and kept in DIR/"+agent.EndpointIDFileName+")")
	f.StringVar(&cfg.Site, "site", "", "this endpoint's site, reported to a DP and used by --discover")
	f.BoolVar(&discover, "discover", false, "ask the first grpc:// or grpcs:// source for the DPs of --site and use them first")
	f.BoolVar(&watch, "watch", false, "keep running, updating whenever the DP announces a new version")
	f.DurationVar(&jitter, "jitter", 0, "with --watch: random delay up to this before each update")
	f.DurationVar(&poll, "poll", agent.DefaultPoll, "with --watch: also check the sources this often (+0-10%), in case an announcement was missed")
	return cmd
}

func newRollback() *cobra.Command {
	var dir, product string
	cmd := &cobra.Command{
		Use:   "rollback --dir DIR --product P",
		Short: "Go back to the version installed before the last update, and hold it",
		Long: `rollback switches DIR/<product>/current back to the previous version kept on
disk by the last update, atomically, and holds the product there: update then
installs nothing and reports "held" until dpcache unhold. It is the only way
dpcache goes to a lower serial: on an administrator's command. A second
rollback while held fails: nothing older is kept.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "dir", "product"); err != nil {
				return err
			}
			res, err := agent.Rollback(dir, product)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rolled %s back to %s (serial %d) and held it there; `dpcache unhold --dir %s --product %s` releases it\n",
				res.Product, res.Version, res.Serial, dir, res.Product)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "install root given to dpcache update")
	cmd.Flags().StringVar(&product, "product", "", "product to roll back")
	return cmd
}

func newUnhold() *cobra.Command {
	var dir, product string
	cmd := &cobra.Command{
		Use:   "unhold --dir DIR --product P",
		Short: "Release the hold that rollback put on a product",
		Long: `unhold releases the hold that dpcache rollback put on a product, so that the
next dpcache update installs the newest version again (reusing the files kept
on disk). It fails if the product is not held.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "dir", "product"); err != nil {
				return err
			}
			h, err := agent.Unhold(dir, product)
			if err != nil {
				return err
			}
			if h.Version == "" {
				fmt.Fprintf(cmd.OutOrStdout(), "released %s; the next update installs the newest version\n", product)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "released %s (held at %s, serial %d); the next update installs the newest version\n",
				product, h.Version, h.Serial)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "install root given to dpcache update")
	cmd.Flags().StringVar(&product, "product", "", "product to release")
	return cmd
}

// failedJSON is `update --json` for a run that failed: {"product",
// "status": "failed", "error"}.
type failedJSON struct {
	Product string `json:"product"`
	Status  string `json:"status"`
	Error   string `json:"error"`
}
