package vlan

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzLoad: any vlan config (and CNI_ARGS) is loaded or refused with a CNI
// error other than 999, never a panic.
// Seeds: f.Add below and testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"vlan","master":"eth0","vlanId":10,"mtu":1500,"ipam":{"type":"host-local"}}`), "")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","master":"eth0","vlanId":5000,"protocol":"802.1x","linkInContainer":true}`), "")
	f.Fuzz(func(t *testing.T, conf []byte, args string) {
		req := &cni.Request{Command: "ADD", ContainerID: "c", IfName: "eth0", Netns: "/x", Args: args, Config: conf, Name: "n", Version: "1.0.0"}
		if _, err := load(req); err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI config error: %#v", err)
			}
		}
	})
}
