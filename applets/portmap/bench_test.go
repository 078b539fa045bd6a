package portmap_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// BenchmarkAddDel times one portmap ADD and one DEL (two host ports, IPv4)
// on a node whose nat table is busy (20,000 rules in a kube-proxy-like
// chain, or none), for cnibox's iptables and nftables backends and the
// reference portmap. Each exec goes through the harness's private mount
// namespace (unshare + two mounts), the same overhead for every side.
//
//	go test -run XXX -bench AddDel -benchtime 20x ./applets/portmap
func BenchmarkAddDel(b *testing.B) {
	b.Run("exec-overhead", func(b *testing.B) {
		// What every exec below costs before the plugin does anything.
		r := testnet.NewRuntime(b)
		for i := 0; i < b.N; i++ {
			if out, _, code := r.Exec("portmap", []string{"CNI_COMMAND=VERSION"}, []byte("{}")); code != 0 {
				b.Fatal(string(out))
			}
		}
	})
	for _, rules := range []int{0, 20000} {
		for _, side := range []struct{ name, backend string }{
			{"cnibox-iptables", "iptables"}, {"cnibox-nftables", "nftables"}, {"reference", ""},
		} {
			b.Run(fmt.Sprintf("nat=%d/%s", rules, side.name), func(b *testing.B) {
				r := testnet.NewRuntime(b)
				applet := "portmap"
				if side.name == "reference" {
					ref := testnet.RequireReference(b, "portmap")
					dir := b.TempDir()
					if err := os.Symlink(ref, filepath.Join(dir, "portmap")); err != nil {
						b.Fatal(err)
					}
					applet, _ = filepath.Rel(r.BinDir, filepath.Join(dir, "portmap"))
				}
				if rules > 0 {
					fillNAT(b, r.Node, rules)
				}
				keys := ""
				if side.backend != "" {
					keys = fmt.Sprintf(`,"backend":%q`, side.backend)
				}
				conf := []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","type":"portmap"%s,
 "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":8053,"containerPort":53,"protocol":"udp"}]},
 "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"eth0","sandbox":"/run/netns/x"}],
  "ips":[{"address":"10.88.0.2/16","interface":1}]}}`, keys))
				var add, del time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					id := fmt.Sprintf("bench-%d", i)
					t0 := time.Now()
					if out, errb, code := r.Exec(applet, env("ADD", id), conf); code != 0 {
						b.Fatalf("ADD: %s %s", out, errb)
					}
					t1 := time.Now()
					if out, errb, code := r.Exec(applet, env("DEL", id), conf); code != 0 {
						b.Fatalf("DEL: %s %s", out, errb)
					}
					add += t1.Sub(t0)
					del += time.Since(t1)
				}
				b.ReportMetric(float64(add.Microseconds())/1000/float64(b.N), "add-ms/op")
				b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "del-ms/op")
			})
		}
	}
}

// fillNAT puts n rules into a chain jumped to from nat PREROUTING, as
// kube-proxy's KUBE-SERVICES would be.
func fillNAT(b *testing.B, node *testnet.NS, n int) {
	var s strings.Builder
	s.WriteString("*nat\n:KUBE-BENCH - [0:0]\n-A PREROUTING -j KUBE-BENCH\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&s, "-A KUBE-BENCH -d 10.%d.%d.%d/32 -p tcp -m tcp --dport 80 -j RETURN\n", 100+i/65536, (i/256)%256, i%256)
	}
	s.WriteString("COMMIT\n")
	cmd := node.Command("iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(s.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("fill nat: %v: %s", err, out)
	}
}
