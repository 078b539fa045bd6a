package ipmasq

import (
	"slices"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTSecondSetupAddsRulesOnly: once the table is in place, an ADD
// commits new rules and nothing else. Re-sending an existing chain (an
// update) or rewriting postrouting (a flush) would make the kernel free
// objects after an RCU grace period, which the process's exit waits for.
// The commit's notifications (the nftables multicast group) say what it
// changed.
func TestNFTSecondSetupAddsRulesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	var got []string
	err := node.Do(func() error {
		if err := Setup(NFTables, Attachment{Network: "mnet", ContainerID: "c1", IfName: "eth0"}, ips("10.1.0.2/24")); err != nil {
			return err
		}
		var err error
		got, err = testnet.NFTCommit(func() error {
			return Setup(NFTables, Attachment{Network: "mnet", ContainerID: "c2", IfName: "eth0"}, ips("10.1.0.3/24", "fd00::3/64"))
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"NEWRULE", "NEWRULE", "NEWGEN"}; !slices.Equal(got, want) {
		t.Errorf("second Setup's commit: %v, want %v", got, want)
	}
}
