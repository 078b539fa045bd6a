package ipvlan_test

import (
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestRepeatedAdd: see testnet.RepeatedAdd (ipvlan L2 on dum0, host-local;
// the concurrent rounds use a second network on dum0).
func TestRepeatedAdd(t *testing.T) {
	r := node(t)
	testnet.RepeatedAdd{
		List:       list(t, r, "1.0.0", `"master":"dum0",`+hostLocal),
		Concurrent: list(t, r, "1.0.0", `"master":"dum0",`+hostLocal),
		Want:       []string{"CNI_IFNAME", "eth0"},
		Rounds:     3,
	}.Run(t, r)
}
