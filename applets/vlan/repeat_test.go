package vlan_test

import (
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestRepeatedAdd: see testnet.RepeatedAdd (VLAN 10 on trunk0, host-local;
// the concurrent rounds use VLAN 11). The repeated ADD meets the kernel's
// refusal of a second VLAN 10 on trunk0 before the ifname.
func TestRepeatedAdd(t *testing.T) {
	r, _ := node(t)
	testnet.RepeatedAdd{
		List:       list(t, r, "1.0.0", `"master":"trunk0","vlanId":10,`+hostLocal),
		Concurrent: list(t, r, "1.0.0", `"master":"trunk0","vlanId":11,`+hostLocal),
		Want:       []string{"eth0"},
		Rounds:     3,
	}.Run(t, r)
}
