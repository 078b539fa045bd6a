package cnirun_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// TestCniRunner drives "cnibox cni" the way a person would: flags for the
// directories, the netns by name, the cnitool container ID by default.
func TestCniRunner(t *testing.T) {
	node := testnet.NewNS(t, "node")
	pod := testnet.NewNS(t, "pod")
	dir := t.TempDir()
	confDir := filepath.Join(dir, "net.d")
	os.MkdirAll(confDir, 0o755)
	os.WriteFile(filepath.Join(confDir, "lo.conflist"),
		[]byte(`{"cniVersion":"1.1.0","name":"lonet","plugins":[{"type":"loopback"}]}`), 0o644)
	bin := testnet.Binary(t)
	pod.MustRun("ip", "link", "set", "lo", "down")
	flags := []string{"--conf-dir", confDir, "--cache-dir", filepath.Join(dir, "cache")}

	cni := func(args ...string) (string, error) {
		return node.Run(bin, append(append([]string{"cni"}, args...), flags...)...)
	}
	out, err := cni("add", "lonet", pod.Name)
	if err != nil || !strings.Contains(out, `"127.0.0.1/8"`) {
		t.Fatalf("add: %v %s", err, out)
	}
	if !strings.Contains(pod.MustRun("ip", "link", "show", "lo"), "UP") {
		t.Fatal("lo not up")
	}
	// The cache entry is keyed by the container ID cnitool derives from the
	// netns path (a bare name means /var/run/netns/NAME).
	want := "lonet-" + testnet.CnitoolContainerID("/var/run/netns/"+pod.Name) + "-eth0"
	if _, err := os.Stat(filepath.Join(dir, "cache", "results", want)); err != nil {
		t.Errorf("cache entry %s: %v", want, err)
	}
	for _, verb := range []string{"check", "status"} {
		if out, err := cni(verb, "lonet", pod.Name); err != nil {
			t.Fatalf("%s: %v %s", verb, err, out)
		}
	}
	if out, err := cni("del", "lonet", pod.Name); err != nil {
		t.Fatalf("del: %v %s", err, out)
	}
	if out, err := cni("gc", "lonet"); err != nil {
		t.Fatalf("gc: %v %s", err, out)
	}
	if out, err := cni("add", "no-such-net", pod.Path); err == nil || !strings.Contains(out, "no-such-net") {
		t.Errorf("unknown network: %v %s", err, out)
	}
	if out, err := cni("frob", "lonet", pod.Path); err == nil || !strings.Contains(out, "unknown verb") {
		t.Errorf("unknown verb: %v %s", err, out)
	}
}
