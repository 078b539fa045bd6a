package hostlocal_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestGC: GC releases every reservation whose attachment is not valid,
// keeps id-only files whose container is valid, removes empty files, and
// never touches lock, last_reserved_ip.*, files not named by an address or
// another network's directory. Both keys; a missing key means none valid.
func TestGC(t *testing.T) {
	our := filepath.Join(testnet.BinDir(t), "host-local")
	netns := testnet.NewNS(t, "pod").Path
	nw := newNetwork(t, "1.1.0")
	ipam := `"ranges":[[{"subnet":"10.110.0.0/24"}]]`
	conf := string(nw.conf(ipam))
	run := func(cmd, id, ifname, extra string) {
		t.Helper()
		c := conf
		if extra != "" {
			c = strings.Replace(conf, `"type":"host-local","ipam"`, `"type":"host-local",`+extra+`,"ipam"`, 1)
		}
		env := []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=" + ifname, "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(our)}
		if out, err := execPlugin(t, our, env, []byte(c)); err != nil {
			t.Fatal(out, err)
		}
	}
	setup := func() {
		run("ADD", "a", "eth0", "")
		run("ADD", "a", "net1", "")
		run("ADD", "b", "eth0", "")
		os.WriteFile(filepath.Join(nw.dir(), "10.110.0.100"), []byte("legacy-ok"), 0o600)
		os.WriteFile(filepath.Join(nw.dir(), "10.110.0.101"), []byte("legacy-gone"), 0o600)
		os.WriteFile(filepath.Join(nw.dir(), "10.110.0.102"), nil, 0o600)
		os.WriteFile(filepath.Join(nw.dir(), "notes.txt"), []byte("b\r\neth0"), 0o600)
	}
	other := filepath.Join(nw.dataDir, "other-net")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "10.110.0.2"), []byte("b\r\neth0"), 0o600)

	setup()
	run("GC", "", "", `"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"legacy-ok","ifname":"eth9"}]`)
	got := nw.files(t)
	want := map[string]string{"10.110.0.2": "a\r\neth0", "10.110.0.100": "legacy-ok", "notes.txt": "b\r\neth0"}
	if len(got) != len(want) {
		t.Fatalf("after GC: %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("after GC: %q, want %q", got, want)
		}
	}
	for _, f := range []string{"lock", "last_reserved_ip.0"} {
		if _, err := os.Stat(filepath.Join(nw.dir(), f)); err != nil {
			t.Errorf("GC removed %s", f)
		}
	}
	if _, err := os.Stat(filepath.Join(other, "10.110.0.2")); err != nil {
		t.Error("GC touched another network's directory")
	}
	// The index agrees with the files after GC: DELs find what is left.
	run("DEL", "a", "eth0", "")
	run("DEL", "legacy-ok", "eth0", "")
	if got := nw.files(t); len(got) != 1 {
		t.Fatalf("after DELs: %q", got)
	}

	// The older key libcni also sends.
	setup()
	run("GC", "", "", `"cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]`)
	if got := nw.files(t); len(got) != 2 || got["notes.txt"] == "" {
		t.Fatalf("after GC with cni.dev/attachments: %q", got)
	}
	run("DEL", "b", "eth0", "")
	// No key: nothing is valid.
	setup()
	run("GC", "", "", "")
	if got := nw.files(t); len(got) != 1 || got["notes.txt"] == "" {
		t.Fatalf("after GC without a list: %q", got)
	}

	// GC of a network that never allocated creates nothing.
	empty := newNetwork(t, "1.1.0")
	env := []string{"CNI_COMMAND=GC", "CNI_PATH=" + filepath.Dir(our)}
	if out, err := execPlugin(t, our, env, empty.conf(ipam)); err != nil {
		t.Fatal(out, err)
	}
	if _, err := os.Stat(empty.dataDir); err == nil {
		t.Error("GC created the data dir")
	}
}

// TestStatusDataDir: STATUS is 50 and names the directory when the data
// dir cannot be used.
func TestStatusDataDir(t *testing.T) {
	our := filepath.Join(testnet.BinDir(t), "host-local")
	nw := newNetwork(t, "1.1.0")
	os.WriteFile(nw.dataDir, []byte("a file, not a directory"), 0o644)
	out, err := execPlugin(t, our, []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + filepath.Dir(our)}, nw.conf(`"subnet":"10.111.0.0/24"`))
	if err == nil {
		t.Fatal("STATUS passed with the data dir a file")
	}
	if e := testnet.ParseError(t, []byte(out)); e.Code != 50 || !strings.Contains(e.Msg, nw.dataDir) {
		t.Fatalf("STATUS: %d %q", e.Code, e.Msg)
	}
}
