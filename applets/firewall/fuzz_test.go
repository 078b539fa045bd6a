package firewall

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzLoad: any firewall config is loaded or refused with a CNI error
// other than 999; an accepted admin chain name cannot carry arguments or
// line breaks into iptables.
// Seeds: f.Add below and testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"firewall","backend":"iptables","iptablesAdminChainName":"CNI-ADMIN","ingressPolicy":"same-bridge","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth0"},{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":2}]}}`), true)
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","backend":"firewalld","firewalldZone":"trusted","iptablesAdminChainName":"A -j ACCEPT"}`), false)
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"n","backend":"nftables","ingressPolicy":"isolated","prevResult":{"ips":[{"address":"x"}]}}`), true)
	f.Fuzz(func(t *testing.T, conf []byte, needPrev bool) {
		req := &cni.Request{Command: "ADD", ContainerID: "c", IfName: "eth0", Netns: "/x", Config: conf, Name: "n", Version: "1.0.0"}
		a, _, err := load(req, needPrev)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI config error: %#v", err)
			}
			return
		}
		if strings.ContainsAny(a.Admin, " \t\n\r\"'\x00") {
			t.Fatalf("accepted admin chain %q", a.Admin)
		}
	})
}
