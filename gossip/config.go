package gossip

import (
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures a Gossip. Start from DefaultConfig, set Name, Site,
// GRPCAddr (and HTTPAddr, Join, Keys where used), then pass it to New,
// which calls Validate.
type Config struct {
	// Name identifies this DP in the cluster; it must be unique among the
	// DPs that gossip together and stay the same across restarts (the
	// others recognise a restarted DP by it). Default: the host name.
	Name string

	// Site is the DP's site (a branch office, a LAN). Required, non-empty:
	// queries take "" to mean every site. Default: "default".
	Site string

	// GRPCAddr is the DP's gRPC address as the other DPs and endpoints must
	// dial it (host:port, host not empty). Required.
	GRPCAddr string

	// HTTPAddr is the DP's HTTP address as others must reach it (host:port),
	// or "" if it serves no HTTP. Default: "".
	HTTPAddr string

	// BindAddr is where gossip listens, TCP and UDP, as host:port. An empty
	// host listens on every interface; port 0 picks a free port (tests).
	// Ignored when Memberlist.Transport is set. Default: ":7946",
	// memberlist's port.
	BindAddr string

	// AdvertiseAddr is the IP:port the other members should use to reach
	// this one, when it differs from the bound address (NAT, containers, or
	// a BindAddr on every interface of a host whose address memberlist would
	// not pick: it picks a private IPv4 address). Default: "" (derived from
	// BindAddr).
	AdvertiseAddr string

	// Join lists gossip addresses (host:port) of DPs to join. Run contacts
	// them at once, and again, together with the addresses of the members
	// it last knew that are now dead, every RejoinInterval while the node is
	// alone or any member it knew is dead: a DP cut off by a partition, or
	// started while its peers were down, joins again by itself when the
	// network heals (hashicorp/memberlist#222). Default: none.
	Join []string

	// RejoinInterval is how often Run retries Join and dead members. 0 means
	// the default: 5s.
	RejoinInterval time.Duration

	// LeaveTimeout bounds how long Run waits, when its context ends, for
	// memberlist to finish gossiping the leave (one transmission per gossip
	// round, 4 rounds of 200ms in a two-member cluster). The leave message
	// Gossip sends each live member directly goes out before the wait, so a
	// member that receives it reports the node "left" even if the wait is
	// cut short. It is most of the time a stopping DP takes. 0 means the
	// default: 1s.
	LeaveTimeout time.Duration

	// ForgetAfter is how long a dead or left member stays in Members (and,
	// if dead, is retried) before it is forgotten. 0 means the default: 72h,
	// so a partition of a long weekend still heals by itself.
	ForgetAfter time.Duration

	// Keys, if set, encrypt and authenticate all gossip with AES-GCM
	// (memberlist's keyring): Keys[0] encrypts, every key decrypts. Each is
	// 16, 24 or 32 bytes (AES-128, -192, -256); a key listed twice counts
	// once. Members that share no key with the cluster cannot join.
	// Gossip.SetKeys changes them while running (a rotation); encryption
	// itself is turned on or off only by a restart. ReadKeyFile reads
	// them from a file. Default: none (plain text).
	Keys [][]byte

	// SecretKey is Keys with one key, kept for callers that have one; set
	// Keys or SecretKey, not both. Default: none.
	SecretKey []byte

	// Identity, when set, is the DP's certificate and key (a *pki.KeyPair,
	// read again when it changes; Run looks every RejoinInterval): every
	// part of its holdings it announces is signed with the key, and the
	// certificate goes to the members in gossip. Holdings of other members
	// are then accepted only when signed by the key of a dp certificate
	// that chains to Roots and names that member (its common name is the
	// member's Name); unsigned ones are ignored. The certificate's common
	// name should be Name, or members refuse this DP's holdings. Default:
	// none (holdings are neither signed nor verified).
	Identity CertificateSource

	// Roots are the CAs that members' certificates must chain to (a
	// *pki.CertPool, read again when it changes); used only with Identity.
	// Default: nil, the system roots.
	Roots RootSource

	// Memberlist holds memberlist's own settings (timers, buffer sizes,
	// Transport). nil means memberlist.DefaultLANConfig(). New copies it and
	// overrides: Name; BindAddr and BindPort (from BindAddr); AdvertiseAddr
	// and AdvertisePort (from AdvertiseAddr; when it is empty, cleared so
	// that the transport derives them); Delegate and Events
	// (Gossip's own); Keyring and SecretKey (when Keys or SecretKey is set:
	// a keyring of Gossip's own); Logger (bridged to
	// Logger) and LogOutput (cleared); Transport, when nil, becomes a
	// memberlist.NetTransport on BindAddr whose outgoing dials are cancelled
	// when Run's context ends. Every other field is used as given.
	Memberlist *memberlist.Config

	// Logger receives Gossip's and memberlist's logs (memberlist's
	// "[LEVEL] memberlist: msg" lines at their slog level), with
	// component=gossip. nil means slog.Default().
	Logger *slog.Logger
}

// Defaults applied by DefaultConfig and, for zero durations, by New.
const (
	DefaultBindAddr       = ":7946"
	DefaultSite           = "default"
	DefaultRejoinInterval = 5 * time.Second
	DefaultLeaveTimeout   = time.Second
	DefaultForgetAfter    = 72 * time.Hour
)

// DefaultConfig returns a Config with every default set; the caller must
// still set GRPCAddr (and usually Site and Join).
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Name:           host,                  // stable across restarts of the machine
		Site:           DefaultSite,           // one site until told otherwise
		BindAddr:       DefaultBindAddr,       // memberlist's port, every interface
		RejoinInterval: DefaultRejoinInterval, // a healed partition rejoins within 5s
		LeaveTimeout:   DefaultLeaveTimeout,   // a stop waits at most 1s for the leave to spread
		ForgetAfter:    DefaultForgetAfter,    // dead members are retried for 3 days
		// Memberlist nil: memberlist.DefaultLANConfig() timers (probe 1s,
		// gossip 200ms to 3 nodes, push/pull 30s).
	}
}

