package tuning_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// BenchmarkAddDel is one pod's tuning ADD + DEL (two sysctls, MTU, MAC,
// txqlen) by cnibox and by the reference plugin, each exec'd directly from
// the node as a runtime would, on a pod that bridge set up once.
func BenchmarkAddDel(b *testing.B) {
	r := testnet.NewRuntime(b)
	testnet.RequireReference(b, "tuning")
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	const v, name = "1.0.0", "tunebench"
	list := r.Conflist(bridgeList(v, name))
	pod := r.Pod(b)
	a := r.Attach(pod, "eth0")
	res, err := r.Add(list, a)
	if err != nil {
		b.Fatal(err)
	}
	prev, _ := res.GetAsVersion(v)
	prevJSON, _ := json.Marshal(prev)
	stdin := []byte(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"tuning","dataDir":%q,
	  "sysctl":{"net.ipv4.conf.IFNAME.arp_notify":"1","net.core.somaxconn":"777"},
	  "mtu":1400,"mac":"02:00:00:00:be:01","txQLen":500,"prevResult":%s}`, v, name, b.TempDir(), prevJSON))
	for _, impl := range []struct{ name, path string }{
		{"cnibox", filepath.Join(r.BinDir, "tuning")},
		{"reference", filepath.Join(testnet.ReferenceDir(), "tuning")},
	} {
		b.Run(impl.name, func(b *testing.B) {
			var addT, delT time.Duration
			run := func(cmd string, into *time.Duration) {
				start := time.Now()
				c := exec.Command(impl.path)
				c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + a.ContainerID, "CNI_IFNAME=eth0",
					"CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.Path}
				c.Stdin = bytes.NewReader(stdin)
				if out, err := c.CombinedOutput(); err != nil {
					b.Fatalf("%s %s: %v: %s", impl.name, cmd, err, out)
				}
				*into += time.Since(start)
			}
			err := r.Node.Do(func() error {
				for i := 0; i < b.N; i++ {
					run("ADD", &addT)
					run("DEL", &delT)
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
