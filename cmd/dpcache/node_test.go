package main

import "testing"

// --gossip-key-file comes from the YAML file and from
// DPCACHE_GOSSIP_KEY_FILE like every node setting; the environment wins.
func TestNodeConfig_GossipKeyFile(t *testing.T) {
	cmd := newNode()
	if err := applyConfigData(cmd.Flags(), "node.yaml", []byte("gossip-key-file: /etc/dpcache/gossip.keys\n")); err != nil {
		t.Fatal(err)
	}
	if got := cmd.Flags().Lookup("gossip-key-file").Value.String(); got != "/etc/dpcache/gossip.keys" {
		t.Errorf("from YAML: %q", got)
	}

	t.Setenv("DPCACHE_GOSSIP_KEY_FILE", "/run/secrets/gossip.keys")
	cmd = newNode()
	if err := applyConfigData(cmd.Flags(), "node.yaml", []byte("gossip-key-file: /etc/dpcache/gossip.keys\n")); err != nil {
		t.Fatal(err)
	}
	if got := cmd.Flags().Lookup("gossip-key-file").Value.String(); got != "/run/secrets/gossip.keys" {
		t.Errorf("from the environment: %q", got)
	}
}
