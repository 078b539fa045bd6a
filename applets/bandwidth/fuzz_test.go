package bandwidth

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzLoad: any bandwidth config (static or runtimeConfig limits, any
// numbers) is loaded or refused with a CNI error other than 999.
// Seeds: f.Add below and testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"bandwidth","ingressRate":1000000,"ingressBurst":100000,"egressRate":2000000,"egressBurst":200000}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"bandwidth":{"ingressRate":18446744073709551615,"ingressBurst":1}},"latencyMs":0}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ingressRate":-1,"latencyMs":1e308,"shapedSubnets":["10.0.0.0/8"],"unshapedSubnets":["x"]}`))
	f.Fuzz(func(t *testing.T, conf []byte) {
		req := &cni.Request{Command: "ADD", ContainerID: "c", IfName: "eth0", Netns: "/x", Config: conf, Name: "n", Version: "1.0.0"}
		if _, _, err := load(req); err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI config error: %#v", err)
			}
		}
	})
}
