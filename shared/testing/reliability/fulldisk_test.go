package reliability

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestDelFullDisk: with /var/lib/cni and /run/cni full (no block, no
// inode), the DEL of every attachment of the default chain (bridge,
// host-local, loopback, portmap, firewall, tuning, bandwidth) succeeds
// and releases its reservation, its records and its backups, also after
// the reference host-local made a reservation in the same network (which
// makes cnibox's index stale: rebuilding it would need room). Before,
// host-local's DEL failed (999, "no space left on device") and left the
// address reserved.
func TestDelFullDisk(t *testing.T) {
	t.Parallel()
	ref := testnet.RequireReference(t, "host-local")
	r := testnet.NewRuntime(t)
	testnet.MountTmpfs(t, r.StateDir, "size=2m,nr_inodes=200,mode=0755")
	testnet.MountTmpfs(t, r.RunDir, "size=1m,nr_inodes=100,mode=0755")
	list := defaultList(t, r)
	var atts []*testnet.Attachment
	for i := 0; i < 2; i++ {
		a := r.Attach(r.Pod(t), "eth0")
		caps(a, 30+i)
		if _, err := r.Add(list, a); err != nil {
			t.Fatal(err)
		}
		atts = append(atts, a)
	}
	// The reference host-local reserves an address of the same network.
	dir := t.TempDir()
	if err := os.Symlink(ref, filepath.Join(dir, "host-local")); err != nil {
		t.Fatal(err)
	}
	refApplet, _ := filepath.Rel(r.BinDir, filepath.Join(dir, "host-local"))
	var bridge struct {
		IPAM json.RawMessage `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &bridge); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"host-local","ipam":%s}`, list.Name, bridge.IPAM)
	refPod := r.Pod(t)
	if out, errb, code := r.Exec(refApplet, []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=refpod", "CNI_IFNAME=eth0",
		"CNI_NETNS=" + refPod.Path, "CNI_PATH=" + dir}, []byte(conf)); code != 0 {
		t.Fatalf("reference ADD: %s %s", out, errb)
	}
	testnet.FillUp(t, r.StateDir)
	testnet.FillUp(t, r.RunDir)
	for _, a := range atts {
		if err := r.Del(list, a); err != nil {
			t.Errorf("DEL on a full disk: %v", err)
		}
	}
	if res := r.Reservations(list.Name); len(res) != 1 {
		t.Errorf("reservations after the DELs: %v, want the reference's only", res)
	}
	for _, d := range []string{filepath.Join(r.StateDir, "cnibox-firewall"), filepath.Join(r.StateDir, "cnibox-portmap"), filepath.Join(r.RunDir, "tuning")} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s left after the last DEL", d)
		}
	}
	if veths := r.Veths(); len(veths) > 0 {
		t.Errorf("veths left: %v", veths)
	}
}
