package hostlocal

import (
	"encoding/json"
	"math/big"
	"net/netip"
	"strings"
	"testing"
)

func mustSet(t testing.TB, confs ...RangeConf) *RangeSet {
	t.Helper()
	s, err := parseRangeSet(confs, "ipam.ranges[0]")
	if err != nil {
		t.Fatal(err)
	}
	return &s
}

func walk(set *RangeSet, last string, max int) []string {
	var l netip.Addr
	if last != "" {
		l = netip.MustParseAddr(last)
	}
	it := newIterator(set, l)
	var out []string
	for len(out) < max {
		a, ok := it.Next()
		if !ok {
			break
		}
		out = append(out, a.String())
	}
	return out
}

func TestIteratorRoundRobin(t *testing.T) {
	set := mustSet(t, RangeConf{Subnet: "10.0.0.0/29"}, RangeConf{Subnet: "10.0.1.0/30", Gateway: "10.0.1.2"})
	// /29: .1 is the gateway, .7 the broadcast; /30: .1 and .2 (gateway .2)
	if got, want := strings.Join(walk(set, "", 100), " "), "10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6 10.0.1.1"; got != want {
		t.Errorf("from the start: %s, want %s", got, want)
	}
	if got, want := strings.Join(walk(set, "10.0.0.5", 100), " "), "10.0.0.6 10.0.1.1 10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5"; got != want {
		t.Errorf("after .5: %s, want %s", got, want)
	}
	if got, want := strings.Join(walk(set, "10.0.1.1", 100), " "), "10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6 10.0.1.1"; got != want {
		t.Errorf("after the last: %s, want %s", got, want)
	}
	// A last address outside the set (the ranges changed) starts over.
	if got := walk(set, "192.168.0.1", 1); got[0] != "10.0.0.2" {
		t.Errorf("unknown last: %v", got)
	}
	if set.Size().Int64() != 6 {
		t.Errorf("size = %v, want 6", set.Size())
	}
}

func TestIteratorCustomGatewayAndRange(t *testing.T) {
	// With a custom gateway, .1 is handed out (as the reference does).
	set := mustSet(t, RangeConf{Subnet: "10.0.0.0/29", Gateway: "10.0.0.6"})
	if got, want := strings.Join(walk(set, "", 100), " "), "10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5"; got != want {
		t.Errorf("%s, want %s", got, want)
	}
	// rangeStart at the network address and rangeEnd at broadcast: neither is handed out.
	set = mustSet(t, RangeConf{Subnet: "10.0.0.0/29", RangeStart: "10.0.0.0", RangeEnd: "10.0.0.7"})
	if got, want := strings.Join(walk(set, "", 100), " "), "10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6"; got != want {
		t.Errorf("%s, want %s", got, want)
	}
	if set.Size().Int64() != 5 {
		t.Errorf("size = %v", set.Size())
	}
	v6 := mustSet(t, RangeConf{Subnet: "fd00::/126"})
	if got, want := strings.Join(walk(v6, "", 100), " "), "fd00::2 fd00::3"; got != want {
		t.Errorf("v6: %s, want %s", got, want)
	}
	big64 := mustSet(t, RangeConf{Subnet: "fd00::/64"})
	if got := walk(big64, "fd00::ffff:ffff:ffff:fffe", 3); strings.Join(got, " ") != "fd00::ffff:ffff:ffff:ffff fd00::2 fd00::3" {
		t.Errorf("v6 wrap: %v", got)
	}
	if want, _ := new(big.Int).SetString("18446744073709551614", 10); big64.Size().Cmp(want) != 0 {
		t.Errorf("size of a /64 = %v", big64.Size())
	}
}

func TestValidateOrderAndFields(t *testing.T) {
	var conf Config
	raw := `{"name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24",
		"ranges":[[{"subnet":"10.2.0.0/24"}]]},
		"runtimeConfig":{"ipRanges":[[{"subnet":"10.3.0.0/24"}]],"ips":["10.2.0.9/24"]},
		"args":{"cni":{"ips":["10.1.0.9"]}}}`
	if err := json.Unmarshal([]byte(raw), &conf); err != nil {
		t.Fatal(err)
	}
	p, err := validate(&conf, "1.0.0", "IP=10.3.0.9")
	if err != nil {
		t.Fatal(err)
	}
	var fields []string
	for _, s := range p.sets {
		fields = append(fields, s.Field)
	}
	if got := strings.Join(fields, " "); got != "runtimeConfig.ipRanges[0] ipam ipam.ranges[0]" {
		t.Errorf("range set order: %s", got)
	}
	req, err := assignRequested(p)
	if err != nil {
		t.Fatal(err)
	}
	if req[0].String() != "10.3.0.9" || req[1].String() != "10.1.0.9" || req[2].String() != "10.2.0.9" {
		t.Errorf("requested per set: %v", req)
	}
}
