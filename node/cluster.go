package node

import (
	"context"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"

	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/node/internal/catalog"
	"github.com/dpcache/dpcache/node/internal/fetch"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// newGossip builds the DP's gossip member from its configuration.
func (n *Node) newGossip(tune func(*gossip.Config)) (*gossip.Gossip, error) {
	host := n.cfg.Advertise
	if host == "" {
		host = advertiseHost(n.grpcLis.Addr())
	}
	gc := gossip.DefaultConfig()
	gc.Name, gc.Site = n.cfg.Name, n.cfg.Site
	gc.GRPCAddr = net.JoinHostPort(host, port(n.grpcLis.Addr()))
	if n.httpLis != nil {
		gc.HTTPAddr = net.JoinHostPort(host, port(n.httpLis.Addr()))
	}
	gc.BindAddr = n.cfg.GossipAddr
	gc.Join = n.cfg.Join
	gc.SecretKey = n.cfg.GossipKey
	if n.keys != nil {
		keys, err := n.keys.load()
		if err != nil {
			return nil, err
		}
		gc.Keys = keys
	}
	if n.tls != nil && len(gc.SecretKey) == 0 && len(gc.Keys) == 0 {
		n.log.Warn("gossip is not encrypted although gRPC uses TLS: anyone on the network can read and join the cluster's gossip; give every DP --gossip-key-file FILE",
			"gossip", n.cfg.GossipAddr)
	}
	n.tls.gossipTrust(&gc)
	gc.Logger = n.cfg.Logger
	if tune != nil {
		tune(&gc)
	}
	g, err := gossip.New(gc)
	if err != nil {
		return nil, fmt.Errorf("gossip on %s: %w", n.cfg.GossipAddr, err)
	}
	if n.keys != nil {
		n.keys.use(g)
	}
	return g, nil
}

// advertiseHost is the host of a listener's address when it names one, else
// the machine's first private (or, failing that, any non-loopback) IP.
func advertiseHost(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		return ta.IP.String()
	}
	addrs, _ := net.InterfaceAddrs()
	var fallback string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		if ipn.IP.IsPrivate() {
			return ipn.IP.String()
		}
		if fallback == "" {
			fallback = ipn.IP.String()
		}
	}
	if fallback != "" {
		return fallback
	}
	return "127.0.0.1"
}

func port(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return strconv.Itoa(ta.Port)
	}
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// publishVersions tells the cluster which versions of product this DP
// holds whole.
func (n *Node) publishVersions(product string) {
	if n.gossip == nil {
		return
	}
	vs, err := n.cache.Versions(product)
	if err != nil {
		n.log.Warn("cannot list held versions for gossip", "product", product, "err", err)
		return
	}
	serials := make([]uint64, len(vs))
	for i, v := range vs {
		serials[i] = v.Serial
	}
	n.gossip.SetVersions(product, serials)
}

// publishAllVersions announces every held version (at start).
func (n *Node) publishAllVersions() {
	products, err := n.cache.Products()
	if err != nil {
		n.log.Warn("cannot list held products for gossip", "err", err)
		return
	}
	for _, p := range products {
		n.publishVersions(p)
	}
}

// publishFetching tells the cluster which blobs this DP is fetching.
func (n *Node) publishFetching() {
	if n.gossip == nil {
		return
	}
	n.gossip.SetFetching(n.fetcher.InFlight())
}

// routerView is the DP as package fetch routes through it (fetch.Router).
type routerView struct{ n *Node }

func (v routerView) Candidates(digest string, forwarded bool) []fetch.Candidate {
	return v.n.candidates(digest, forwarded)
}

