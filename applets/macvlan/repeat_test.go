package macvlan_test

import (
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestRepeatedAdd: see testnet.RepeatedAdd (macvlan on up0, host-local,
// one network throughout; host-local keeps one reservation).
func TestRepeatedAdd(t *testing.T) {
	r := node(t)
	testnet.RepeatedAdd{
		List:         list(t, r, ipamVersion(t), `"master":"up0",`+hostLocal),
		Want:         []string{"CNI_IFNAME", "eth0"},
		Rounds:       4,
		Reservations: true,
	}.Run(t, r)
}
