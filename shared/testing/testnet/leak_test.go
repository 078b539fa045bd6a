package testnet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSnapshotDiff: the leak checker sees a link, an address, a route, a
// qdisc, an iptables rule, an nftables table and a state file that
// appear after a snapshot, and sees nothing once they are gone again.
func TestSnapshotDiff(t *testing.T) {
	r := NewRuntime(t)
	s := r.Snapshotter()
	before := s.Take(t)
	if d := before.Diff(s.Take(t)); d != "" {
		t.Fatalf("two snapshots of an idle node differ:\n%s", d)
	}
	n := r.Node
	n.MustRun("ip", "link", "add", "leak0", "type", "veth", "peer", "name", "leak1")
	n.MustRun("ip", "addr", "add", "10.99.0.1/24", "dev", "leak0")
	n.MustRun("ip", "link", "set", "leak0", "up")
	n.MustRun("ip", "link", "set", "leak1", "up")
	n.MustRun("ip", "route", "add", "10.98.0.0/16", "via", "10.99.0.2")
	n.MustRun("tc", "qdisc", "add", "dev", "leak0", "root", "tbf", "rate", "1mbit", "burst", "32k", "latency", "50ms")
	n.MustRun("iptables", "-t", "nat", "-N", "LEAK-TEST")
	n.MustRun("nft", "add", "table", "inet", "leaktest")
	dir := filepath.Join(r.StateDir, "networks", "leak")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "10.99.0.5"), []byte("id\r\neth0"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Bookkeeping is not state.
	if err := os.WriteFile(filepath.Join(dir, "last_reserved_ip.0"), []byte("10.99.0.5"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := before.Diff(s.Take(t))
	for _, want := range []string{
		"+ link: leak0 kind=veth", "+ addr: leak0 inet 10.99.0.1/24", "+ route4: 10.98.0.0/16 via 10.99.0.2",
		"+ qdisc: qdisc tbf", "+ iptables: nat :LEAK-TEST", "+ nft: table inet leaktest",
		`+ files: networks/leak/10.99.0.5 -rw------- "id\r\neth0"`, "+ files: networks/ ",
	} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
	if strings.Contains(d, "last_reserved") {
		t.Errorf("diff lists bookkeeping:\n%s", d)
	}
	n.MustRun("ip", "link", "del", "leak0")
	n.MustRun("iptables", "-t", "nat", "-X", "LEAK-TEST")
	n.MustRun("nft", "delete", "table", "inet", "leaktest")
	os.RemoveAll(filepath.Join(r.StateDir, "networks"))
	s.AssertSame(t, before, "after cleanup")
}
