package bandwidth_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// BenchmarkAddDel is one pod's bandwidth ADD + DEL (both directions
// shaped) by cnibox and by the reference plugin, each exec'd directly from
// the node as a runtime would, on a pod that bridge set up once.
func BenchmarkAddDel(b *testing.B) {
	r := testnet.NewRuntime(b)
	testnet.RequireReference(b, "bandwidth")
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	const v, name = "1.0.0", "bwbench"
	list := r.Conflist(bridgeList(v, name))
	pod := r.Pod(b)
	a := r.Attach(pod, "eth0")
	res, err := r.Add(list, a)
	if err != nil {
		b.Fatal(err)
	}
	prev, _ := res.GetAsVersion(v)
	prevJSON, _ := json.Marshal(prev)
	stdin := []byte(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"bandwidth","ingressRate":10000000,"ingressBurst":1000000,"egressRate":10000000,"egressBurst":1000000,"prevResult":%s}`, v, name, prevJSON))
	for _, impl := range []struct{ name, path string }{
		{"cnibox", filepath.Join(r.BinDir, "bandwidth")},
		{"reference", filepath.Join(testnet.ReferenceDir(), "bandwidth")},
	} {
		b.Run(impl.name, func(b *testing.B) {
			var addT, delT time.Duration
			run := func(cmd string) {
				start := time.Now()
				defer func() {
					if cmd == "ADD" {
						addT += time.Since(start)
					} else {
						delT += time.Since(start)
					}
				}()
				c := exec.Command(impl.path)
				c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + a.ContainerID, "CNI_IFNAME=eth0",
					"CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.Path}
				c.Stdin = bytes.NewReader(stdin)
				if out, err := c.CombinedOutput(); err != nil {
					b.Fatalf("%s %s: %v: %s", impl.name, cmd, err, out)
				}
			}
			err := r.Node.Do(func() error {
				for i := 0; i < b.N; i++ {
					run("ADD")
					run("DEL")
					if impl.name == "reference" {
						// Its DEL leaves the host veth's qdiscs (they die with
						// the veth), and its next ADD would fail on them.
						b.StopTimer()
						clearQdiscs(b, hostVethOf(b, res))
						b.StartTimer()
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(addT.Microseconds())/1000/float64(b.N), "ms/ADD")
			b.ReportMetric(float64(delT.Microseconds())/1000/float64(b.N), "ms/DEL")
		})
	}
}

// clearQdiscs removes the root and ingress qdiscs of a link in the
// current netns.
func clearQdiscs(b *testing.B, name string) {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		b.Fatal(err)
	}
	qs, _ := netlinksafe.QdiscList(link)
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT || q.Attrs().Parent == netlink.HANDLE_INGRESS {
			netlink.QdiscDel(q)
		}
	}
}
