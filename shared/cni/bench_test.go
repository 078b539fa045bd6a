package cni_test

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
)

// Result conversion, paid by every applet of every chain: a main applet's
// result rendered in each spec version, and a chained applet's prevResult
// parsed back from each.
//
//	go test -run '^$' -bench Result ./shared/cni/
func benchResult() *current.Result {
	ip4, n4, _ := net.ParseCIDR("10.88.0.2/16")
	ip6, n6, _ := net.ParseCIDR("fd88::2/64")
	_, def4, _ := net.ParseCIDR("0.0.0.0/0")
	_, def6, _ := net.ParseCIDR("::/0")
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: "cni0", Mac: "02:00:00:00:00:01"},
			{Name: "veth1234", Mac: "02:00:00:00:00:02"},
			{Name: "eth0", Mac: "02:00:00:00:00:03", Sandbox: "/run/netns/pod"},
		},
		IPs: []*current.IPConfig{
			{Interface: current.Int(2), Address: net.IPNet{IP: ip4, Mask: n4.Mask}, Gateway: net.ParseIP("10.88.0.1")},
			{Interface: current.Int(2), Address: net.IPNet{IP: ip6, Mask: n6.Mask}, Gateway: net.ParseIP("fd88::1")},
		},
		Routes: []*types.Route{{Dst: *def4}, {Dst: *def6}},
		DNS:    types.DNS{Nameservers: []string{"10.88.0.1"}, Search: []string{"svc.cluster.local"}},
	}
}

var benchVersions = []string{"1.1.0", "1.0.0", "0.4.0", "0.3.1", "0.2.0"}

func BenchmarkResultMarshal(b *testing.B) {
	res := benchResult()
	for _, v := range benchVersions {
		b.Run(v, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cni.MarshalResultJSON(res, v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkResultPrevResult(b *testing.B) {
	res := benchResult()
	for _, v := range benchVersions[:4] {
		out, err := cni.MarshalResultJSON(res, v)
		if err != nil {
			b.Fatal(err)
		}
		conf, _ := json.Marshal(map[string]any{"cniVersion": v, "name": "net", "type": "tuning", "prevResult": json.RawMessage(out)})
		b.Run(v, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var nc cni.NetConf
				if err := json.Unmarshal(conf, &nc); err != nil {
					b.Fatal(err)
				}
				if _, err := cni.PrevResult(&nc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
