package node

import "errors"

// Reload re-reads what the DP takes from files while it runs: the gossip
// key file (Config.GossipKeyFile), applied as Gossip.SetKeys does, and the
// TLS certificate, key and client CA (Config.TLSCertFile, ClientCAFile).
// A file that cannot be used changes nothing: the DP goes on with what it
// had, logs the error and returns it. Files are also re-read when they
// change, within seconds; Reload is for an operator's explicit request
// (the command line calls it on SIGHUP). Safe for concurrent use, before,
// during and after Run.
func (n *Node) Reload() error {
	err := n.reloadCertificates()
	if n.keys == nil {
		return err
	}
	return errors.Join(n.keys.reload(true), err)
}
