package tap_test

import (
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestRepeatedAdd: see testnet.RepeatedAdd (tap with host-local, one
// network throughout; host-local keeps one reservation).
func TestRepeatedAdd(t *testing.T) {
	r := node(t)
	testnet.RepeatedAdd{
		List:         list(t, r, "1.1.0", `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.20.0.0/24"}]]}`),
		Want:         []string{"CNI_IFNAME", "eth0"},
		Rounds:       4,
		Reservations: true,
	}.Run(t, r)
}
