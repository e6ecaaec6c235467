package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/manifest"
)

func newResign() *cobra.Command {
	var opts manifest.ResignOptions
	var keyPath string
	cmd := &cobra.Command{
		Use:   "resign --repo DIR --key NAME.key --product P [--expires DUR]",
		Short: "Publish the current version of a product again with a new expiry",
		Long: `resign publishes the version that DIR's latest.json names again, under the
next serial, with a new expiry counted from now (--expires, a week): a new
signed latest.json and nothing else. The version's manifest.json never
changes once published (caches, distribution points and mirrors keep it by
its path), no blob moves, and the publication time stays the version's.
Endpoints that have the version installed stay on it and are up to date;
sources offering the new latest.json are no longer stale.

Only the secret key is needed. resign refuses a product with no latest.json,
and a latest.json whose manifest is missing, unsigned or not the one it
names (publish a new version then).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "repo", "key", "product"); err != nil {
				return err
			}
			key, err := manifest.LoadPrivateKey(keyPath)
			if err != nil {
				return fmt.Errorf("resign: %w", err)
			}
			opts.Key = key
			res, err := manifest.Resign(opts)
			if err != nil {
				return err
			}
			expires := "never expires"
			if e := res.Latest.Expires; e != nil {
				expires = "expires " + e.Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "resigned %s %s: serial %d -> %d, %s (manifest and blobs unchanged)\n",
				res.Latest.Product, res.Latest.Version, res.Previous.Serial, res.Latest.Serial, expires)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Repo, "repo", "", "repository root folder holding the product")
	f.StringVar(&keyPath, "key", "", "minisign secret key file (from dpcache keygen or minisign -G -W)")
	f.StringVar(&opts.Product, "product", "", "product name ([A-Za-z0-9._-], 1 to 128 characters)")
	f.DurationVar(&opts.Expires, "expires", manifest.DefaultExpiry, "how long from now the version counts as current: latest.json's new expiry (0: never)")
	return cmd
}
