package hostlocal_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/applets/hostlocal"
	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// Benchmarks of ADD and DEL on a network that already holds 250, 4k and
// 65k reservations, for cnibox exec'd as a runtime does, cnibox in-process
// (as bridge or ptp delegating to it runs it) and the reference host-local
// from /usr/lib/cni. The store is built once per size and shared; every
// benchmark puts it back as it found it, outside the timer.
//
//	go test -run '^$' -bench . -benchtime 20x ./applets/hostlocal/

var benchSizes = []struct {
	name string
	n    int
}{{"250", 250}, {"4k", 4096}, {"65k", 65536}}

type benchStore struct {
	dataDir, conf string
	netns         string
}

// newBenchStore makes a data dir whose network holds n reservations in
// the reference's format, in a /14 so that there is room to add. It lives
// as long as the top-level benchmark b.
func newBenchStore(b *testing.B, n int) *benchStore {
	dir, err := os.MkdirTemp(os.Getenv("CNIBOX_BENCH_DIR"), "cnibox-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	s := &benchStore{dataDir: dir, netns: testnet.NewNS(b, "pod").Path}
	s.conf = fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","type":"host-local","ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.128.0.0/14"}]]}}`, dir)
	net := filepath.Join(dir, "bench")
	os.MkdirAll(net, 0o755)
	var last string
	for i := 0; i < n; i++ {
		ip := fmt.Sprintf("10.%d.%d.%d", 128+(i+2)>>16, ((i+2)>>8)&255, (i+2)&255)
		if err := os.WriteFile(filepath.Join(net, ip), []byte(fmt.Sprintf("pre-%d\r\neth0", i)), 0o600); err != nil {
			b.Fatal(err)
		}
		last = ip
	}
	os.WriteFile(filepath.Join(net, "last_reserved_ip.0"), []byte(last), 0o600)
	return s
}

func (s *benchStore) inProcess(b *testing.B, cmd, id string) {
	env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": id, "CNI_IFNAME": "eth0", "CNI_NETNS": s.netns, "CNI_PATH": "/nonexistent"}
	var out bytes.Buffer
	if code := cni.Run(hostlocal.Applet, func(k string) string { return env[k] }, strings.NewReader(s.conf), &out, io.Discard); code != 0 {
		b.Fatalf("%s %s: %s", cmd, id, out.String())
	}
}

func (s *benchStore) exec(b *testing.B, bin, cmd, id string) {
	env := []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=" + s.netns, "CNI_PATH=" + filepath.Dir(bin)}
	if out, err := execPlugin(b, bin, env, []byte(s.conf)); err != nil {
		b.Fatal(out, err)
	}
}

type benchImpl struct {
	name string
	run  func(b *testing.B, s *benchStore, cmd, id string)
}

func benchImpls(b *testing.B) []benchImpl {
	our := filepath.Join(testnet.BinDir(b), "host-local")
	impls := []benchImpl{
		{"cnibox", func(b *testing.B, s *benchStore, cmd, id string) { s.exec(b, our, cmd, id) }},
		{"cnibox-inprocess", func(b *testing.B, s *benchStore, cmd, id string) { s.inProcess(b, cmd, id) }},
	}
	if ref := filepath.Join(testnet.ReferenceDir(), "host-local"); fileExists(ref) {
		impls = append(impls, benchImpl{"reference", func(b *testing.B, s *benchStore, cmd, id string) { s.exec(b, ref, cmd, id) }})
	}
	return impls
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func BenchmarkAdd(b *testing.B) {
	testnet.RequireRoot(b)
	impls := benchImpls(b)
	for _, size := range benchSizes {
		s := newBenchStore(b, size.n)
		for _, impl := range impls {
			b.Run("existing="+size.name+"/impl="+impl.name, func(b *testing.B) {
				s.inProcess(b, "DEL", "warm-up") // brings cnibox's index up to date
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					impl.run(b, s, "ADD", fmt.Sprintf("add-%d", i))
				}
				b.StopTimer()
				for i := 0; i < b.N; i++ {
					s.inProcess(b, "DEL", fmt.Sprintf("add-%d", i))
				}
			})
		}
	}
}

func BenchmarkDel(b *testing.B) {
	testnet.RequireRoot(b)
	impls := benchImpls(b)
	for _, size := range benchSizes {
		s := newBenchStore(b, size.n)
		for _, impl := range impls {
			b.Run("existing="+size.name+"/impl="+impl.name, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					s.inProcess(b, "ADD", fmt.Sprintf("del-%d", i))
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					impl.run(b, s, "DEL", fmt.Sprintf("del-%d", i))
				}
			})
		}
	}
}

// BenchmarkAdopt measures the one-time cost of a call that finds the index
// out of date (after the reference, or anything else, changed the store):
// a DEL that has to rebuild the index from N reservation files first.
func BenchmarkAdopt(b *testing.B) {
	testnet.RequireRoot(b)
	for _, size := range benchSizes {
		s := newBenchStore(b, size.n)
		b.Run("existing="+size.name, func(b *testing.B) {
			stamp := filepath.Join(s.dataDir, ".cnibox", "bench", "stamp")
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				os.Remove(stamp)
				b.StartTimer()
				s.inProcess(b, "DEL", "adopt")
			}
		})
	}
}

// BenchmarkExecBaseline is the cost of starting each binary at all (a
// VERSION call): subtract it from the exec'd ADD and DEL figures to see
// what the store work itself costs.
func BenchmarkExecBaseline(b *testing.B) {
	testnet.RequireRoot(b)
	bins := map[string]string{"cnibox": filepath.Join(testnet.BinDir(b), "host-local")}
	if ref := filepath.Join(testnet.ReferenceDir(), "host-local"); fileExists(ref) {
		bins["reference"] = ref
	}
	for _, name := range []string{"cnibox", "reference"} {
		bin, ok := bins[name]
		if !ok {
			continue
		}
		b.Run("impl="+name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if out, err := execPlugin(b, bin, []string{"CNI_COMMAND=VERSION"}, []byte(`{"cniVersion":"1.0.0"}`)); err != nil {
					b.Fatal(out, err)
				}
			}
		})
	}
}
