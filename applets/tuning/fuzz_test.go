package tuning

import (
	"errors"
	"path/filepath"
	"regexp"
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

// FuzzAllowlist: an allowlist file either fails to parse (and then tuning
// refuses every sysctl: fail closed) or yields one regex per non-blank
// line, none skipped, and a key is allowed exactly when one of those lines
// matches it.
func FuzzAllowlist(f *testing.F) {
	f.Add([]byte("^net\\.core\\.somaxconn$\n\n  ^net\\.ipv4\\.conf\\.[^.]+\\.arp_notify$  \r\n"), "net.core.somaxconn")
	f.Add([]byte("net.ipv4.(\n"), "net.ipv4.ip_forward")
	f.Add([]byte(" \t\r\n\v\n"), "net.ipv4.ip_forward")
	f.Add([]byte("a\x00b\n[[:alpha:]]+"), "net")
	f.Fuzz(func(t *testing.T, data []byte, key string) {
		res, err := parseAllowlist(data)
		if err != nil {
			return
		}
		var lines []string
		for _, l := range strings.Split(string(data), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
		if len(res) != len(lines) {
			t.Fatalf("%d regexes from %d lines %q", len(res), len(lines), lines)
		}
		want := false
		for i, l := range lines {
			if res[i].String() != l {
				t.Fatalf("line %d is %q, compiled %q", i+1, l, res[i])
			}
			want = want || regexp.MustCompile(l).MatchString(key)
		}
		if got := allowed(key, res); got != want {
			t.Fatalf("allowed(%q) = %v, want %v", key, got, want)
		}
	})
}
