package portmap

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzLoad: any portmap config (portMappings, conditions, mark options,
// backend, prevResult) is loaded or refused with a CNI error other than
// 999; whatever is accepted has ports in 1-65535, a known protocol, an IP
// host address and conditions without line breaks (they end up in an
// iptables-restore batch).
// Seeds: f.Add below and testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"portmap","backend":"iptables","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","backend":"nftables","conditionsV4":["-s","10.0.0.0/8"],"runtimeConfig":{"portMappings":[{"hostPort":-1,"containerPort":70000,"protocol":"TCP -j ACCEPT"}]}}`))
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"n","backend":"iptables","conditionsV4":["-s 1.1.1.1\n-A INPUT -j DROP"],"markMasqBit":40,"externalSetMarkChain":"A B"}`))
	f.Fuzz(func(t *testing.T, conf []byte) {
		req := &cni.Request{Command: "ADD", ContainerID: "c", IfName: "eth0", Netns: "/x", Config: conf, Name: "n", Version: "1.0.0"}
		_, a, _, err := load(req)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI config error: %#v", err)
			}
			return
		}
		for _, m := range a.maps {
			if m.HostPort < 1 || m.HostPort > 65535 || m.ContainerPort < 1 || m.ContainerPort > 65535 {
				t.Fatalf("accepted mapping %+v", m)
			}
			if m.Protocol != "tcp" && m.Protocol != "udp" && m.Protocol != "sctp" {
				t.Fatalf("accepted protocol %q", m.Protocol)
			}
			if strings.ContainsAny(m.HostIP, " \n\t-") {
				t.Fatalf("accepted hostIP %q", m.HostIP)
			}
		}
		for _, c := range append(append([]string{}, a.cond4...), a.cond6...) {
			if strings.ContainsAny(c, "\n\r\x00") {
				t.Fatalf("accepted condition %q", c)
			}
		}
	})
}
