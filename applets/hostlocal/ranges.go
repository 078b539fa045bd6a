package hostlocal

import (
	"fmt"
	"math/big"
	"net/netip"
	"strings"
)

// RangeConf is one range as written in the configuration: a subnet and,
// optionally, the first and last address to hand out and the gateway.
type RangeConf struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// Range is a validated range: Start..End (inclusive) inside Subnet.
// Gateway is never handed out; nor are the subnet's own address and, in
// IPv4, its broadcast address, whatever Start and End say.
type Range struct {
	Subnet     netip.Prefix
	Start, End netip.Addr
	Gateway    netip.Addr
}

// RangeSet is a pool of ranges of one family from which one address is
// allocated per attachment. Field names it in error messages
// ("ipam.ranges[1]").
type RangeSet struct {
	Field  string
	Ranges []Range
}

// parseAddr parses an IP address without zone, IPv4-mapped forms reduced
// to IPv4 as the reference does.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: an address with a zone cannot be allocated", s)
	}
	return a.Unmap(), nil
}

// parseRequested accepts an address or a CIDR (whose address is taken), as
// the reference's runtimeConfig.ips does.
func parseRequested(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		return p.Addr().Unmap(), nil
	}
	return parseAddr(s)
}

// parseRange validates one range. field is its path in the configuration
// ("ipam.ranges[0][1]"); every error names the offending key.
func parseRange(rc RangeConf, field string) (Range, error) {
	var r Range
	if rc.Subnet == "" {
		return r, fmt.Errorf("%s.subnet: missing", field)
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(rc.Subnet))
	if err != nil {
		return r, fmt.Errorf("%s.subnet: %q is not a CIDR", field, rc.Subnet)
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return r, fmt.Errorf("%s.subnet: %q: use the plain IPv4 or IPv6 form", field, rc.Subnet)
	}
	if p.Masked() != p {
		return r, fmt.Errorf("%s.subnet: %s has host bits set; the network address is %s", field, p, p.Masked())
	}
	if p.Bits() > p.Addr().BitLen()-2 {
		return r, fmt.Errorf("%s.subnet: %s is too small to allocate from (a /%d leaves no host addresses)", field, p, p.Bits())
	}
	r.Subnet = p
	r.Gateway = p.Addr().Next()
	if rc.Gateway != "" {
		if r.Gateway, err = parseAddr(rc.Gateway); err != nil {
			return r, fmt.Errorf("%s.gateway: %v", field, err)
		}
		if r.Gateway.Is4() != p.Addr().Is4() {
			return r, fmt.Errorf("%s.gateway: %s is not of the family of subnet %s", field, r.Gateway, p)
		}
	}
	r.Start = p.Addr().Next()
	if rc.RangeStart != "" {
		if r.Start, err = parseAddr(rc.RangeStart); err != nil {
			return r, fmt.Errorf("%s.rangeStart: %v", field, err)
		}
		if !p.Contains(r.Start) {
			return r, fmt.Errorf("%s.rangeStart: %s is outside subnet %s", field, r.Start, p)
		}
	}
	r.End = lastAddr(p)
	if p.Addr().Is4() {
		r.End = r.End.Prev() // not the broadcast address
	}
	if rc.RangeEnd != "" {
		if r.End, err = parseAddr(rc.RangeEnd); err != nil {
			return r, fmt.Errorf("%s.rangeEnd: %v", field, err)
		}
		if !p.Contains(r.End) {
			return r, fmt.Errorf("%s.rangeEnd: %s is outside subnet %s", field, r.End, p)
		}
	}
	if r.End.Less(r.Start) {
		return r, fmt.Errorf("%s.rangeEnd: %s is before rangeStart %s", field, r.End, r.Start)
	}
	if r.Size().Sign() == 0 {
		return r, fmt.Errorf("%s: range %s-%s is too small: it holds no address but the gateway, network or broadcast address", field, r.Start, r.End)
	}
	return r, nil
}

// lastAddr is the last address of p (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Contains reports whether a lies between Start and End.
func (r *Range) Contains(a netip.Addr) bool {
	return a.Is4() == r.Start.Is4() && !a.Less(r.Start) && !r.End.Less(a)
}

// Allocatable reports whether a may be handed out: inside the range and
// not the gateway, the subnet address or the IPv4 broadcast address.
func (r *Range) Allocatable(a netip.Addr) bool {
	if !r.Contains(a) || a == r.Gateway || a == r.Subnet.Addr() {
		return false
	}
	return !(a.Is4() && a == lastAddr(r.Subnet))
}

// Size is the number of addresses Allocatable accepts.
func (r *Range) Size() *big.Int {
	n := new(big.Int).Sub(new(big.Int).SetBytes(r.End.AsSlice()), new(big.Int).SetBytes(r.Start.AsSlice()))
	n.Add(n, big.NewInt(1))
	excluded := map[netip.Addr]bool{r.Gateway: true, r.Subnet.Addr(): true}
	if r.Start.Is4() {
		excluded[lastAddr(r.Subnet)] = true
	}
	for a := range excluded {
		if r.Contains(a) {
			n.Sub(n, big.NewInt(1))
		}
	}
	return n
}

