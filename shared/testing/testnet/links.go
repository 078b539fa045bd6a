package testnet

import (
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
)

// Link returns the link name in n, failing the test when it is not there.
func (n *NS) Link(t testing.TB, name string) netlink.Link {
	t.Helper()
	var l netlink.Link
	if err := n.Do(func() (err error) { l, err = netlink.LinkByName(name); return err }); err != nil {
		t.Fatalf("%s in %s: %v", name, n.Name, err)
	}
	return l
}

// Links returns the names of the links in n ("lo" included).
func (n *NS) Links(t testing.TB) []string {
	t.Helper()
	var names []string
	err := n.Do(func() error {
		ls, err := netlink.LinkList()
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	if err != nil {
		t.Fatalf("list links of %s: %v", n.Name, err)
	}
	return names
}

// Reservations lists the addresses host-local holds for network in its
// default dataDir (/var/lib/cni/networks, which is StateDir for plugins).
func (r *Runtime) Reservations(network string) []string {
	return Reservations(filepath.Join(r.StateDir, "networks"), network)
}
