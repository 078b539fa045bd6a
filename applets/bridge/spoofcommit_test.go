package bridge

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestSpoofCheckSecondSetupCreatesOnly: once the PREROUTING chain is in
// place, a pod's spoof check creates its two chains and their rules and
// nothing else: re-sending PREROUTING (an update) or flushing a chain would
// make the kernel free objects after an RCU grace period, which the
// process's exit waits for. The commit's notifications (the nftables
// multicast group) say what it changed.
func TestSpoofCheckSecondSetupCreatesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	mac, _ := net.ParseMAC("02:00:00:00:00:02")
	var got []string
	err := node.Do(func() error {
		if err := setupSpoofCheck(spoofID("c1", "eth0"), "veth1", mac, []netip.Addr{netip.MustParseAddr("10.88.0.2")}); err != nil {
			return err
		}
		var err error
		got, err = testnet.NFTCommit(func() error {
			return setupSpoofCheck(spoofID("c2", "eth0"), "veth2", mac, []netip.Addr{netip.MustParseAddr("10.88.0.3")})
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, typ := range got {
		count[typ]++
	}
	if count["NEWCHAIN"] != 2 || count["NEWRULE"] == 0 || len(count) != 3 {
		t.Errorf("second spoof check's commit: %v, want 2 NEWCHAIN, NEWRULEs, NEWGEN and nothing else", got)
	}
}
