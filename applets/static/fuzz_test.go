package static

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzLoad: any static config (and CNI_ARGS) is loaded or refused with a CNI
// error other than 999, never a panic.
// Seeds: f.Add below and testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"static","addresses":[{"address":"10.0.0.2/24","gateway":"10.0.0.1"},{"address":"fd00::2/64"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.0.0.1"]}}}`), "")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"static","addresses":[{"address":"10.0.0.300/24"}]},"runtimeConfig":{"ips":["x"]},"args":{"cni":{"ips":[1]}}}`), "IP=10.0.0.5/24,fd00::5/64;GATEWAY=10.0.0.1")
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"n","ipam":{"type":"static"}}`), "IgnoreUnknown=1;IP=bogus")
	f.Fuzz(func(t *testing.T, conf []byte, args string) {
		req := &cni.Request{Command: "ADD", ContainerID: "c", IfName: "eth0", Netns: "/x", Args: args, Config: conf, Name: "n", Version: "1.0.0"}
		if _, _, err := load(req); err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI config error: %#v", err)
			}
		}
	})
}