// candidates lists, in order, where a blob is read from (docs/design.md: "How a
// DP resolves a blob"): peers of the site holding it; the owners ranked
// above this DP; then, when this DP fetches upstream itself, what the site's
// other fetchers already have; then upstream. A fetch started or taken over
// for a forwarded request never asks peers or owners: it must not wait on
// another DP that may be waiting on it.
func (n *Node) candidates(digest string, forwarded bool) []fetch.Candidate {
	var out []fetch.Candidate
	if n.gossip != nil {
		site, self := n.cfg.Site, n.cfg.Name
		seen := map[string]bool{self: true}
		// The version hint lets a peer that has not seen the manifest yet
		// fetch it rather than answer NotFound.
		var hint catalog.ProductSerial
		if vs := n.catalog.VersionsOf(digest); len(vs) > 0 {
			hint = vs[len(vs)-1]
		}
		add := func(m gossip.Member, kind fetch.Kind) {
			if seen[m.Name] || m.GRPCAddr == "" {
				return
			}
			p := n.peers.get(m.GRPCAddr)
			if p == nil {
				return
			}
			seen[m.Name] = true
			src := p.Forwarded()
			if kind == fetch.FromPartial {
				src = p.AvailableOnly()
			}
			if hint.Product != "" {
				src = src.ForVersion(hint.Product, hint.Version)
			}
			out = append(out, fetch.Candidate{Src: src, Kind: kind})
		}
		if !forwarded {
			for _, ps := range n.catalog.VersionsOf(digest) {
				for _, m := range n.gossip.Holders(site, ps.Product, ps.Serial) {
					add(m, fetch.FromPeer)
				}
			}
			for _, m := range n.gossip.Owners(site, digest) {
				if m.Name == self {
					break
				}
				add(m, fetch.FromOwner)
			}
		}
		for _, m := range n.gossip.Fetchers(site, digest) {
			add(m, fetch.FromPartial)
		}
	}
	for _, u := range n.upstream {
		out = append(out, fetch.Candidate{Src: u, Kind: fetch.FromUpstream})
	}
	return out
}

// listSources returns the DPs an endpoint of site should use: the live DPs
// of that site (this DP's own when site is empty), least busy first, then
// those of the other sites.
func (n *Node) listSources(site string) []*pb.DistributionPoint {
	if site == "" {
		site = n.cfg.Site
	}
	if n.gossip == nil {
		return []*pb.DistributionPoint{n.self()}
	}
	members := n.gossip.Live("")
	slices.SortStableFunc(members, func(a, b gossip.Member) int {
		if (a.Site == site) != (b.Site == site) {
			if a.Site == site {
				return -1
			}
			return 1
		}
		return len(a.Fetching) - len(b.Fetching)
	})
	out := make([]*pb.DistributionPoint, 0, len(members))
	for _, m := range members {
		out = append(out, &pb.DistributionPoint{Name: m.Name, Site: m.Site, GrpcAddress: m.GRPCAddr, HttpAddress: m.HTTPAddr})
	}
	return out
}

// self describes this DP as a source.
func (n *Node) self() *pb.DistributionPoint {
	host := n.cfg.Advertise
	if host == "" {
		host = advertiseHost(n.grpcLis.Addr())
	}
	dp := &pb.DistributionPoint{Name: n.cfg.Name, Site: n.cfg.Site, GrpcAddress: net.JoinHostPort(host, port(n.grpcLis.Addr()))}
	if n.httpLis != nil {
		dp.HttpAddress = net.JoinHostPort(host, port(n.httpLis.Addr()))
	}
	return dp
}

// GossipAddr returns the address other DPs join this one at, or "" when
// clustering is off.
func (n *Node) GossipAddr() string {
	if n.gossip == nil {
		return ""
	}
	return n.gossip.LocalAddr()
}

// Members returns the live DPs of the cluster this DP sees, itself
// included (only itself when clustering is off).
func (n *Node) Members() []gossip.Member {
	if n.gossip == nil {
		return []gossip.Member{{Name: n.cfg.Name, Site: n.cfg.Site, State: gossip.StateAlive, Local: true}}
	}
	return n.gossip.Live("")
}

// docSources lists where signed documents come from: the upstream sources,
// then the live DPs of this site (asked with the forwarded mark, so they
// answer from what they hold or from upstream, and never ask back). With
// the internet link down, a DP still learns the newest version its site
// holds whole, and completes it from its peers. Documents are verified
// whoever serves them. A forwarded request uses upstream only.
func (n *Node) docSources(ctx context.Context) (upstream, peers []source.Source) {
	if n.gossip == nil || catalog.IsForwarded(ctx) {
		return n.upstream, nil
	}
	for _, m := range n.gossip.Live(n.cfg.Site) {
		if m.Local || m.GRPCAddr == "" {
			continue
		}
		if p := n.peers.get(m.GRPCAddr); p != nil {
			peers = append(peers, p.Forwarded())
		}
	}
	return n.upstream, peers
}

