// Package gossip keeps a distribution point (DP) in its cluster, on
// hashicorp/memberlist: who the DPs are (name, site, gRPC and HTTP addresses
// in memberlist's node metadata), whether each is alive, which product
// versions each holds whole, which blobs each is fetching from upstream
// right now, and which DP of a site owns a blob (rendezvous hashing).
//
// A DP calls New, then Run in its own goroutine; it reports its holdings
// with SetVersions and SetFetching, and asks Holders, Fetchers, Owners and
// Live when it resolves a miss. Changed signals every change, for watchers.
//
// # Spreading holdings
//
// Each DP's holdings carry a Lamport-style clock, incremented on every local
// change and started at the wall clock (in nanoseconds) when the process
// starts, so a restarted DP's state wins over what the cluster remembers of
// its previous run; should a clock ever go backwards, a DP that sees a newer
// clock for itself moves past it and announces its state again. Nothing
// older ever overwrites something newer: a message about a node is applied
// only if its clock is higher than the one known.
//
// A change is broadcast at once as a delta (the DP's versions, or its
// fetches) through memberlist's transmit-limited queue, piggybacked on
// memberlist's gossip; a DP that learns something newer from a broadcast
// relays it, so news spreads epidemically in a few gossip intervals. Every
// push/pull (at join, and every Memberlist.PushPullInterval) exchanges the
// full inventory of every node, which repairs lost packets.
//
// # Encryption
//
// With Config.Keys, gossip is encrypted and authenticated with AES-GCM by
// memberlist's keyring: the first key encrypts, every key decrypts, so
// SetKeys rotates a key without a restart (add it on every DP, then make
// it first on every DP, then remove the old one). ReadKeyFile reads keys
// from a file of one base64 key per line; KeyFingerprint names a key in
// logs.
//
// # Signed holdings
//
// With Config.Identity (the DP's certificate and key), every part of its
// holdings a DP announces (versions, fetching, leave) is signed by its key
// over (type, name, body), and the exact signed bytes travel and are
// relayed, by broadcast and in push/pull state, with the key's id. Members'
// certificates travel in gossip too (a broadcast when a DP starts or its
// certificate changes, and every chain a DP trusts in its push/pull state).
// A DP accepts a part about a member only when it verifies with a key from
// a certificate that chains to Config.Roots, has the dp role and names
// that member; a part signed by another member's key or that does not
// verify is dropped and counted (Dropped); one whose key is not known yet
// is held back, not used, until the certificate arrives (at most 256
// parts, for at most 10 minutes); unsigned parts are ignored (logged once).
// So no member can state another's holdings, nor move another's clock.
//
// # Caveats
//
//   - A broadcast must fit in one UDP packet (Memberlist.UDPBufferSize,
//     1400 bytes by default, less framing). A DP fetching more digests than
//     fit (about 39 SHA-256 digests in the default 1400-byte packets) broadcasts the first ones, sorted, marked
//     truncated; the full list reaches the others at the next push/pull. The
//     same holds for a DP holding very many products. Fetchers may therefore
//     miss a fetch for up to a push/pull interval; callers must treat it as
//     a hint (a request to a non-fetching DP still works).
//   - memberlist v0.7.0 does not expose its suspect state to applications,
//     so members are reported alive until declared dead (StateSuspect is
//     never produced), and memberlist's events do not tell a failed member
//     from one that left: Gossip announces its own leave in a message of its
//     own, and a member whose announcement was missed shows as dead.
//   - Dead members are retried by their last address for ForgetAfter; a DP
//     that comes back with a new address is found through Config.Join or
//     by joining it to any member.
//   - Encryption is turned on or off only at start: SetKeys changes the
//     keys of an encrypted Gossip, and a Gossip without keys stays plain.
//   - memberlist's RemoveKey rewrites the keyring's list in place, which a
//     packet being decrypted at that instant may read; SetKeys removes keys
//     from the end of the list, where nothing moves, and in a rotation the
//     old key is last once the new one is first.
//   - With Config.Identity, a certificate accepted stays trusted until it
//     expires (there is no revocation; a CA file that changes applies to
//     certificates seen after the change, and a chain is checked again at
//     most once a minute when it comes back). A member's two newest keys
//     are kept. DPs with and without certificates do not mix: the ones with
//     ignore the others' holdings.
//   - Owners is only as consistent as membership: while DPs disagree about
//     who is alive (during a failure, a join, a partition) they may
//     disagree about an owner. Callers must not forward a request that was
//     itself forwarded.
package gossip
