package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/manifest"
)

func newMirror() *cobra.Command {
	cfg := agent.MirrorConfig{KeepVersions: agent.DefaultMirrorKeepVersions}
	var sources, trust []string
	var sf sourceFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "mirror --source URL[,URL...] --product P --to DIR --trust FILE [--version V] [--keep-versions N]",
		Short: "Copy a product's version from sources into a folder in repository layout",
		Long: `mirror is the update utility: it copies a product's latest version (or
--version) from the sources, tried in order, into DIR in repository layout,
verified, so that DIR can then be served as a shared folder (file://), by
nginx or by an FTP server, for instance in an air-gapped network. Blobs
already in DIR are verified and kept; interrupted downloads resume. The
signed documents are written last, atomically, and only when they changed:
a run that finds nothing new rewrites nothing and says "up to date". DIR's
latest.json is never replaced by a lower serial. Documents are copied as
signed, so DIR is as fresh as its last run: when every source offers an
expired latest.json, mirror still copies the newest version offered but
says "stale" and exits 3.

After a successful run, DIR keeps the --keep-versions newest versions of the
product (by serial, and always the one latest.json names); older version
folders are removed, then the blobs no kept version of any product uses.
Partial downloads wait in DIR/.dpcache-partial/ (mode 0700, never at a
repository path), which exists only while one is waiting to resume.
`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "source", "product", "to", "trust"); err != nil {
				return err
			}
			if cfg.KeepVersions < 0 {
				return usageError(fmt.Errorf("mirror: --keep-versions %d must be 0 (keep every version) or more", cfg.KeepVersions))
			}
			t, err := manifest.LoadTrust(trust...)
			if err != nil {
				return fmt.Errorf("mirror: %w", err)
			}
			srcs, err := sf.open(sources)
			if err != nil {
				return fmt.Errorf("mirror: %w", err)
			}
			defer closeSources(srcs)
			cfg.Sources, cfg.Trust, cfg.Logger, cfg.StallTimeout = srcs, t, slog.Default(), sf.stall
			bar := newProgress(!asJSON, "mirroring "+cfg.Product)
			cfg.Progress = bar.update
			res, err := agent.Mirror(cmd.Context(), cfg)
			bar.finish()
			if err != nil {
				return fmt.Errorf("mirror: %w", err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if err := json.NewEncoder(out).Encode(res); err != nil {
					return err
				}
			} else {
				what := fmt.Sprintf("mirrored %s %s (serial %d) from %s to %s: %d blobs copied (%s), %d kept",
					res.Product, res.Version, res.Serial, res.Source, cfg.To, res.BlobsCopied, formatBytes(res.BytesDownloaded), res.BlobsKept)
				if res.Status == agent.StatusUpToDate || res.Status == agent.StatusStale && res.BlobsCopied == 0 && !res.LatestUpdated {
					what = fmt.Sprintf("%s %s (serial %d) in %s is up to date (checked %s); nothing rewritten",
						res.Product, res.Version, res.Serial, cfg.To, res.Source)
				}
				if len(res.VersionsRemoved) > 0 {
					what += fmt.Sprintf("; removed old versions %s and %d blobs", strings.Join(res.VersionsRemoved, ", "), res.BlobsRemoved)
				}
				fmt.Fprintln(out, what)
			}
			if res.Status == agent.StatusStale {
				return &exitError{exitStale, fmt.Errorf("mirror: every source offers an expired version of %s (%s serial %d is the newest, from %s), so %s is stale too; check that the sources are still being updated",
					res.Product, res.Version, res.Serial, res.Source, cfg.To)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&sources, "source", nil, "sources, tried in order: "+sourceSchemes)
	f.StringVar(&cfg.Product, "product", "", "product to copy")
	f.StringVar(&cfg.Version, "version", "", "version to copy (default: the latest)")
	f.StringVar(&cfg.To, "to", "", "repository folder to write")
	f.StringSliceVar(&trust, "trust", nil, "minisign public key file(s) the documents must be signed with")
	f.IntVar(&cfg.KeepVersions, "keep-versions", cfg.KeepVersions, "versions of the product kept in DIR, the newest by serial (0 keeps every version)")
	sf.register(f, "sources")
	sf.registerClientCert(f)
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	return cmd
}
