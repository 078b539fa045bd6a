package hostlocal

import (
	"fmt"
	"io"
	"net/netip"
	"testing"

	"github.com/cnibox/cnibox/shared/logging"
)

// TestTableGrowthAndReuse: records survive doublings, deletions leave
// tombstones that later inserts reuse, and lookups stay right throughout.
func TestTableGrowthAndReuse(t *testing.T) {
	data := t.TempDir()
	s, err := openStore(data, "tab", logging.New("host-local", io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	const n = 3000
	for i := 0; i < n; i++ {
		if err := s.setRecord(attachmentKey(fmt.Sprint(i), "eth0"), []netip.Addr{addr(i), netip.MustParseAddr("fd00::1")}); err != nil {
			t.Fatal(err)
		}
	}
	if s.tab.slots < 4*minSlots {
		t.Fatalf("table did not grow: %d slots for %d records", s.tab.slots, n)
	}
	for i := 0; i < n; i += 2 {
		s.setRecord(attachmentKey(fmt.Sprint(i), "eth0"), nil)
	}
	for i := 0; i < n; i++ {
		got, complete, err := s.tab.get(attachmentKey(fmt.Sprint(i), "eth0"))
		if err != nil || !complete {
			t.Fatal(err)
		}
		if i%2 == 0 && got != nil || i%2 == 1 && (len(got) != 2 || got[0] != addr(i) || got[1].String() != "fd00::1") {
			t.Fatalf("record %d = %v", i, got)
		}
	}
	// More addresses than a slot holds: marked incomplete.
	many := []netip.Addr{addr(1), addr(2), addr(3), addr(4), addr(5), addr(6), addr(7)}
	s.setRecord(legacyKey("many"), many)
	if got, complete, _ := s.tab.get(legacyKey("many")); complete || len(got) != slotAddrs {
		t.Fatalf("overflow record: %v complete=%v", got, complete)
	}
	if s.tab.used != n/2+1 {
		t.Fatalf("used = %d", s.tab.used)
	}
	// Reusing deleted slots keeps the tombstone count honest.
	tombs := s.tab.tombs
	for i := 0; i < n; i += 2 {
		s.setRecord(attachmentKey(fmt.Sprint(i), "eth0"), []netip.Addr{addr(i)})
	}
	if s.tab.tombs >= tombs || s.tab.used != n+1 {
		t.Fatalf("after reinsertion: used %d tombs %d (was %d)", s.tab.used, s.tab.tombs, tombs)
	}
}
