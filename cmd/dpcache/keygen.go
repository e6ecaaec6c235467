package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/manifest"
)

func newKeygen() *cobra.Command {
	var name string
	var ifMissing bool
	cmd := &cobra.Command{
		Use:   "keygen -o NAME [--if-missing]",
		Short: "Create a minisign key pair (NAME.key, NAME.pub) for signing a repository",
		Long: `keygen writes NAME.key (the secret key, unencrypted as with minisign -G -W,
mode 0600) and NAME.pub (the public key endpoints and DPs trust with --trust).
Both are in minisign's format: the stock minisign tool can sign and verify
with them. Existing files are never overwritten: keygen fails, unless
--if-missing and NAME.key and NAME.pub exist and are a pair (a setup job
run again, as in deploy/compose/branch-office.yaml).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "output"); err != nil {
				return err
			}
			if ifMissing {
				kept, err := keepKeyPair(name)
				if err != nil {
					return fmt.Errorf("keygen: %w", err)
				}
				if kept {
					fmt.Fprintf(cmd.OutOrStdout(), "kept %s.key and %s.pub, an existing key pair (--if-missing)\n", name, name)
					return nil
				}
			}
			if err := manifest.GenerateKeyFiles(name); err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s.key (secret, keep it offline) and %s.pub (give it to endpoints and DPs with --trust)\n", name, name)
			return nil
		},
	}
	cmd.Flags().StringVarP(&name, "output", "o", "", "base name of the key files")
	cmd.Flags().BoolVar(&ifMissing, "if-missing", false, "if NAME.key and NAME.pub exist and are a pair, keep them and exit 0")
	return cmd
}

// keepKeyPair reports whether NAME.key and NAME.pub both exist and are a
// pair (a signature of the first verifies with the second); false when
// neither exists. One without the other, or two that do not match, is an
// error: keygen would not overwrite them anyway.
func keepKeyPair(name string) (bool, error) {
	keyPath, pubPath := name+".key", name+".pub"
	_, kerr := os.Stat(keyPath)
	_, perr := os.Stat(pubPath)
	switch {
	case errors.Is(kerr, fs.ErrNotExist) && errors.Is(perr, fs.ErrNotExist):
		return false, nil
	case kerr != nil && !errors.Is(kerr, fs.ErrNotExist):
		return false, kerr
	case perr != nil && !errors.Is(perr, fs.ErrNotExist):
		return false, perr
	case kerr != nil:
		return false, fmt.Errorf("%s exists but %s does not: restore the secret key, or remove %s for a new pair", pubPath, keyPath, pubPath)
	case perr != nil:
		return false, fmt.Errorf("%s exists but %s does not: restore the public key, or remove %s for a new pair", keyPath, pubPath, keyPath)
	}
	key, err := manifest.LoadPrivateKey(keyPath)
	if err != nil {
		return false, err
	}
	trust, err := manifest.LoadTrust(pubPath)
	if err != nil {
		return false, err
	}
	probe := []byte("dpcache keygen --if-missing")
	sig, err := key.Sign(probe)
	if err == nil {
		err = trust.Verify(probe, sig)
	}
	if err != nil {
		return false, fmt.Errorf("%s and %s are not a key pair (%v): remove one or give another -o", keyPath, pubPath, err)
	}
	return true, nil
}
