package hostlocal_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// plugins runs the reference host-local and ours side by side on one
// network directory, exec'd as a runtime would exec them.
type plugins struct {
	t        *testing.T
	ref, our string
	netns    string
	n        *network
	ipam     string
}

func newPlugins(t *testing.T, ipam string) *plugins {
	ref := testnet.RequireReference(t, "host-local")
	n := newNetwork(t, "1.0.0") // the newest version the Debian reference speaks
	n.name = "compat"
	n.anyMode = true
	return &plugins{t: t, ref: ref, our: filepath.Join(testnet.BinDir(t), "host-local"), netns: testnet.NewNS(t, "pod").Path, n: n, ipam: ipam}
}

func (p *plugins) run(bin, cmd, id string, version ...string) (string, error) {
	conf := p.n.conf(p.ipam)
	if len(version) > 0 {
		conf = []byte(strings.Replace(string(conf), `"cniVersion":"1.0.0"`, fmt.Sprintf(`"cniVersion":%q`, version[0]), 1))
	}
	env := []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=" + p.netns, "CNI_PATH=" + filepath.Dir(bin)}
	return execPlugin(p.t, bin, env, conf)
}

func (p *plugins) add(bin, id string) []string {
	p.t.Helper()
	out, err := p.run(bin, "ADD", id)
	if err != nil {
		p.t.Fatal(err)
	}
	return resultIPs(p.t, out)
}

func (p *plugins) del(bin, id string) {
	p.t.Helper()
	if _, err := p.run(bin, "DEL", id); err != nil {
		p.t.Fatal(err)
	}
}

const compatIPAM = `"ranges":[[{"subnet":"10.90.0.0/24"}],[{"subnet":"fd00:90::/64"}]]`

// TestReferenceThenCnibox: a node that ran the reference switches to
// cnibox. cnibox sees every reservation the reference made: it continues
// its round-robin, refuses a duplicate, CHECKs, DELs and GCs them, and
// releases the old id-only files too.
func TestReferenceThenCnibox(t *testing.T) {
	p := newPlugins(t, compatIPAM)
	if got := p.add(p.ref, "ref-a"); !slices.Equal(got, []string{"10.90.0.2/24", "fd00:90::2/64"}) {
		t.Fatalf("reference ADD: %v", got)
	}
	p.add(p.ref, "ref-b")
	if got := p.add(p.our, "our-c"); !slices.Equal(got, []string{"10.90.0.4/24", "fd00:90::4/64"}) {
		t.Fatalf("cnibox ADD after the reference's: %v (round-robin must continue)", got)
	}
	if _, err := p.run(p.our, "ADD", "ref-a"); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("cnibox ADD of an attachment the reference made: %v", err)
	}
	if _, err := p.run(p.our, "CHECK", "ref-b"); err != nil {
		t.Fatalf("cnibox CHECK of the reference's attachment: %v", err)
	}
	p.del(p.our, "ref-a")
	files := p.n.files(t)
	if _, ok := files["10.90.0.2"]; ok {
		t.Fatalf("cnibox DEL left the reference's reservation: %q", files)
	}
	if len(files) != 4 {
		t.Fatalf("after DEL: %q", files)
	}
	// A file of an old reference version holds only the container ID.
	os.WriteFile(filepath.Join(p.n.dir(), "10.90.0.100"), []byte("legacy-x"), 0o600)
	p.del(p.our, "legacy-x")
	if _, ok := p.n.files(t)["10.90.0.100"]; ok {
		t.Fatal("cnibox DEL did not release an id-only file")
	}
	// The reference, interleaved again, and cnibox still in step.
	p.add(p.ref, "ref-d")
	p.del(p.our, "ref-d")
	p.del(p.our, "ref-b")
	p.del(p.our, "our-c")
	wantFiles(t, p.n, nil)
}

// TestCniboxThenReference: a node that ran cnibox goes back to the
// reference (or runs both): the reference sees cnibox's reservations, and
// cnibox notices what the reference did behind its index.
func TestCniboxThenReference(t *testing.T) {
	p := newPlugins(t, compatIPAM)
	p.add(p.our, "our-a")
	p.add(p.our, "our-b")
	if got := p.add(p.ref, "ref-c"); !slices.Equal(got, []string{"10.90.0.4/24", "fd00:90::4/64"}) {
		t.Fatalf("reference ADD after cnibox's: %v", got)
	}
	if _, err := p.run(p.ref, "ADD", "our-a"); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("reference ADD of cnibox's attachment: %v", err)
	}
	if _, err := p.run(p.ref, "CHECK", "our-b"); err != nil {
		t.Fatalf("reference CHECK of cnibox's attachment: %v", err)
	}
	p.del(p.ref, "our-a")
	// cnibox's index still lists our-a; the files say it is gone, and a
	// reference reservation was added: cnibox must see both.
	if got := p.add(p.our, "our-e"); !slices.Equal(got, []string{"10.90.0.5/24", "fd00:90::5/64"}) {
		t.Fatalf("cnibox ADD after the reference's changes: %v", got)
	}
	p.del(p.our, "ref-c")
	if _, ok := p.n.files(t)["10.90.0.4"]; ok {
		t.Fatal("cnibox DEL missed a reservation the reference made after cnibox's index")
	}
	p.del(p.ref, "our-b")
	p.del(p.ref, "our-e")
	wantFiles(t, p.n, nil)
	// cnibox's index agrees again after the reference emptied the store.
	p.add(p.our, "our-f")
	p.del(p.our, "our-f")
	wantFiles(t, p.n, nil)
}
