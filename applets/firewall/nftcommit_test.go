package firewall

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTSecondAddAddsRulesOnly: once the table is in place, an ADD
// commits the pod's rules and nothing else: re-sending an existing chain
// (an update) or rewriting the forward chain (a flush) would make the
// kernel free objects after an RCU grace period, which the process's exit
// waits for. The commit's notifications (the nftables multicast group)
// say what it changed.
func TestNFTSecondAddAddsRulesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := func(id, ip string) *attachment {
		return &attachment{Net: "net", ID: id, IfName: "eth0", Backend: "nftables", IPs: []netip.Prefix{netip.MustParsePrefix(ip)}}
	}
	var got []string
	err := node.Do(func() error {
		if err := (nftBackend{}).add(pod("c1", "10.88.0.2/32")); err != nil {
			return err
		}
		var err error
		got, err = testnet.NFTCommit(func() error { return (nftBackend{}).add(pod("c2", "10.88.0.3/32")) })
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"NEWRULE", "NEWRULE", "NEWGEN"}; !slices.Equal(got, want) {
		t.Errorf("second ADD's commit: %v, want %v", got, want)
	}
}
