package runtimetest_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/runtimetest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestPodman runs podman 4 (CNI backend) on cnibox: its in-memory default
// network and networks made by "podman network create" (bridge, portmap,
// firewall with backend "", tuning at 0.4.0), published ports reached
// from the node, an --internal network, and every shipped conflist loaded
// (VERSION on each plugin) with no network skipped.
func TestPodman(t *testing.T) {
	runtimetest.RequirePodman(t)
	node := testnet.NewNS(t, "node")
	plugins := runtimetest.InstallPlugins(t)
	t.Logf("who runs what: %s", plugins.Describe("bridge", "host-local", "portmap", "firewall", "tuning"))
	p := runtimetest.StartPodman(t, node, plugins.Dir)
	p.LoadImage(t)
	img := runtimetest.PauseImage

	t.Run("default network", func(t *testing.T) {
		p.MustRun(t, "run", "-d", "--name", "web", "-p", "18080:80", img, "/bin/httpd", "-f", "-p", "80", "-h", "/www")
		ip := strings.TrimSpace(p.MustRun(t, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"))
		t.Logf("container web on the default network: %s", ip)
		if !strings.HasPrefix(ip, "10.88.") {
			t.Fatalf("container IP %q not from podman's default 10.88.0.0/16", ip)
		}
		for _, addr := range []string{ip + ":80", "10.88.0.1:18080"} {
			if out, err := runtimetest.Retry(func() (string, error) { return runtimetest.HTTPGetIn(node, addr) }); err != nil || !strings.Contains(out, "cnibox") {
				t.Errorf("node -> %s: %q %v", addr, out, err)
			}
		}
		p.MustRun(t, "rm", "-f", "-t", "0", "web")
		podmanClean(t, node, p, ip)
	})

	t.Run("network create", func(t *testing.T) {
		p.MustRun(t, "network", "create", "--subnet", "10.89.5.0/24", "cnibox-net")
		conf := readPodmanConflist(t, p, "cnibox-net")
		if conf.CNIVersion != "0.4.0" || strings.Join(conf.types(), " ") != "bridge portmap firewall tuning" {
			t.Errorf("podman wrote cniVersion %s plugins %v; this test expects 0.4.0 bridge portmap firewall tuning", conf.CNIVersion, conf.types())
		}
		p.MustRun(t, "run", "-d", "--name", "web2", "--network", "cnibox-net", "-p", "18081:80", img, "/bin/httpd", "-f", "-p", "80", "-h", "/www")
		ip := strings.TrimSpace(p.MustRun(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"cnibox-net\").IPAddress}}", "web2"))
		t.Logf("container web2 on cnibox-net: %s", ip)
		if out, err := runtimetest.Retry(func() (string, error) { return runtimetest.HTTPGetIn(node, "10.89.5.1:18081") }); err != nil || !strings.Contains(out, "cnibox") {
			t.Errorf("node -> hostPort 18081: %q %v", out, err)
		}
		p.MustRun(t, "run", "-d", "--name", "client2", "--network", "cnibox-net", img, "/bin/sleep", "3600")
		if out, err := runtimetest.Retry(func() (string, error) {
			o, _, err := p.Run(append([]string{"exec", "client2"}, runtimetest.HTTPGet(ip)...)...)
			return o, err
		}); err != nil || !strings.Contains(out, "cnibox") {
			t.Errorf("container -> container %s: %q %v", ip, out, err)
		}
		p.MustRun(t, "rm", "-f", "-t", "0", "web2", "client2")
		podmanClean(t, node, p, ip)
	})

	t.Run("internal", func(t *testing.T) {
		p.MustRun(t, "network", "create", "--internal", "--subnet", "10.89.6.0/24", "cnibox-internal")
		conf := readPodmanConflist(t, p, "cnibox-internal")
		if g, _ := conf.Plugins[0]["isGateway"].(bool); g {
			t.Errorf("--internal network has isGateway true: %v", conf.Plugins[0])
		}
		p.MustRun(t, "run", "-d", "--name", "web3", "--network", "cnibox-internal", img, "/bin/httpd", "-f", "-p", "80", "-h", "/www")
		p.MustRun(t, "run", "-d", "--name", "client3", "--network", "cnibox-internal", img, "/bin/sleep", "3600")
		ip := strings.TrimSpace(p.MustRun(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"cnibox-internal\").IPAddress}}", "web3"))
		if out, err := runtimetest.Retry(func() (string, error) {
			o, _, err := p.Run(append([]string{"exec", "client3"}, runtimetest.HTTPGet(ip)...)...)
			return o, err
		}); err != nil || !strings.Contains(out, "cnibox") {
			t.Errorf("internal container -> container %s: %q %v", ip, out, err)
		}
		routes := p.MustRun(t, "exec", "client3", "ip", "route")
		if strings.Contains(routes, "default") {
			t.Errorf("container on an --internal network has a default route:\n%s", routes)
		}
		p.MustRun(t, "rm", "-f", "-t", "0", "web3", "client3")
		podmanClean(t, node, p, ip)
	})

	t.Run("ipam-driver dhcp", func(t *testing.T) {
		if _, err := exec.LookPath("dnsmasq"); err != nil {
			t.Skip("dnsmasq not installed (Debian dnsmasq-base; make test-deps installs it)")
		}
		p.MustRun(t, "network", "create", "--ipam-driver", "dhcp", "cnibox-dhcp")
		conf := readPodmanConflist(t, p, "cnibox-dhcp")
		ipam, _ := conf.Plugins[0]["ipam"].(map[string]any)
		bridge, _ := conf.Plugins[0]["bridge"].(string)
		if ipam["type"] != "dhcp" || bridge == "" {
			t.Fatalf("podman wrote bridge %q ipam %v", bridge, ipam)
		}
		// The LAN: the bridge podman will use, with a DHCP server on it.
		server := testnet.NewNS(t, "dhcpsrv")
		node.MustRun("ip", "link", "add", bridge, "type", "bridge")
		node.MustRun("ip", "link", "add", "dh0", "type", "veth", "peer", "name", "srv0", "netns", server.Name)
		node.MustRun("ip", "link", "set", "dh0", "master", bridge, "up")
		node.MustRun("ip", "link", "set", bridge, "up")
		server.MustRun("ip", "addr", "add", "192.168.99.1/24", "dev", "srv0")
		server.MustRun("ip", "link", "set", "srv0", "up")
		dir := t.TempDir()
		startProcess(t, server.Command("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
			"--user=root", "--no-ping", "--interface=srv0", "--bind-interfaces",
			"--dhcp-range=192.168.99.100,192.168.99.199,255.255.255.0,2m",
			"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"),
			"--dhcp-option=option:router,192.168.99.1"), "dnsmasq")
		// podman's dhcp plugin talks to the daemon on /run/cni/dhcp.sock,
		// which is the test's /run in podman's mount namespace.
		startProcess(t, p.InNode(filepath.Join(plugins.Dir, "dhcp"), "daemon"), "dhcp daemon")
		p.MustRun(t, "run", "-d", "--name", "dh", "--network", "cnibox-dhcp", img, "/bin/sleep", "3600")
		addr := p.MustRun(t, "exec", "dh", "ip", "-o", "-4", "addr", "show", "eth0")
		t.Logf("container on the dhcp network: %s", addr)
		if !strings.Contains(addr, "inet 192.168.99.1") {
			t.Errorf("no DHCP address from 192.168.99.100-199: %s", addr)
		}
		if _, err := runtimetest.Retry(func() (string, error) {
			o, _, err := p.Run("exec", "dh", "ping", "-c", "1", "-W", "2", "192.168.99.1")
			return o, err
		}); err != nil {
			t.Errorf("container cannot reach the DHCP server/router: %v", err)
		}
		p.MustRun(t, "rm", "-f", "-t", "0", "dh")
	})

	t.Run("shipped conflists load", func(t *testing.T) {
		files := shippedFiles(t)
		var names []string
		for _, f := range files {
			b := shipped(t, filepath.Base(f))
			var c struct{ Name string }
			json.Unmarshal(b, &c)
			if c.Name == "podman" {
				continue // would replace the default network
			}
			names = append(names, c.Name)
			if err := os.WriteFile(filepath.Join(p.ConfDir, filepath.Base(f)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out := p.MustRun(t, "network", "ls", "--format", "{{.Name}}")
		for _, n := range names {
			if !strings.Contains("\n"+out, "\n"+n+"\n") {
				t.Errorf("podman skipped network %s (its VERSION check failed?); it lists:\n%s", n, out)
			}
		}
	})

	// Each shipped list that needs nothing from the node (no master
	// device) runs a container. podman 4 vendors libcni 1.1, which knows
	// spec versions up to 1.0.0 and ignores cniVersions: a list whose
	// only version is 1.1.0 cannot work with it.
	t.Run("shipped conflists run", func(t *testing.T) {
		files := shippedFiles(t)
		for _, f := range files {
			b := shipped(t, filepath.Base(f))
			var c struct {
				Name        string
				CNIVersion  string   `json:"cniVersion"`
				CNIVersions []string `json:"cniVersions"`
				Plugins     []struct{ Type string }
			}
			json.Unmarshal(b, &c)
			if strings.Contains(string(b), `"master"`) || c.Name == "podman" {
				continue
			}
			if err := os.WriteFile(filepath.Join(p.ConfDir, filepath.Base(f)), b, 0o644); err != nil {
				t.Fatal(err)
			}
			if c.CNIVersion == "1.1.0" {
				t.Logf("NOT USABLE WITH podman 4 / containerd 1.6 (libcni < 1.2): %s has cniVersion 1.1.0 and no older fallback; "+
					`use "cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"]`, filepath.Base(f))
				continue
			}
			// What to look at in the container: eth0's address, or, for
			// a list that only brings up loopback, lo's.
			show := []string{"ip", "-o", "-4", "addr", "show", "eth0"}
			if strings.Contains(c.Name, "ipv6") {
				show[2] = "-6"
			}
			if len(c.Plugins) == 1 && c.Plugins[0].Type == "loopback" {
				show = []string{"ip", "-o", "-4", "addr", "show", "lo", "up"}
			}
			start := time.Now()
			// "run -d", "exec", "rm": "run --rm" of a short command
			// waits ~20s for podman's exit handling here.
			p.MustRun(t, "run", "-d", "--name", "ship-"+c.Name, "--network", c.Name, img, "/bin/sleep", "3600")
			out, errOut, err := p.Run(append([]string{"exec", "ship-" + c.Name}, show...)...)
			p.MustRun(t, "rm", "-f", "-t", "0", "ship-"+c.Name)
			if err != nil || !strings.Contains(out, "inet") {
				t.Errorf("podman run on %s (%s): %q %v %s", c.Name, filepath.Base(f), out, err, errOut)
			} else {
				t.Logf("podman run on %s: %s (%v)", c.Name, strings.Fields(out)[3], time.Since(start).Round(time.Millisecond))
			}
		}
		podmanClean(t, node, p, "none")
	})
}

type podmanConflist struct {
	CNIVersion string           `json:"cniVersion"`
	Plugins    []map[string]any `json:"plugins"`
}

func (c podmanConflist) types() []string {
	var out []string
	for _, p := range c.Plugins {
		out = append(out, p["type"].(string))
	}
	return out
}

func readPodmanConflist(t *testing.T, p *runtimetest.Podman, name string) podmanConflist {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.ConfDir, name+".conflist"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("podman network create wrote:\n%s", b)
	var c podmanConflist
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	for _, pl := range c.Plugins {
		if pl["type"] == "firewall" {
			if b, ok := pl["backend"]; !ok || b != "" {
				t.Errorf(`podman's firewall entry has backend %v, this test expects ""`, b)
			}
		}
	}
	return c
}

// podmanClean checks that removed containers left no veth, reservation,
// cache entry or per-container rule.
func podmanClean(t *testing.T, node *testnet.NS, p *runtimetest.Podman, ip string) {
	t.Helper()
	links := node.MustRun("ip", "-o", "link", "show")
	if strings.Contains(links, "veth") {
		t.Errorf("a veth is left after podman rm:\n%s", links)
	}
	var left []string
	filepath.Walk(p.State, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && (filepath.Base(path) == ip || strings.Contains(path, "/results/")) {
			left = append(left, path)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("state left after podman rm: %v", left)
	}
	if out, _ := node.Run("iptables-save"); strings.Contains(out, ip+"/") || strings.Contains(out, "CNI-DN-") {
		t.Errorf("rules for %s left after podman rm:\n%s", ip, out)
	}
}
