package portmap

import (
	"net"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTSecondAddAddsRulesOnly: once the tables are in place, an ADD
// commits the pod's rules and nothing else: re-sending an existing chain
// (an update) or rewriting hostports_all, the hook chains or the guard (a
// flush) would make the kernel free objects after an RCU grace period,
// which the process's exit waits for. The commit's notifications (the
// nftables multicast group) say what it changed.
func TestNFTSecondAddAddsRulesOnly(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := func(id, ip string) *attachment {
		_, n, _ := net.ParseCIDR("10.88.0.0/24")
		n.IP = net.ParseIP(ip).To4()
		return &attachment{net: "net", id: id, snat: true, v4: n, maps: []Mapping{{8080, 80, "tcp", ""}, {53, 53, "udp", "192.168.1.1"}}}
	}
	var got []string
	err := node.Do(func() error {
		if err := (nftBackend{}).add(pod("c1", "10.88.0.2")); err != nil {
			return err
		}
		var err error
		got, err = testnet.NFTCommit(func() error { return (nftBackend{}).add(pod("c2", "10.88.0.3")) })
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rules := 0
	for _, typ := range got[:len(got)-1] {
		if typ != "NEWRULE" {
			t.Errorf("second ADD's commit has %s besides NEWRULE: %v", typ, got)
			break
		}
		rules++
	}
	if rules == 0 {
		t.Errorf("second ADD's commit added no rule: %v", got)
	}
}
