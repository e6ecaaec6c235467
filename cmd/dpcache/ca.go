package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/pki"
)

func newCA() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Make a site CA and issue DP, endpoint and admin certificates",
		Long: `ca makes a small certificate authority for a site ('ca init') and issues the
certificates its DPs, endpoints and administrators present ('ca issue'). The
holder's name is the certificate's common name and its role (dp, endpoint or
admin) the Organizational Unit: certificates of an enterprise PKI made the
same way work too. Keys are ECDSA P-256; the CA is valid 10 years, a
certificate 1 year.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageError(fmt.Errorf("ca: want a subcommand, init or issue (see %s --help)", cmd.CommandPath()))
		},
	}
	cmd.AddCommand(newCAInit(), newCAIssue())
	return cmd
}

func newCAInit() *cobra.Command {
	var dir, name string
	cmd := &cobra.Command{
		Use:   "init --dir DIR [--name NAME]",
		Short: "Make a new CA: DIR/ca.pem and DIR/ca.key (0600)",
		Long: `init writes DIR/ca.pem, the CA certificate that DPs (--client-ca) and clients
(--ca) trust, and DIR/ca.key (mode 0600), the key that signs certificates:
keep it off the DPs. An existing DIR/ca.key is never overwritten.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "dir"); err != nil {
				return err
			}
			if err := pki.InitCA(dir, name); err != nil {
				if errors.Is(err, pki.ErrBadName) {
					return usageError(fmt.Errorf("ca init: --%w", err))
				}
				return fmt.Errorf("ca init: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (give it to DPs with --client-ca and to clients with --ca) and %s (secret, keep it offline)\n",
				filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory of the CA's files")
	f.StringVar(&name, "name", "dpcache site CA", "the CA's common name")
	return cmd
}

func newCAIssue() *cobra.Command {
	var dir, name, role, out string
	var hosts []string
	cmd := &cobra.Command{
		Use:   "issue --dir DIR --name NAME --role dp|endpoint|admin [--host H[,H...]] -o PREFIX",
		Short: "Issue a certificate: PREFIX.pem and PREFIX.key (0600)",
		Long: `issue signs a certificate with the CA of DIR and writes PREFIX.pem and
PREFIX.key (mode 0600), replacing them if they exist (a running DP picks the
new ones up). NAME is the common name: a DP's --name, an endpoint's id (an
endpoint reports under it and no other), an administrator's name. The role
decides what the holder may do:

  dp        serve endpoints and peers, forward requests, call AdminService;
            a server and client certificate, valid for --host (default NAME):
            give the host or IP other DPs and endpoints dial
  endpoint  update from DPs, report under NAME (client certificate)
  admin     AdminService (status, endpoints, prefetch), the status page and
            /metrics (client certificate)`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "dir", "name", "role", "output"); err != nil {
				return err
			}
			r, err := pki.ParseRole(role)
			if err != nil {
				return usageError(fmt.Errorf("ca issue: --%w", err))
			}
			if err := pki.Issue(dir, pki.IssueRequest{Name: name, Role: r, Hosts: hosts}, out); err != nil {
				if errors.Is(err, pki.ErrBadName) {
					return usageError(fmt.Errorf("ca issue: --%w", err))
				}
				return fmt.Errorf("ca issue: %w", err)
			}
			what := map[pki.Role]string{pki.RoleDP: "a dp", pki.RoleEndpoint: "an endpoint", pki.RoleAdmin: "an admin"}[r] + " certificate for " + name
			if len(hosts) > 0 {
				what += " valid for " + strings.Join(hosts, ", ")
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s.pem (%s) and %s.key (secret)\n", out, what, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory of the CA (made by 'dpcache ca init')")
	f.StringVar(&name, "name", "", "the holder's name: the certificate's common name")
	f.StringVar(&role, "role", "", "dp, endpoint or admin (the certificate's Organizational Unit)")
	f.StringSliceVar(&hosts, "host", nil, "DNS names or IP addresses the certificate is valid for, comma-separated (a dp certificate: default NAME)")
	f.StringVarP(&out, "output", "o", "", "PREFIX of the files written, PREFIX.pem and PREFIX.key")
	return cmd
}