// followSite keeps this DP's latest that of its site (catalog.FollowSite):
// at every gossip change, each product whose newest version held whole by
// a live DP of the site is newer than this DP's is taken from that DP.
func (n *Node) followSite(ctx context.Context) {
	for {
		changed := n.gossip.Changed()
		newest := map[string]gossip.Member{}
		for _, m := range n.gossip.Live(n.cfg.Site) {
			if m.Local || m.GRPCAddr == "" {
				continue
			}
			for product, serials := range m.Versions {
				if len(serials) == 0 {
					continue
				}
				if best, ok := newest[product]; !ok || serials[len(serials)-1] > best.Versions[product][len(best.Versions[product])-1] {
					newest[product] = m
				}
			}
		}
		for product, m := range newest {
			if p := n.peers.get(m.GRPCAddr); p != nil {
				n.catalog.FollowSite(product, m.Versions[product][len(m.Versions[product])-1], p.Forwarded())
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// replicate follows the site's upstream fetches that this DP is next in
// line for (docs: DESIGN.md "How a DP resolves a blob"): at every gossip
// change, each blob that a live DP of the site announces fetching, where
// that DP is the blob's owner and this DP ranks second (gossip.Owners), is
// copied from the owner as its bytes arrive (fetch.Fetcher.Replicate). The
// owner keeps its lead on this DP small, so losing it mid-fetch costs the
// site little more than the blob once: this DP becomes the owner and
// resumes upstream at its own offset. A fetch is announced at its start as
// a broadcast, so the copy starts within a gossip round. It returns when
// ctx ends and its copies have stopped.
func (n *Node) replicate(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	following := map[string]string{} // digest → the owner it is copied from
	for {
		changed := n.gossip.Changed()
		announced := map[string]bool{}
		for _, m := range n.gossip.Live(n.cfg.Site) {
			if m.Local || m.GRPCAddr == "" {
				continue
			}
			for _, d := range m.Fetching {
				owners := n.gossip.Owners(n.cfg.Site, d)
				if len(owners) < 2 || owners[0].Name != m.Name || !owners[1].Local {
					continue
				}
				announced[d] = true
				if following[d] == m.Name {
					continue
				}
				following[d] = m.Name
				wg.Add(1)
				go func() {
					defer wg.Done()
					n.follow(ctx, d, m)
				}()
			}
		}
		for d := range following {
			if !announced[d] {
				delete(following, d)
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// follow copies digest, which owner is fetching, into this DP's cache.
func (n *Node) follow(ctx context.Context, digest string, owner gossip.Member) {
	if n.fetcher.Fetching(digest) {
		return // a request of this DP already fetches it, from the owner first
	}
	if _, err := n.cache.Stat(digest); err == nil {
		return
	}
	size, ok := n.catalog.BlobSize(digest)
	if !ok {
		var err error
		if size, err = n.ownerSize(ctx, owner, digest); err != nil {
			n.log.Debug("cannot replicate a blob the owner fetches", "blob", digest, "owner", owner.Name, "err", err)
			return
		}
	}
	n.log.Debug("replicating a blob the owner fetches", "blob", digest, "owner", owner.Name, "size", size)
	if err := n.fetcher.Replicate(ctx, digest, size); err != nil && ctx.Err() == nil {
		n.log.Info("replica of a blob the owner fetched failed", "blob", digest, "owner", owner.Name, "err", err)
	}
}

// ownerSize asks owner the size of digest, which it is fetching: a blob
// read that asks for no byte (past any blob's end, of what the owner holds
// now) answers with the size alone.
func (n *Node) ownerSize(ctx context.Context, owner gossip.Member, digest string) (int64, error) {
	p := n.peers.get(owner.GRPCAddr)
	if p == nil {
		return 0, fmt.Errorf("owner %s: %w: no client", owner.Name, ErrUnavailable)
	}
	r, err := p.AvailableOnly().Blob(ctx, digest, math.MaxInt64)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	sized, ok := r.(interface{ Size() int64 })
	if !ok || sized.Size() <= 0 {
		return 0, fmt.Errorf("owner %s: %w: no size announced", owner.Name, ErrUnavailable)
	}
	return sized.Size(), nil
}
