package runtimetest_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"

	"github.com/cnibox/cnibox/shared/testing/runtimetest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// referenceNewest is the newest spec version Debian's reference plugins
// (v1.1.1) accept; a shipped 1.1.0 list that needs one of them runs at
// this version until cnibox's applet lands.
const referenceNewest = "1.0.0"

// TestShippedConflists runs every file of conflists/ through the real
// cnitool (v1.3.0) as a node would: ADD (with port mappings and bandwidth
// for the plugins that take them), the result parsed at the list's
// cniVersion, traffic to the gateway, CHECK, STATUS, DEL; then ADD again
// and GC, which must remove everything. Nothing may be left on the node.
func TestShippedConflists(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(testnet.RepoRoot(), "conflists", "*.conflist"))
	if len(files) == 0 {
		t.Fatal("no conflists/*.conflist")
	}
	for _, file := range files {
		file := file
		t.Run(strings.TrimSuffix(filepath.Base(file), ".conflist"), func(t *testing.T) {
			runShipped(t, file)
		})
	}
}

// pluginTypes lists every plugin and IPAM type a list needs.
func pluginTypes(list *libcni.NetworkConfigList) []string {
	seen := map[string]bool{}
	for _, p := range list.Plugins {
		if p.Network.Type == "cnibox" {
			// The one-exec chain: the binary itself, running its list.
			var chain struct {
				Plugins []struct {
					Type string `json:"type"`
					IPAM struct {
						Type string `json:"type"`
					} `json:"ipam"`
				} `json:"plugins"`
			}
			json.Unmarshal(p.Bytes, &chain)
			for _, in := range chain.Plugins {
				seen[in.Type] = true
				if in.IPAM.Type != "" {
					seen[in.IPAM.Type] = true
				}
			}
			continue
		}
		seen[p.Network.Type] = true
		if p.Network.IPAM.Type != "" {
			seen[p.Network.IPAM.Type] = true
		}
	}
	var out []string
	for ty := range seen {
		out = append(out, ty)
	}
	sort.Strings(out)
	return out
}

func runShipped(t *testing.T, file string) {
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		t.Fatalf("libcni cannot load %s: %v", file, err)
	}
	r := testnet.NewRuntime(t)
	plugins := runtimetest.InstallPlugins(t)
	r.SetPath(plugins.Dir)
	types := pluginTypes(list)
	t.Logf("who runs what: %s", plugins.Describe(types...))
	var conf map[string]any
	if err := json.Unmarshal(raw, &conf); err != nil {
		t.Fatal(err)
	}
	version := list.CNIVersion // libcni v1.3.0 picks the newest of cniVersions it knows
	for _, ty := range types {
		if !plugins.IsOurs(ty) {
			if _, err := os.Stat(filepath.Join(testnet.ReferenceDir(), ty)); err != nil {
				t.Skipf("needs %s: neither cnibox nor %s has it yet", ty, testnet.ReferenceDir())
			}
			if version == "1.1.0" {
				t.Logf("REFERENCE %s accepts at most %s: running this list at %s until cnibox's %s lands", ty, referenceNewest, referenceNewest, ty)
				delete(conf, "cniVersions")
				conf["cniVersion"] = referenceNewest
				version = referenceNewest
			}
		}
	}

	var gateway string
	switch {
	case strings.Contains(string(raw), `"master": "eth0"`):
		gateway = uplink(t, r, list, conf)
	}
	b, _ := json.Marshal(conf)
	list = r.Conflist(string(b))

	env := []string{`CAP_ARGS={"portMappings":[{"hostPort":18090,"containerPort":80,"protocol":"tcp"}],` +
		`"bandwidth":{"ingressRate":100000000,"ingressBurst":1000000,"egressRate":100000000,"egressBurst":1000000}}`}
	pod := r.Pod(t)
	out, err := r.Cnitool("add", list.Name, pod, env...)
	if err != nil {
		t.Fatal(err)
	}
	var head struct {
		CNIVersion string `json:"cniVersion"`
	}
	json.Unmarshal([]byte(out), &head)
	if head.CNIVersion != version {
		t.Errorf("ADD result cniVersion %q, want the list's %q", head.CNIVersion, version)
	}
	res, err := create.CreateFromBytes([]byte(out))
	if err != nil {
		t.Fatalf("libcni cannot parse the %s result: %v\n%s", version, err, out)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("convert result: %v", err)
	}
	if len(cur.IPs) == 0 {
		t.Fatalf("ADD result has no IP:\n%s", out)
	}
	for _, ip := range cur.IPs {
		target := gateway
		if target == "" && ip.Gateway != nil {
			target = ip.Gateway.String()
		}
		if ip.Address.IP.IsLoopback() {
			target = ip.Address.IP.String()
		}
		if target == "" || (strings.Contains(target, ":") != (ip.Address.IP.To4() == nil)) {
			continue
		}
		if _, err := runtimetest.Retry(func() (string, error) { return "", pod.Ping(target) }); err != nil {
			t.Errorf("pod %s cannot ping %s: %v", ip.Address.String(), target, err)
		}
	}
	if _, err := r.Cnitool("check", list.Name, pod, env...); err != nil && version >= "0.4.0" {
		t.Errorf("CHECK: %v", err)
	}
	if _, err := r.Cnitool("status", list.Name, nil); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	if _, err := r.Cnitool("del", list.Name, pod, env...); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	noLeftovers(t, r, "DEL")

	// GC: cnitool gc DELs every cached attachment of the network and
	// sends GC (1.1.0) with no valid attachments.
	pod2 := r.Pod(t)
	if _, err := r.Cnitool("add", list.Name, pod2, env...); err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	if _, err := r.Cnitool("gc", list.Name, nil); err != nil {
		t.Fatalf("GC: %v", err)
	}
	noLeftovers(t, r, "GC")
}

