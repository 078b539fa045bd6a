package hostlocal

import (
	"encoding/json"
	"math/big"
	"net/netip"
	"testing"
)

// FuzzConfig feeds arbitrary network configurations (and CNI_ARGS) to the
// parser: it must never panic, and whatever it accepts must be usable:
// range sets of one family, each with an allocatable address, no two sets
// overlapping, each requested address given to a set that may hand it out.
// Seeds: testdata/fuzz/FuzzConfig.
func FuzzConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]]}}`), "")
	f.Add([]byte(`{"cniVersion":"0.2.0","name":"n","ipam":{"subnet":"fd00::/120","rangeStart":"fd00::10","gateway":"fd00::1"}}`), "IP=fd00::20")
	f.Fuzz(func(t *testing.T, data []byte, args string) {
		var conf Config
		if json.Unmarshal(data, &conf) != nil || conf.IPAM == nil {
			return
		}
		p, err := validate(&conf, conf.CNIVersion, args)
		if err != nil {
			return
		}
		for i := range p.sets {
			s := &p.sets[i]
			if s.Size().Sign() <= 0 {
				t.Fatalf("%s accepted with no allocatable address", s.Field)
			}
			for _, r := range s.Ranges {
				if r.Start.Is4() != s.Is4() || !r.Subnet.Contains(r.Start) || !r.Subnet.Contains(r.End) || r.End.Less(r.Start) {
					t.Fatalf("%s: bad range %+v", s.Field, r)
				}
			}
			for j := range p.sets[:i] {
				if s.overlaps(&p.sets[j]) {
					t.Fatalf("%s overlaps %s but was accepted", s.Field, p.sets[j].Field)
				}
			}
		}
		req, err := assignRequested(p)
		if err != nil {
			return
		}
		for i, a := range req {
			if a.IsValid() && !p.sets[i].Allocatable(a) {
				t.Fatalf("requested %s given to %s, which may not hand it out", a, p.sets[i].Field)
			}
		}
	})
}

// FuzzIterator checks the allocator's walk over a one- or two-range set
// from any starting point: every address it yields is allocatable and
// yielded once, and over a small set it yields exactly Size addresses.
// Seeds: testdata/fuzz/FuzzIterator.
func FuzzIterator(f *testing.F) {
	f.Add("10.0.0.0/28", "", "", "", "10.0.1.0/30", "10.0.0.7")
	f.Add("fd00::/120", "fd00::f0", "fd00::ff", "fd00::f0", "", "")
	f.Fuzz(func(t *testing.T, subnet, start, end, gw, subnet2, last string) {
		confs := []RangeConf{{Subnet: subnet, RangeStart: start, RangeEnd: end, Gateway: gw}}
		if subnet2 != "" {
			confs = append(confs, RangeConf{Subnet: subnet2})
		}
		set, err := parseRangeSet(confs, "f")
		if err != nil {
			return
		}
		l, _ := netip.ParseAddr(last)
		it := newIterator(&set, l)
		seen := map[netip.Addr]bool{}
		limit := 1 << 12
		for n := 0; n < limit; n++ {
			a, ok := it.Next()
			if !ok {
				break
			}
			if seen[a] {
				t.Fatalf("%s yielded twice", a)
			}
			if !set.Allocatable(a) {
				t.Fatalf("%s yielded but not allocatable in %s", a, set.String())
			}
			seen[a] = true
		}
		if size := set.Size(); size.Cmp(big.NewInt(int64(limit))) < 0 && int64(len(seen)) != size.Int64() {
			t.Fatalf("yielded %d addresses, set holds %v", len(seen), size)
		}
	})
}