// Validate checks c and returns an error wrapping ErrInvalidConfig that
// names the first bad field. It does not modify c.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.Name == "" {
		return bad("Name is empty; set a name unique among the DPs (e.g. the host name)")
	}
	if c.Site == "" {
		return bad("Site is empty; set the DP's site (%q if there is only one)", DefaultSite)
	}
	if err := checkHostPort(c.GRPCAddr, true, false); err != nil {
		return bad("GRPCAddr %q: %v; set the address other DPs dial for gRPC", c.GRPCAddr, err)
	}
	if c.HTTPAddr != "" {
		if err := checkHostPort(c.HTTPAddr, true, false); err != nil {
			return bad("HTTPAddr %q: %v; set the address others use for HTTP, or leave it empty", c.HTTPAddr, err)
		}
	}
	if c.Memberlist == nil || c.Memberlist.Transport == nil {
		if err := checkHostPort(c.BindAddr, false, true); err != nil {
			return bad("BindAddr %q: %v; use host:port, e.g. %q", c.BindAddr, err, DefaultBindAddr)
		}
	}
	if c.AdvertiseAddr != "" {
		host, _, err := net.SplitHostPort(c.AdvertiseAddr)
		if err == nil {
			err = checkHostPort(c.AdvertiseAddr, true, false)
		}
		if err == nil && net.ParseIP(host) == nil {
			err = fmt.Errorf("host is not an IP address")
		}
		if err != nil {
			return bad("AdvertiseAddr %q: %v; use IP:port", c.AdvertiseAddr, err)
		}
	}
	for i, j := range c.Join {
		if j == "" {
			return bad("Join[%d] is empty; give host:port of a DP's gossip address", i)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"RejoinInterval", c.RejoinInterval}, {"LeaveTimeout", c.LeaveTimeout}, {"ForgetAfter", c.ForgetAfter}} {
		if d.v < 0 {
			return bad("%s is negative (%v); use 0 for the default", d.name, d.v)
		}
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return bad("SecretKey is %d bytes; use 16, 24 or 32 bytes (AES-128, -192, -256)", len(c.SecretKey))
	}
	if len(c.Keys) > 0 {
		if len(c.SecretKey) > 0 {
			return bad("both Keys and SecretKey are set; set one")
		}
		if err := validateKeys(c.Keys); err != nil {
			return bad("Keys: %v", err)
		}
	}
	if ml := c.Memberlist; ml != nil {
		if max := maxBroadcastSize(ml); max < minBroadcastSize {
			return bad("Memberlist.UDPBufferSize %d leaves %d bytes for a broadcast (Label %d bytes); need at least %d",
				ml.UDPBufferSize, max, len(ml.Label), minBroadcastSize)
		}
	}
	if c.Identity != nil {
		if _, err := newIdentity(c.Identity.Certificate()); err != nil {
			return bad("Identity: %v", err)
		}
	}
	if n := len(encodeMeta(c.meta())); n > memberlist.MetaMaxSize {
		return bad("Name, Site, GRPCAddr and HTTPAddr take %d bytes of node metadata; memberlist allows %d", n, memberlist.MetaMaxSize)
	}
	return nil
}

