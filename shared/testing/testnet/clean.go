package testnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Veths lists the node's links named veth…: the host ends of the pairs
// that bridge and ptp make.
func (r *Runtime) Veths() []string {
	var names []string
	for _, l := range strings.Split(r.Node.MustRun("ip", "-o", "link", "show", "type", "veth"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "veth") {
			names = append(names, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return names
}

// Reservations lists host-local's address files of network in dataDir
// (its lock and last-reserved markers are not reservations).
func Reservations(dataDir, network string) []string {
	ents, _ := os.ReadDir(filepath.Join(dataDir, network))
	var out []string
	for _, de := range ents {
		if n := de.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			out = append(out, n)
		}
	}
	return out
}

// AssertNoAttachments fails the test if the node still holds something
// of a veth plugin's attachments: a veth, an address host-local reserved
// for network in dataDir, an iptables CNI- rule (ipMasq), or an nftables
// masquerade or macspoofchk rule. Tools that are not installed (as in the
// VM) are not asked.
func (r *Runtime) AssertNoAttachments(t testing.TB, dataDir, network string) {
	t.Helper()
	if v := r.Veths(); len(v) > 0 {
		t.Errorf("veths left on the node: %v", v)
	}
	if res := Reservations(dataDir, network); len(res) > 0 {
		t.Errorf("addresses still reserved in %s: %v", network, res)
	}
	if _, err := exec.LookPath("iptables-save"); err == nil {
		nat := r.Node.MustRun("iptables-save", "-t", "nat") + r.Node.MustRun("ip6tables-save", "-t", "nat")
		if strings.Contains(nat, "CNI-") {
			t.Errorf("iptables rules left:\n%s", nat)
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		if rs := r.Node.MustRun("nft", "list", "ruleset"); strings.Contains(rs, " masquerade") || strings.Contains(rs, "macspoofchk") {
			t.Errorf("nftables rules left:\n%s", rs)
		}
	}
}
