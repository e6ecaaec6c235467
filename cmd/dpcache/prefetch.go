package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

func newPrefetch() *cobra.Command {
	var nodeAddr, product string
	var sf sourceFlags
	cmd := &cobra.Command{
		Use:   "prefetch --node ADDR --product P",
		Short: "Run a distribution point's download task for a product now",
		Long: `prefetch asks the DP at ADDR (its gRPC address) to check upstream for the
newest version of product P now and to fetch it whole into its site (the
site's DPs share the work, so each blob crosses the internet link once),
whatever its --upstream-window. It shows the progress (a progress bar on a
terminal, a line per step otherwise) and exits 0 once the DP holds the
version whole.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "node", "product"); err != nil {
				return err
			}
			dp, err := dialDP(nodeAddr, &sf)
			if err != nil {
				return fmt.Errorf("prefetch: %w", err)
			}
			defer dp.Close()
			recv, err := dp.Prefetch(cmd.Context(), product)
			if err != nil {
				return fmt.Errorf("prefetch: %w", err)
			}
			return showPrefetch(cmd.OutOrStdout(), recv, newProgress(true, "prefetch "+product), nodeAddr)
		},
	}
	sf.registerAdmin(cmd.Flags())
	cmd.Flags().StringVar(&nodeAddr, "node", "", "gRPC address of a DP: host:port, grpc://host:port or grpcs://host:port (TLS)")
	cmd.Flags().StringVar(&product, "product", "", "product to bring up to date")
	return cmd
}

// showPrefetch prints a Prefetch stream: a progress bar when bar is
// enabled (a terminal), else a line whenever a blob completes and at most
// once a second otherwise; then one final line.
func showPrefetch(out io.Writer, recv func() (*pb.PrefetchResponse, error), bar *progress, nodeAddr string) error {
	var last *pb.PrefetchResponse
	var lastLine time.Time
	for {
		m, err := recv()
		if errors.Is(err, io.EOF) {
			bar.finish()
			if last == nil || !last.GetDone() {
				return fmt.Errorf("prefetch: DP %s ended the stream before the version was held whole; run prefetch again", nodeAddr)
			}
			fmt.Fprintf(out, "%s %s (serial %d) held whole: %d blobs, %s\n", last.GetProduct(), last.GetVersion(), last.GetSerial(), last.GetBlobsTotal(), formatBytes(int64(last.GetBytesTotal())))
			return nil
		}
		if err != nil {
			bar.finish()
			return fmt.Errorf("prefetch: %w", err)
		}
		if bar.enabled {
			bar.update(int64(m.GetBytesDone()), int64(max(m.GetBytesTotal(), 1)))
		} else if !m.GetDone() && m.GetBytesTotal() > 0 && (last == nil || m.GetBlobsDone() != last.GetBlobsDone() || time.Since(lastLine) >= time.Second) {
			fmt.Fprintf(out, "%s %s (serial %d): %d/%d blobs, %s of %s (%d%%)\n", m.GetProduct(), m.GetVersion(), m.GetSerial(),
				m.GetBlobsDone(), m.GetBlobsTotal(), formatBytes(int64(m.GetBytesDone())), formatBytes(int64(m.GetBytesTotal())),
				m.GetBytesDone()*100/m.GetBytesTotal())
			lastLine = time.Now()
		}
		last = m
	}
}
