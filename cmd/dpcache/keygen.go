package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/manifest"
)

func newKeygen() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "keygen -o NAME",
		Short: "Create a minisign key pair (NAME.key, NAME.pub) for signing a repository",
		Long: `keygen writes NAME.key (the secret key, unencrypted as with minisign -G -W,
mode 0600) and NAME.pub (the public key endpoints and DPs trust with --trust).
Both are in minisign's format: the stock minisign tool can sign and verify
with them. Existing files are never overwritten.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "output"); err != nil {
				return err
			}
			if err := manifest.GenerateKeyFiles(name); err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s.key (secret, keep it offline) and %s.pub (give it to endpoints and DPs with --trust)\n", name, name)
			return nil
		},
	}
	cmd.Flags().StringVarP(&name, "output", "o", "", "base name of the key files")
	return cmd
}
