package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/node"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// endpointsJSON is `dpcache endpoints --json` as docs/design.md gives it.
type endpointsJSON struct {
	Endpoints []endpointJSON `json:"endpoints"`
}

type endpointJSON struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	Site     string `json:"site"`
	Product  string `json:"product"`
	Version  string `json:"version"`
	Serial   uint64 `json:"serial"`
	Result   string `json:"result"`
	Reported string `json:"reported"` // RFC 3339, UTC; "" when the report had no time
	Age      string `json:"age"`      // current, 24h, 3d or 7d
}

func toEndpointsJSON(resp *pb.ListEndpointsResponse) endpointsJSON {
	out := endpointsJSON{Endpoints: []endpointJSON{}}
	for _, e := range resp.GetEndpoints() {
		st := e.GetStatus()
		ej := endpointJSON{
			ID: st.GetId(), Hostname: st.GetHostname(), Site: st.GetSite(), Product: st.GetProduct(),
			Version: st.GetVersion(), Serial: st.GetSerial(), Result: st.GetResult(), Age: e.GetAge(),
		}
		if st.GetReported() != nil {
			ej.Reported = st.GetReported().AsTime().UTC().Format(time.RFC3339)
		}
		out.Endpoints = append(out.Endpoints, ej)
	}
	return out
}

func newEndpoints() *cobra.Command {
	var nodeAddr string
	var sf sourceFlags
	var outdated, asJSON bool
	cmd := &cobra.Command{
		Use:   "endpoints --node ADDR [--outdated] [--json]",
		Short: "List what the site's endpoints have installed",
		Long: `endpoints asks the DP at ADDR (its gRPC address) for the last report of every
endpoint of its site (the DP asks the site's other DPs too): the product and
version installed, the result of the last run, when it reported, and how far
the installed version is behind the newest one the DP knows, by publication
time (a failed or held run keeps its installed version; nothing installed
is 7d):

  current  the newest version, or less than 24 hours behind it
  24h      24 hours or more behind
  3d       3 days or more behind (bases out of date)
  7d       7 days or more behind (bases obsolete)

--outdated lists only the endpoints that are not current.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "node"); err != nil {
				return err
			}
			dp, err := dialDP(nodeAddr, &sf)
			if err != nil {
				return fmt.Errorf("endpoints: %w", err)
			}
			defer dp.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			resp, err := dp.Endpoints(ctx, outdated, false)
			if err != nil {
				return fmt.Errorf("endpoints: %w", dpHint(err, nodeAddr))
			}
			out := toEndpointsJSON(resp)
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
			}
			printEndpoints(cmd.OutOrStdout(), out, outdated)
			return nil
		},
	}
	sf.registerAdmin(cmd.Flags())
	cmd.Flags().StringVar(&nodeAddr, "node", "", "gRPC address of a DP: host:port, grpc://host:port or grpcs://host:port (TLS)")
	cmd.Flags().BoolVar(&outdated, "outdated", false, "only endpoints behind the newest version by 24 hours or more")
	cmd.Flags().BoolVar(&asJSON, "json", false, `print JSON: {"endpoints": [{"id", "hostname", "site", "product", "version", "serial", "result", "reported", "age"}]}`)
	return cmd
}

// printEndpoints prints a table and a summary by age.
func printEndpoints(w io.Writer, out endpointsJSON, outdated bool) {
	if len(out.Endpoints) == 0 {
		if outdated {
			fmt.Fprintln(w, "no outdated endpoints")
		} else {
			fmt.Fprintln(w, "no endpoint has reported")
		}
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOSTNAME\tSITE\tPRODUCT\tVERSION\tSERIAL\tRESULT\tREPORTED\tAGE")
	ages, results, hosts := map[string]int{}, map[string]int{}, map[string]bool{}
	for _, e := range out.Endpoints {
		reported := e.Reported
		if t, err := time.Parse(time.RFC3339, e.Reported); err == nil {
			reported = t.Local().Format("2006-01-02 15:04")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, e.Hostname, e.Site, e.Product, e.Version, e.Serial, e.Result, reported, e.Age)
		ages[e.Age]++
		results[e.Result]++
		if e.Hostname != "" {
			hosts[e.Hostname] = true
		} else {
			hosts["\x00"+e.ID] = true // a host that did not say its name
		}
	}
	tw.Flush()
	// Endpoints are install roots (each its own id): a host may hold
	// several, so both are counted.
	fmt.Fprintf(w, "%s on %s: %d current, %d 24h, %d 3d, %d 7d; %d failed, %d held\n",
		plural(len(out.Endpoints), "endpoint"), plural(len(hosts), "host"),
		ages[node.AgeCurrent], ages[node.Age24h], ages[node.Age3d], ages[node.Age7d],
		results[agent.StatusFailed], results[agent.StatusHeld])
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
