package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// statusJSON is `dpcache status --json` as docs/design.md gives it.
type statusJSON struct {
	Members []memberJSON `json:"members"`
	Traffic trafficJSON  `json:"traffic"`
}

type memberJSON struct {
	Name     string              `json:"name"`
	Site     string              `json:"site"`
	GRPC     string              `json:"grpc"`
	State    string              `json:"state"`
	Versions map[string][]uint64 `json:"versions"`
}

type trafficJSON struct {
	UpstreamBytes uint64 `json:"upstream_bytes"`
	PeerBytes     uint64 `json:"peer_bytes"`
	ServedBytes   uint64 `json:"served_bytes"`
}

func newStatus() *cobra.Command {
	var node string
	var sf sourceFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status --node ADDR [--json]",
		Short: "Show the cluster as a distribution point sees it",
		Long: `status asks the DP at ADDR (its gRPC address) for the cluster's members,
their sites and states, the versions each holds whole, and the traffic
counters summed over the members: bytes from upstream (the internet link),
from peers, and served to endpoints and peers.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "node"); err != nil {
				return err
			}
			dp, err := dialDP(node, &sf)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			defer dp.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			resp, err := dp.Status(ctx, false)
			if err != nil {
				return fmt.Errorf("status: %w", dpHint(err, node))
			}
			out := statusJSON{Members: []memberJSON{}, Traffic: trafficJSON{
				UpstreamBytes: resp.GetTraffic().GetUpstreamBytes(), PeerBytes: resp.GetTraffic().GetPeerBytes(), ServedBytes: resp.GetTraffic().GetServedBytes(),
			}}
			for _, m := range resp.GetMembers() {
				mj := memberJSON{Name: m.GetName(), Site: m.GetSite(), GRPC: m.GetGrpcAddress(), State: m.GetState(), Versions: map[string][]uint64{}}
				for _, pv := range m.GetVersions() {
					mj.Versions[pv.GetProduct()] = append([]uint64{}, pv.GetSerials()...)
				}
				out.Members = append(out.Members, mj)
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSITE\tSTATE\tGRPC\tVERSIONS HELD")
			for _, m := range out.Members {
				var held []string
				for p, ss := range m.Versions {
					parts := make([]string, len(ss))
					for i, s := range ss {
						parts[i] = fmt.Sprint(s)
					}
					held = append(held, p+":"+strings.Join(parts, ","))
				}
				slices.Sort(held)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, m.Site, m.State, m.GRPC, strings.Join(held, " "))
			}
			tw.Flush()
			t := out.Traffic
			fmt.Fprintf(cmd.OutOrStdout(), "traffic: upstream %s, from peers %s, served %s\n",
				formatBytes(int64(t.UpstreamBytes)), formatBytes(int64(t.PeerBytes)), formatBytes(int64(t.ServedBytes)))
			return nil
		},
	}
	sf.registerAdmin(cmd.Flags())
	cmd.Flags().StringVar(&node, "node", "", "gRPC address of a DP: host:port, grpc://host:port or grpcs://host:port (TLS)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
