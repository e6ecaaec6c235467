package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/manifest"
)

func newPublish() *cobra.Command {
	var opts manifest.PublishOptions
	var keyPath string
	var ifNew bool
	cmd := &cobra.Command{
		Use:   "publish --repo DIR --key NAME.key --product P --version V [--serial N] [--expires DUR] [--chunk=false] [--if-new] SRC_DIR",
		Short: "Publish SRC_DIR's files as a new signed version of a product",
		Long: `publish adds SRC_DIR's files to the repository DIR as version V of product P:
each file becomes a blob named by its SHA-256 (blobs already in the repository
are reused, not rewritten), then the signed manifest.json and latest.json are
written, each atomically, so that a web server never serves half a file.
Files whose path starts with modules/ are application modules; all others
are databases. --serial defaults to the previous serial + 1. The version
expires after --expires (a week): sources still offering it later are stale.
An empty SRC_DIR is refused unless --allow-empty. A version already in the
repository is refused, unless --if-new: then publish does nothing and exits
0 (a setup job run again; it does not compare SRC_DIR with what is there).

Files of 1 MiB or more are cut at content-defined boundaries (about 80 KiB
per chunk): the repository stores only their chunks, each a blob, and the
manifest lists them, so a new version that changes a few records of a large
database moves only the chunks that changed to dpcache agents and DPs. A DP
serves such a file whole too (assembled from its chunks), so plain HTTP
updaters pointed at a DP's /repo/ keep working. --chunk=false publishes every
file whole, for plain HTTP updaters that read the repository directly.`,
		Args: oneArg("SRC_DIR (the folder whose files to publish)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "repo", "key", "product", "version"); err != nil {
				return err
			}
			key, err := manifest.LoadPrivateKey(keyPath)
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			opts.Key = key
			res, err := manifest.Publish(opts, args[0])
			if ifNew && errors.Is(err, manifest.ErrVersionExists) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s is already published in %s; nothing done (--if-new)\n", opts.Product, opts.Version, opts.Repo)
				return nil
			}
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published %s %s (serial %d): %d files, %d new blobs (%s written), %d reused\n",
				res.Manifest.Product, res.Manifest.Version, res.Manifest.Serial, len(res.Manifest.Files),
				res.BlobsWritten, formatBytes(res.BytesWritten), res.BlobsReused)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Repo, "repo", "", "repository root folder (created if missing)")
	f.StringVar(&keyPath, "key", "", "minisign secret key file (from dpcache keygen or minisign -G -W)")
	f.StringVar(&opts.Product, "product", "", "product name ([A-Za-z0-9._-], 1 to 128 characters)")
	f.StringVar(&opts.Version, "version", "", "version name ([A-Za-z0-9._-], 1 to 128 characters)")
	f.Uint64Var(&opts.Serial, "serial", 0, "serial of the new version (default: previous + 1)")
	f.DurationVar(&opts.Expires, "expires", manifest.DefaultExpiry, "how long the version counts as current: latest.json's expiry, after which sources still offering it are stale (0: never)")
	f.BoolVar(&ifNew, "if-new", false, "if VERSION is already published, do nothing and exit 0 (SRC_DIR is not compared with it)")
	f.BoolVar(&opts.AllowEmpty, "allow-empty", false, "publish even if SRC_DIR has no files (endpoints then install an empty version)")
	f.BoolVar(&opts.Chunk, "chunk", true, "store files of 1 MiB or more as content-defined chunks, so new versions move only what changed (--chunk=false: every file whole)")
	return cmd
}

// formatBytes prints a byte count in binary units.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
