package ipmasq

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// referenceHasNFTables reports whether the reference bridge is recent
// enough for ipMasqBackend (it speaks spec 1.1.0: v1.6.0 on; Debian's
// 1.1.1 ignores the key and writes iptables rules).
func referenceHasNFTables(t *testing.T) bool {
	cmd := exec.Command(filepath.Join(testnet.ReferenceDir(), "bridge"))
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"0.3.1"}`)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference bridge VERSION: %v", err)
	}
	return strings.Contains(string(out), `"1.1.0"`)
}

// TestReferenceSwitch: a bridge attachment with ipMasq ADDed by one side
// (the reference bridge or cnibox's) is CHECKed by both, GCed (still valid)
// and DELed by the other, in both backends: the masquerade rules are
// found, kept while valid and removed, whoever wrote them.
func TestReferenceSwitch(t *testing.T) {
	testnet.RequireReference(t, "bridge")
	testnet.RequireReference(t, "host-local")
	for _, backend := range []string{IPTables, NFTables} {
		version := "1.1.0"
		if backend == NFTables && !referenceHasNFTables(t) {
			t.Logf("the reference bridge in %s has no ipMasqBackend: nftables not tried", testnet.ReferenceDir())
			continue
		}
		if !referenceHasNFTables(t) {
			version = "1.0.0" // the newest Debian's 1.1.1 speaks
		}
		for _, dir := range []string{"ref->cnibox", "cnibox->ref"} {
			t.Run(backend+"/"+dir, func(t *testing.T) {
				r := testnet.NewRuntime(t)
				ours, ref := r.BinDir+":"+testnet.ReferenceDir(), testnet.ReferenceDir()+":"+r.BinDir
				adder, other := ref, ours
				if dir == "cnibox->ref" {
					adder, other = ours, ref
				}
				list := r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":"masq-%s","plugins":[
 {"type":"bridge","bridge":"cnibr0","isGateway":true,"ipMasq":true,"ipMasqBackend":%q,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.77.0.0/24"}],[{"subnet":"fd77::/64"}]]}}]}`, version, backend[:3], backend))
				pod := r.Pod(t)
				a := r.Attach(pod, "eth0")
				dump := func() string {
					if backend == IPTables {
						return r.Node.MustRun("iptables-save", "-t", "nat") + r.Node.MustRun("ip6tables-save", "-t", "nat")
					}
					return r.Node.MustRun("nft", "list", "ruleset")
				}
				r.SetPath(adder)
				if _, err := r.Add(list, a); err != nil {
					t.Fatalf("ADD: %v", err)
				}
				if d := dump(); !strings.Contains(d, a.ContainerID) {
					t.Fatalf("no masquerade rule of the container after ADD:\n%s", d)
				}
				for _, side := range []struct{ name, path string }{{"adder", adder}, {"other", other}} {
					r.SetPath(side.path)
					if err := r.Check(list, a); err != nil {
						t.Errorf("CHECK by the %s: %v", side.name, err)
					}
				}
				r.SetPath(other)
				if version == "1.1.0" {
					if err := r.GC(list, a); err != nil {
						t.Fatalf("GC (attachment valid): %v", err)
					}
					if d := dump(); !strings.Contains(d, a.ContainerID) {
						t.Fatalf("GC removed a valid attachment's masquerade:\n%s", d)
					}
					if err := r.Check(list, a); err != nil {
						t.Errorf("CHECK after GC: %v", err)
					}
				}
				if err := r.Del(list, a); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if d := dump(); strings.Contains(d, a.ContainerID) || strings.Contains(d, ChainName(list.Name, a.ContainerID)) {
					t.Errorf("masquerade rules left after DEL:\n%s", d)
				}
				if err := r.Del(list, a); err != nil {
					t.Fatalf("repeated DEL: %v", err)
				}
			})
		}
	}
}
