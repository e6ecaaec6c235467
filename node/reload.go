package node

// Reload re-reads what the DP takes from files while it runs: today the
// gossip key file (Config.GossipKeyFile), applied as Gossip.SetKeys does.
// A file that cannot be used changes nothing: the DP goes on with what it
// had, logs the error and returns it. Files are also re-read when they
// change, within seconds; Reload is for an operator's explicit request
// (the command line calls it on SIGHUP). Safe for concurrent use, before,
// during and after Run.
func (n *Node) Reload() error {
	if n.keys == nil {
		return nil
	}
	return n.keys.reload(true)
}
