package dummy_test

import (
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestRepeatedAdd: see testnet.RepeatedAdd (dummy with host-local, one
// network throughout; host-local keeps one reservation).
func TestRepeatedAdd(t *testing.T) {
	testnet.RequireKernel(t, "dummy")
	r := testnet.NewRuntime(t)
	testnet.RepeatedAdd{
		List:         list(t, r, "1.1.0", `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.50.0.0/24"}]]}`),
		Want:         []string{"CNI_IFNAME", "eth0"},
		Rounds:       2,
		Reservations: true,
	}.Run(t, r)
}
