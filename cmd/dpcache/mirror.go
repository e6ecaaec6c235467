package main

import (
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/manifest"
)

func newMirror() *cobra.Command {
	var cfg agent.MirrorConfig
	var sources, trust []string
	var sf sourceFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "mirror --source URL[,URL...] --product P --to DIR --trust FILE [--version V]",
		Short: "Copy a product's version from sources into a folder in repository layout",
		Long: `mirror is the update utility: it copies a product's latest version (or
--version) from the sources, tried in order, into DIR in repository layout,
verified, so that DIR can then be served as a shared folder (file://), by
nginx or by an FTP server, for instance in an air-gapped network. Blobs
already in DIR are verified and kept; interrupted downloads resume. The
signed documents are written last, atomically, and DIR's latest.json is
never replaced by a lower serial.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "source", "product", "to", "trust"); err != nil {
				return err
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
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mirrored %s %s (serial %d) from %s to %s: %d blobs copied (%s), %d kept\n",
				res.Product, res.Version, res.Serial, res.Source, cfg.To, res.BlobsCopied, formatBytes(res.BytesDownloaded), res.BlobsKept)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&sources, "source", nil, "sources, tried in order: "+sourceSchemes)
	f.StringVar(&cfg.Product, "product", "", "product to copy")
	f.StringVar(&cfg.Version, "version", "", "version to copy (default: the latest)")
	f.StringVar(&cfg.To, "to", "", "repository folder to write")
	f.StringSliceVar(&trust, "trust", nil, "minisign public key file(s) the documents must be signed with")
	sf.register(f, "sources")
	sf.registerClientCert(f)
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	return cmd
}
