package runtimetest_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/install"
	"github.com/cnibox/cnibox/shared/testing/runtimetest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// shippedFiles lists conflists/*.conflist; none is a failure, not a
// test that passes over nothing.
func shippedFiles(t testing.TB) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(testnet.RepoRoot(), "conflists", "*.conflist"))
	if len(files) == 0 {
		t.Fatal("no conflists/*.conflist")
	}
	return files
}

// shipped returns a file of conflists/.
func shipped(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testnet.RepoRoot(), "conflists", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestContainerdCRI does what kubelet does through containerd's CRI: pods
// on the shipped Kubernetes-style network (bridge, host-local, portmap,
// bandwidth), with hostPort mappings and bandwidth annotations, a second
// pod reaching the first, a hostPort answering from the node, and nothing
// left once the pods are removed.
func TestContainerdCRI(t *testing.T) {
	runtimetest.RequireContainerd(t)
	node := testnet.NewNS(t, "node")
	plugins := runtimetest.InstallPlugins(t)
	t.Logf("who runs what: %s", plugins.Describe("loopback", "bridge", "host-local", "portmap", "bandwidth"))
	c := runtimetest.StartContainerd(t, node, plugins.Dir)
	c.ImportImage(t)
	if err := os.WriteFile(filepath.Join(c.ConfDir, "10-kubernetes.conflist"), shipped(t, "kubernetes.conflist"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.WaitNetworkReady(t)

	web := c.RunPod(t, "web", runtimetest.Ports(runtimetest.PortMapping(18080, 80)), map[string]string{
		"kubernetes.io/ingress-bandwidth": "100M",
		"kubernetes.io/egress-bandwidth":  "100M",
	})
	t.Logf("pod web: id %.12s ip %s netns %s", web.ID, web.IP, web.NetNS)
	if !strings.HasPrefix(web.IP, "10.244.1.") {
		t.Fatalf("pod IP %q is not from the network's range 10.244.1.0/24", web.IP)
	}
	web.Run(t, "httpd", "/bin/httpd", "-f", "-p", "80", "-h", "/www")

	client := c.RunPod(t, "client", nil, nil)
	t.Logf("pod client: id %.12s ip %s", client.ID, client.IP)
	if client.IP == web.IP || !strings.HasPrefix(client.IP, "10.244.1.") {
		t.Fatalf("second pod IP %q (first %q)", client.IP, web.IP)
	}
	sleeper := client.Run(t, "sleeper", "/bin/sleep", "3600")

	// A second pod reaches the first, by pod IP.
	if out, err := runtimetest.Retry(func() (string, error) {
		return client.Exec(sleeper, runtimetest.HTTPGet(web.IP)...)
	}); err != nil || !strings.Contains(out, "cnibox") {
		t.Fatalf("client pod -> web pod http://%s/: %q %v", web.IP, out, err)
	}
	// The hostPort answers from the node (to the node's own address on
	// the bridge: portmap's OUTPUT DNAT).
	if out, err := runtimetest.HTTPGetIn(node, "10.244.1.1:18080"); err != nil || !strings.Contains(out, "cnibox") {
		t.Fatalf("node -> hostPort 18080: %q %v", out, err)
	}
	// The bandwidth annotations became tc limits: an ingress tbf on the
	// host veth and an IFB for egress.
	qdisc := node.MustRun("tc", "qdisc", "show")
	if n := strings.Count(qdisc, "rate 100Mbit"); !strings.Contains(qdisc, "tbf") || n < 2 {
		t.Errorf("want a 100Mbit tbf each way (host veth and IFB) after the 100M annotations, found %d:\n%s", n, qdisc)
	}
	if links := node.MustRun("ip", "-o", "link", "show", "type", "ifb"); strings.TrimSpace(links) == "" {
		t.Errorf("no IFB device for the egress limit")
	}

	// containerd's own loopback network: cniVersion 0.3.1, our loopback.
	checkLoopbackCache(t, c, web.ID)

	before := snapshot(t, node, c)
	t.Logf("node with two pods:\n%s", before)
	web.Stop(t)
	client.Stop(t)
	after := snapshot(t, node, c)
	for _, leak := range []string{"veth", "ifb", "bwp", "CNI-DN-", web.IP, client.IP, web.ID, client.ID} {
		if strings.Contains(after, leak) {
			t.Errorf("after stopp/rmp the node still has %q:\n%s", leak, after)
		}
	}
}

// checkLoopbackCache proves containerd called loopback at 0.3.1 from our
// bin_dir, where only cnibox provides it: libcni cached that call's result.
func checkLoopbackCache(t *testing.T, c *runtimetest.Containerd, podID string) {
	t.Helper()
	if k := install.Inspect(c.BinDir, "loopback"); !install.Ours(k) {
		t.Fatalf("bin_dir loopback is %v, not cnibox", k)
	}
	b, err := os.ReadFile(filepath.Join(c.State, "results", "cni-loopback-"+podID+"-lo"))
	if err != nil {
		t.Fatalf("containerd did not call loopback: %v", err)
	}
	var cache struct {
		Config []byte          `json:"config"`
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(b, &cache); err != nil {
		t.Fatal(err)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		Interfaces []struct{ Name string }
	}
	json.Unmarshal(cache.Result, &res)
	if res.CNIVersion != "0.3.1" || len(res.Interfaces) != 1 || res.Interfaces[0].Name != "lo" {
		t.Errorf("loopback result = %s", cache.Result)
	}
	t.Logf("containerd's loopback call: config %s -> result %s", cache.Config, cache.Result)
}

// snapshot is what pods leave on a node: links, qdiscs, iptables rules,
// host-local reservations and libcni cache entries.
func snapshot(t *testing.T, node *testnet.NS, c *runtimetest.Containerd) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# links\n" + node.MustRun("ip", "-o", "link", "show"))
	b.WriteString("# qdiscs\n" + node.MustRun("tc", "qdisc", "show"))
	b.WriteString("# iptables\n" + node.MustRun("iptables-save"))
	b.WriteString("# ip6tables\n" + node.MustRun("ip6tables-save"))
	if out, err := node.Run("nft", "list", "ruleset"); err == nil {
		b.WriteString("# nftables\n" + out)
	}
	b.WriteString("# state\n")
	filepath.Walk(c.State, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(c.State, path)
			b.WriteString(rel + "\n")
		}
		return nil
	})
	return b.String()
}

// TestCtrRunCNI is the simpler path: "ctr run --cni" with a rootfs on the
// shipped containerd default network (bridge + portmap). ctr reads
// /etc/cni/net.d and /opt/cni/bin, which are the test's directories in
// containerd's private mount namespace.
func TestCtrRunCNI(t *testing.T) {
	ctrRunCNI(t, "containerd.conflist", "10.88.0.")
}

// TestCtrRunCNIOneExec is the same with the one-exec chain of the
// default network (applets/chain): containerd execs "cnibox" alone.
func TestCtrRunCNIOneExec(t *testing.T) {
	ctrRunCNI(t, "default-one-exec.conflist", "10.23.0.")
}

// ctrRunCNI runs a container with "ctr run --cni" on the shipped file,
// whose subnet starts with prefix and whose gateway is prefix+"1".
func ctrRunCNI(t *testing.T, file, prefix string) {
	runtimetest.RequireContainerd(t)
	node := testnet.NewNS(t, "node")
	plugins := runtimetest.InstallPlugins(t)
	t.Logf("who runs what: %s", plugins.Describe("loopback", "bridge", "host-local", "portmap"))
	c := runtimetest.StartContainerd(t, node, plugins.Dir)
	if err := os.WriteFile(filepath.Join(c.ConfDir, "10-"+file), shipped(t, file), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs := runtimetest.Rootfs(t, c.Dir)
	out, err := c.Ctr("run", "--rm", "--cni", "--rootfs", rootfs, "ctr-cni-test",
		"/bin/sh", "-c", "ip -o addr show eth0; ip -o link show lo; ping -c 1 -W 2 "+prefix+"1")
	t.Logf("ctr run --cni:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "inet "+prefix) {
		t.Errorf("container eth0 has no address from %s0/16", prefix)
	}
	if !strings.Contains(out, "LOOPBACK,UP") {
		t.Errorf("container lo is not up")
	}
	if !strings.Contains(out, "1 packets received") {
		t.Errorf("container cannot ping its gateway")
	}
	// ctr's DEL comes after the task exited: the netns is gone, and the
	// plugins must clean up from prevResult alone.
	after := snapshot(t, node, c)
	for _, leak := range []string{"veth", prefix + "2", "ctr-cni-test"} {
		if !strings.Contains(after, leak) {
			continue
		}
		if !plugins.IsOurs("bridge") && leak != "veth" {
			t.Logf("KNOWN REFERENCE LEAK (not failing until cnibox's bridge runs here): the reference bridge leaves %q when DEL comes after the netns is gone", leak)
			continue
		}
		t.Errorf("after ctr run --rm the node still has %q:\n%s", leak, after)
	}
}

// TestContainerdCRIDualStack: a pod on the shipped dual-stack list gets an
// address of each family, CRI reports both (kubelet's pod IPs), and the
// node reaches the pod's server over IPv4 and IPv6.
func TestContainerdCRIDualStack(t *testing.T) {
	runtimetest.RequireContainerd(t)
	node := testnet.NewNS(t, "node")
	plugins := runtimetest.InstallPlugins(t)
	t.Logf("who runs what: %s", plugins.Describe("bridge", "host-local", "portmap", "bandwidth"))
	c := runtimetest.StartContainerd(t, node, plugins.Dir)
	c.ImportImage(t)
	if err := os.WriteFile(filepath.Join(c.ConfDir, "10-dual-stack.conflist"), shipped(t, "dual-stack.conflist"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.WaitNetworkReady(t)
	pod := c.RunPod(t, "dual", nil, nil)
	t.Logf("pod IPs: %v", pod.IPs)
	if len(pod.IPs) != 2 || !strings.HasPrefix(pod.IPs[0], "10.66.") || !strings.HasPrefix(pod.IPs[1], "fd00:10:66::") {
		t.Fatalf("pod IPs %v, want one from 10.66.0.0/16 and one from fd00:10:66::/64", pod.IPs)
	}
	pod.Run(t, "httpd", "/bin/httpd", "-f", "-p", "80", "-h", "/www")
	for _, addr := range []string{pod.IPs[0] + ":80", "[" + pod.IPs[1] + "]:80"} {
		if out, err := runtimetest.Retry(func() (string, error) { return runtimetest.HTTPGetIn(node, addr) }); err != nil || !strings.Contains(out, "cnibox") {
			t.Errorf("node -> pod %s: %q %v", addr, out, err)
		}
	}
	pod.Stop(t)
	after := snapshot(t, node, c)
	for _, leak := range append([]string{"veth", pod.ID}, pod.IPs...) {
		if strings.Contains(after, leak) {
			t.Errorf("after stopp/rmp the node still has %q:\n%s", leak, after)
		}
	}
}