// overlaps reports whether two ranges share an address.
func (r *Range) overlaps(o *Range) bool {
	return r.Start.Is4() == o.Start.Is4() && !r.End.Less(o.Start) && !o.End.Less(r.Start)
}

func (r *Range) String() string {
	return fmt.Sprintf("%s-%s", r.Start, r.End)
}

// Is4 reports the set's family.
func (s *RangeSet) Is4() bool { return s.Ranges[0].Start.Is4() }

// Contains reports whether a is in one of the set's ranges.
func (s *RangeSet) Contains(a netip.Addr) bool { return s.rangeFor(a) != nil }

// Allocatable reports whether a may be handed out from this set.
func (s *RangeSet) Allocatable(a netip.Addr) bool {
	r := s.rangeFor(a)
	return r != nil && r.Allocatable(a)
}

func (s *RangeSet) rangeFor(a netip.Addr) *Range {
	for i := range s.Ranges {
		if s.Ranges[i].Contains(a) {
			return &s.Ranges[i]
		}
	}
	return nil
}

func (s *RangeSet) overlaps(o *RangeSet) bool {
	for i := range s.Ranges {
		for j := range o.Ranges {
			if s.Ranges[i].overlaps(&o.Ranges[j]) {
				return true
			}
		}
	}
	return false
}

func (s *RangeSet) String() string {
	parts := make([]string, len(s.Ranges))
	for i := range s.Ranges {
		r := &s.Ranges[i]
		parts[i] = r.Subnet.String()
		if r.Start != r.Subnet.Addr().Next() || (r.End != lastAddr(r.Subnet) && r.End != lastAddr(r.Subnet).Prev()) {
			parts[i] += " (" + r.String() + ")"
		}
	}
	return strings.Join(parts, ", ")
}

// Size is the number of allocatable addresses of the set.
func (s *RangeSet) Size() *big.Int {
	n := new(big.Int)
	for i := range s.Ranges {
		n.Add(n, s.Ranges[i].Size())
	}
	return n
}

// parseRangeSet validates a set: at least one range, one family, no
// overlaps between its ranges.
func parseRangeSet(confs []RangeConf, field string) (RangeSet, error) {
	set := RangeSet{Field: field}
	if len(confs) == 0 {
		return set, fmt.Errorf("%s: empty range set", field)
	}
	for j, rc := range confs {
		rf := fmt.Sprintf("%s[%d]", field, j)
		if field == "ipam" { // the legacy top-level keys
			rf = field
		}
		r, err := parseRange(rc, rf)
		if err != nil {
			return set, err
		}
		if j > 0 && r.Start.Is4() != set.Ranges[0].Start.Is4() {
			return set, fmt.Errorf("%s.subnet: %s mixes address families with %s[0]", rf, r.Subnet, field)
		}
		for k := range set.Ranges {
			if r.overlaps(&set.Ranges[k]) {
				return set, fmt.Errorf("%s: %s overlaps %s[%d] (%s)", rf, r.String(), field, k, set.Ranges[k].String())
			}
		}
		set.Ranges = append(set.Ranges, r)
	}
	return set, nil
}

// iterator walks a range set round-robin, as the reference allocator does:
// from the address after the last one reserved (or from the first range's
// start), through the end of its range, on through the following ranges
// and around, until it comes back to where it began. It never yields an
// address that is not Allocatable (the gateway, the subnet or broadcast
// address).
type iterator struct {
	set   *RangeSet
	idx   int        // range of cur
	cur   netip.Addr // last address yielded (or the starting point)
	first netip.Addr // first address yielded, where the walk ends
	began bool
	done  bool
}

// newIterator starts after last when the set contains it, else at the
// first range's start.
func newIterator(set *RangeSet, last netip.Addr) *iterator {
	it := &iterator{set: set}
	if last.IsValid() {
		if r := set.rangeFor(last); r != nil {
			it.idx = indexOf(set, r)
			it.cur = last
			it.began = true
			return it
		}
	}
	return it
}

func indexOf(set *RangeSet, r *Range) int {
	for i := range set.Ranges {
		if &set.Ranges[i] == r {
			return i
		}
	}
	return 0
}

// Next returns the next candidate, or false when every address of the set
// has been offered once.
func (it *iterator) Next() (netip.Addr, bool) {
	for !it.done {
		a := it.step()
		if !it.first.IsValid() {
			it.first = a
		} else if a == it.first {
			it.done = true
			break
		}
		if it.set.Ranges[it.idx].Allocatable(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// step advances cur by one address, moving to the next range (wrapping)
// past a range's end.
func (it *iterator) step() netip.Addr {
	if !it.began {
		it.began = true
		it.cur = it.set.Ranges[it.idx].Start
		return it.cur
	}
	if it.cur == it.set.Ranges[it.idx].End {
		it.idx = (it.idx + 1) % len(it.set.Ranges)
		it.cur = it.set.Ranges[it.idx].Start
		return it.cur
	}
	it.cur = it.cur.Next()
	return it.cur
}
