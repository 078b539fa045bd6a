package tuning

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSysctlPath(t *testing.T) {
	for _, c := range []struct{ key, ifName, want, err string }{
		{"net.ipv4.conf.IFNAME.arp_notify", "eth0", "/proc/sys/net/ipv4/conf/eth0/arp_notify", ""},
		{"net.ipv4.conf.IFNAME.arp_notify", "eth0.100", "/proc/sys/net/ipv4/conf/eth0.100/arp_notify", ""},
		{"net/ipv4/conf/eth0.100/arp_notify", "x", "/proc/sys/net/ipv4/conf/eth0.100/arp_notify", ""},
		{"/net/core/somaxconn", "x", "/proc/sys/net/core/somaxconn", ""},
		{"net.IFNAME.IFNAME", "e", "/proc/sys/net/e/IFNAME", ""},
		{"kernel.panic", "eth0", "", "only net.*"},
		{"net", "eth0", "", "only net.*"},
		{"net/../kernel/panic", "eth0", "", `component ".."`},
		{"net/ipv4//x", "eth0", "", `component ""`},
		{"net.ipv4.conf.IFNAME.x", "..", "", `component ".."`},
		{"", "eth0", "", "only net.*"},
	} {
		got, err := sysctlPath(c.key, c.ifName)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("sysctlPath(%q, %q) = %q, %v; want error %q", c.key, c.ifName, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("sysctlPath(%q, %q) = %q, %v; want %q", c.key, c.ifName, got, err, c.want)
		}
	}
}

func TestResolveSysctlsSamePath(t *testing.T) {
	_, err := resolveSysctls(map[string]string{"net.core.somaxconn": "1", "net/core/somaxconn": "2"}, "eth0")
	if err == nil || !strings.Contains(err.Error(), "same sysctl") {
		t.Fatalf("err = %v", err)
	}
}

func TestDuplicateKeys(t *testing.T) {
	if err := duplicateKeys([]byte(`{"a":"1","b":"2"}`), "sysctl"); err != nil {
		t.Fatal(err)
	}
	err := duplicateKeys([]byte(`{"a":"1","b":{"x":1},"a":"3"}`), "args.cni.sysctl")
	if err == nil || !strings.Contains(err.Error(), `args.cni.sysctl: duplicate key "a"`) {
		t.Fatalf("err = %v", err)
	}
	for _, raw := range []string{``, `null`, `"x"`, `[1]`} {
		if err := duplicateKeys([]byte(raw), "sysctl"); err != nil {
			t.Errorf("%q: %v", raw, err)
		}
	}
}

func TestAllowlist(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "allowlist.conf")
	t.Setenv(AllowlistEnv, file)
	s := []sysctl{{Key: "net.ipv4.conf.IFNAME.arp_notify"}, {Key: "net.core.somaxconn"}}
	if err := checkAllowlist(s); err != nil {
		t.Fatalf("no allowlist file: %v", err)
	}
	os.WriteFile(file, []byte("\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$  \n^net\\.core\\.somaxconn$\n"), 0o644)
	if err := checkAllowlist(s); err != nil {
		t.Fatalf("allowed: %v", err)
	}
	err := checkAllowlist([]sysctl{{Key: "net.ipv4.ip_forward"}})
	if err == nil || !strings.Contains(err.Error(), `sysctl["net.ipv4.ip_forward"]: not allowed`) {
		t.Fatalf("err = %v", err)
	}
	os.WriteFile(file, []byte("net\\.core\\.(\n"), 0o644)
	if err := checkAllowlist(s); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad regex: err = %v", err)
	}
	os.WriteFile(file, nil, 0o644)
	if err := checkAllowlist(s); err == nil {
		t.Fatal("an empty allowlist file allowed a sysctl")
	}
}

func TestSameSysctlValue(t *testing.T) {
	if !sameSysctlValue("4096\t131072\t6291456", "4096 131072  6291456") || sameSysctlValue("1", "10") {
		t.Fatal("sameSysctlValue")
	}
}

func TestKeepOlder(t *testing.T) {
	b := &backup{Mtu: 1400, Sysctls: []sysctlBackup{{Path: "/a", Was: "9"}, {Path: "/b", Was: "1"}}}
	b.keepOlder(&backup{Mtu: 1500, Mac: "02:00:00:00:00:01", Sysctls: []sysctlBackup{{Path: "/a", Was: "0"}, {Path: "/c", Was: "5", Set: "6"}}})
	if b.Mtu != 1500 || b.Mac != "02:00:00:00:00:01" || b.Sysctls[0].Was != "0" || b.Sysctls[1].Was != "1" || len(b.Sysctls) != 3 || b.Sysctls[2].Path != "/c" {
		t.Fatalf("%+v", b)
	}
}

// TestRemoveBackupStrays: a plugin killed while saveBackup wrote leaves
// its temporary file; DEL's removeBackup takes it too, and nothing of
// another attachment.
func TestRemoveBackupStrays(t *testing.T) {
	dir := t.TempDir()
	path := backupPath(dir, "c1", "eth0")
	other := backupPath(dir, "c1", "eth1")
	for _, f := range []string{path, dir + "/.c1_eth0.json.123", dir + "/.c1_eth0.json.456", other, dir + "/.c1_eth1.json.789"} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeBackup(path); err != nil {
		t.Fatal(err)
	}
	if err := removeBackup(path); err != nil {
		t.Fatalf("again: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{".c1_eth1.json.789", "c1_eth1.json"}; !slices.Equal(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
}