// noLeftovers fails if the node keeps a veth, a reservation, a cached
// result or a per-pod rule after DEL or GC.
func noLeftovers(t *testing.T, r *testnet.Runtime, after string) {
	t.Helper()
	links := r.Node.MustRun("ip", "-o", "link", "show")
	if strings.Contains(links, "veth") {
		t.Errorf("after %s the node still has a veth:\n%s", after, links)
	}
	var left []string
	filepath.Walk(r.StateDir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		// host-local's lock, last-reserved marker and index stamp
		// (networks/.cnibox/) are bookkeeping, not reservations.
		rel, _ := filepath.Rel(r.StateDir, path)
		base := filepath.Base(path)
		if base == "lock" || strings.HasPrefix(base, "last_reserved_ip") || strings.HasPrefix(rel, "networks/.cnibox/") {
			return nil
		}
		left = append(left, rel)
		return nil
	})
	if len(left) > 0 {
		t.Errorf("after %s the node still has state: %v", after, left)
	}
	for _, save := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		if out, _ := r.Node.Run(save[0], save[1:]...); strings.Contains(out, "CNI-DN-") || strings.Contains(out, "cnitool-") {
			t.Errorf("after %s the node still has per-pod rules:\n%s", after, out)
		}
	}
}

// uplink gives the node an "eth0" (the master of the macvlan and dhcp
// lists): a veth whose peer is in an "outside" netns holding the network's
// gateway, and for an IPAM of type dhcp, a dnsmasq there and cnibox's (or
// the reference) dhcp daemon in the node. It returns the address to ping.
func uplink(t *testing.T, r *testnet.Runtime, list *libcni.NetworkConfigList, conf map[string]any) string {
	outside := testnet.NewNS(t, "outside")
	r.Node.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", outside.Name)
	r.Node.MustRun("ip", "link", "set", "eth0", "up")
	const gw = "192.168.77.1"
	outside.MustRun("ip", "addr", "add", gw+"/24", "dev", "up0")
	outside.MustRun("ip", "link", "set", "up0", "up")
	if !strings.Contains(fmt.Sprint(conf), "type:dhcp") {
		return gw
	}
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (Debian dnsmasq-base; make test-deps installs it)")
	}
	dir := t.TempDir()
	srv := outside.Command("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--user=root", "--no-ping", "--interface=up0", "--bind-interfaces",
		"--dhcp-range=192.168.77.100,192.168.77.199,255.255.255.0,2m",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--dhcp-option=option:router,"+gw)
	startProcess(t, srv, "dnsmasq")
	// The daemon's socket is the test's; the list is told where it is.
	sock := filepath.Join(dir, "dhcp.sock")
	// Its lease records too, and it runs with the test's /var/lib/cni.
	daemon := runtimetest.NodeCommand(r.Node, runtimetest.StateMounts(t.TempDir()),
		filepath.Join(r.Path, "dhcp"), "daemon", "-socketpath", sock, "-leasefile", filepath.Join(dir, "leases.json"))
	startProcess(t, daemon, "dhcp daemon")
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range conf["plugins"].([]any) {
		if ipam, ok := p.(map[string]any)["ipam"].(map[string]any); ok && ipam["type"] == "dhcp" {
			ipam["daemonSocketPath"] = sock
		}
	}
	t.Logf("dhcp: dnsmasq in %s serving 192.168.77.100-199; dhcp daemon on %s", outside.Name, sock)
	return gw
}

// startProcess starts cmd and ends it (by its pid) when the test ends.
func startProcess(t *testing.T, cmd *exec.Cmd, what string) {
	t.Helper()
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", what, out.String())
		}
	})
}