func (c *Config) meta() nodeMeta {
	return nodeMeta{Name: c.Name, Site: c.Site, GRPCAddr: c.GRPCAddr, HTTPAddr: c.HTTPAddr}
}

// withDefaults returns c with zero durations and a nil Logger replaced by
// their defaults.
func (c Config) withDefaults() Config {
	if c.RejoinInterval == 0 {
		c.RejoinInterval = DefaultRejoinInterval
	}
	if c.LeaveTimeout == 0 {
		c.LeaveTimeout = DefaultLeaveTimeout
	}
	if c.ForgetAfter == 0 {
		c.ForgetAfter = DefaultForgetAfter
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// memberlistConfig builds memberlist's config: a copy of c.Memberlist (or the
// LAN defaults) with the overrides documented on Config.Memberlist, except
// Transport, which New fills in.
func (c *Config) memberlistConfig(d *delegate, logger *log.Logger) *memberlist.Config {
	var mc memberlist.Config
	if c.Memberlist != nil {
		mc = *c.Memberlist
	} else {
		mc = *memberlist.DefaultLANConfig()
	}
	mc.Name = c.Name
	if mc.Transport == nil {
		host, port := splitHostPort(c.BindAddr)
		if host == "" {
			host = "0.0.0.0"
		}
		mc.BindAddr, mc.BindPort = host, port
	}
	if c.AdvertiseAddr != "" {
		mc.AdvertiseAddr, mc.AdvertisePort = splitHostPort(c.AdvertiseAddr)
	} else {
		mc.AdvertiseAddr, mc.AdvertisePort = "", mc.BindPort
	}
	mc.Delegate = d
	mc.Events = d
	if keys := c.keys(); len(keys) > 0 {
		// Validate checked the keys: NewKeyring cannot fail.
		mc.Keyring, _ = memberlist.NewKeyring(keys[1:], keys[0])
		mc.SecretKey = nil
	}
	mc.LogOutput = nil
	mc.Logger = logger
	return &mc
}

// keys returns copies of Keys, or of SecretKey as the only key.
func (c *Config) keys() [][]byte {
	keys := c.Keys
	if len(c.SecretKey) > 0 {
		keys = [][]byte{c.SecretKey}
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = slices.Clone(k)
	}
	return out
}

// Room left for memberlist's framing in a packet: compound header (2),
// encryption (≤45), per-message overhead (3), with margin.
const (
	packetHeadroom   = 64
	minBroadcastSize = 256
)

// maxBroadcastSize is the largest broadcast Gossip queues: what memberlist
// can fit in one packet next to its own framing.
func maxBroadcastSize(mc *memberlist.Config) int {
	n := mc.UDPBufferSize - packetHeadroom
	if mc.Label != "" {
		n -= 2 + len(mc.Label)
	}
	return n
}

// checkHostPort checks a host:port; needHost requires a host, allowZero a
// port of 0.
func checkHostPort(addr string, needHost, allowZero bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if needHost && host == "" {
		return fmt.Errorf("host is empty")
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if p == 0 && !allowZero {
		return fmt.Errorf("port is 0")
	}
	return nil
}

// splitHostPort splits an address that checkHostPort accepted.
func splitHostPort(addr string) (string, int) {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return host, p
}
