package tuning

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// FuzzSysctlPath: whatever the key (dotted or slashed, any bytes) and
// interface name, an accepted sysctl is a clean path under /proc/sys/net:
// no "..", no escape into kernel.* or anywhere else.
// Seeds: f.Add below and testdata/fuzz/FuzzSysctlPath.
func FuzzSysctlPath(f *testing.F) {
	f.Add("net.ipv4.conf.IFNAME.arp_notify", "eth0")
	f.Add("net/ipv6/conf/eth0/accept_ra", "eth0")
	f.Add("net.ipv4.conf.eth0/../../../../kernel.panic", "eth0")
	f.Add("net/../kernel/panic", "eth0")
	f.Add("net.core.somaxconn", "..")
	f.Add("net.ipv4.conf.vlan0/10.forwarding", "vlan0.10")
	f.Fuzz(func(t *testing.T, key, ifName string) {
		path, err := sysctlPath(key, ifName)
		if err != nil {
			return
		}
		if !strings.HasPrefix(path, "/proc/sys/net/") || filepath.Clean(path) != path {
			t.Fatalf("sysctlPath(%q, %q) = %q: not a clean path under /proc/sys/net", key, ifName, path)
		}
		for _, part := range strings.Split(path, "/") {
			if part == ".." || part == "." {
				t.Fatalf("sysctlPath(%q, %q) = %q", key, ifName, path)
			}
		}
	})
}

// FuzzLoad: any config is loaded or refused with a CNI error that is not
// 999 (a bad config is the caller's error, and names its field).
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tuning","sysctl":{"net.core.somaxconn":"512"},"mac":"02:00:00:00:00:01","mtu":1400,"promisc":true,"txQLen":1000}`), "")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tuning","args":{"cni":{"mtu":9000,"sysctl":{"kernel.panic":"1"}}},"runtimeConfig":{"mac":"zz"}}`), "MAC=02:00:00:00:00:02")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","sysctl":{"a":"1","a":"2"}}`), "IgnoreUnknown=1")
	f.Fuzz(func(t *testing.T, conf []byte, args string) {
		req := &cni.Request{Command: "ADD", ContainerID: "c", IfName: "eth0", Netns: "/x", Args: args, Config: conf, Name: "n", Version: "1.0.0"}
		if _, _, err := load(req); err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Code == cni.ErrInternal {
				t.Fatalf("refusal is not a CNI config error: %#v", err)
			}
		}
	})
}
