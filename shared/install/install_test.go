package install_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cnibox/cnibox/shared/install"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// cnibox runs the test binary of cnibox with args and returns its output.
func cnibox(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(testnet.Binary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("cnibox %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// whoAnswers runs plugin without CNI_COMMAND, as a person would to see
// what a binary is: "cnibox" for ours, "reference" for a reference plugin
// (skel's "CNI NAME plugin version ..."), or the failure.
func whoAnswers(plugin string) string {
	out, err := exec.Command(plugin).CombinedOutput()
	switch {
	case err != nil:
		return "failed: " + err.Error() + ": " + string(out)
	case strings.Contains(string(out), "(cnibox "):
		return "cnibox"
	case strings.Contains(string(out), " plugin version"):
		return "reference"
	}
	return "unknown: " + string(out)
}

// version runs the plugin's VERSION as a runtime does.
func version(t *testing.T, plugin string) {
	t.Helper()
	cmd := exec.Command(plugin)
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), "supportedVersions") {
		t.Errorf("%s VERSION: %v %q", plugin, err, out)
	}
}

func reference(t *testing.T) (dir string, names []string) {
	t.Helper()
	dir = "/usr/lib/cni"
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		t.Skipf("no reference plugins in %s (Debian's containernetworking-plugins): %v", dir, err)
	}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return dir, names
}

// TestEntries: the default install makes one small applet entry per name,
// each runs its applet (through the kernel's #! handling), and a rerun
// changes nothing.
func TestEntries(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "opt", "cni", "bin")
	cnibox(t, "install", "--dir", dir)
	applets := testnet.Applets(t)
	inodes := map[string]uint64{}
	for _, n := range applets {
		if k := install.Inspect(dir, n); k != install.Script {
			t.Fatalf("%s is %v, want an applet entry", n, k)
		}
		if got := install.EntryInterpreter(filepath.Join(dir, n)); got != filepath.Join(dir, "cnibox") {
			t.Errorf("%s runs %q", n, got)
		}
		if got := whoAnswers(filepath.Join(dir, n)); got != "cnibox" {
			t.Errorf("%s: %s", n, got)
		}
		version(t, filepath.Join(dir, n))
		inodes[n] = ino(t, filepath.Join(dir, n))
	}
	if k := install.Inspect(dir, "cnibox"); k != install.Binary {
		t.Fatalf("cnibox is %v", k)
	}
	inodes["cnibox"] = ino(t, filepath.Join(dir, "cnibox"))
	// The installed binary reinstalls itself: nothing is rewritten.
	out, err := exec.Command(filepath.Join(dir, "cnibox"), "install", "--dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("reinstall: %v %s", err, out)
	}
	for n, i := range inodes {
		if ino(t, filepath.Join(dir, n)) != i {
			t.Errorf("a rerun rewrote %s", n)
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, ".*")); len(tmp) > 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
}

func ino(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestHostDir: installing through a mount of the host's directory (the
// DaemonSet's /host/opt/cni/bin) names the binary by the host's path.
func TestHostDir(t *testing.T) {
	dir := t.TempDir()
	cnibox(t, "install", "--dir", dir, "--host-dir", "/opt/cni/bin")
	if got := install.EntryInterpreter(filepath.Join(dir, "bridge")); got != "/opt/cni/bin/cnibox" {
		t.Errorf("bridge runs %q, want /opt/cni/bin/cnibox", got)
	}
}

// TestCpOverInstall is the clobbering of issue 18, with the real cp: copy
// the reference plugins over an install (plain cp, then cp -a, as
// installers do). Over applet entries, every copied name becomes the
// reference's plugin and the binary stays intact; over symlinks or hard
// links, cp writes into the binary and every name runs the last file
// copied (the reason entries are the default).
func TestCpOverInstall(t *testing.T) {
	ref, names := reference(t)
	refHas := map[string]bool{}
	for _, n := range names {
		refHas[n] = true
	}
	for _, tc := range []struct {
		mode, cp string
		flags    []string
		survives bool
	}{
		{"entries", "cp", nil, true},
		{"entries", "cp -a", nil, true},
		{"symlinks", "cp", []string{"--symlink"}, false},
		{"hardlinks", "cp", []string{"--hardlink"}, false},
	} {
		t.Run(tc.mode+"/"+tc.cp, func(t *testing.T) {
			dir := t.TempDir()
			cnibox(t, append([]string{"install", "--dir", dir}, tc.flags...)...)
			want, _ := os.ReadFile(testnet.Binary(t))
			args := strings.Fields(tc.cp)[1:]
			for _, n := range names {
				args = append(args, filepath.Join(ref, n))
			}
			cmd := exec.Command("cp", append(args, dir+"/")...)
			out, err := cmd.CombinedOutput()
			got, _ := os.ReadFile(filepath.Join(dir, "cnibox"))
			intact := bytes.Equal(got, want)
			if intact != tc.survives {
				t.Fatalf("after %s over %s: binary intact %v, want %v (cp: %v %s)", tc.cp, tc.mode, intact, tc.survives, err, out)
			}
			if !tc.survives {
				return // the hazard is real; nothing more to check
			}
			if err != nil {
				t.Fatalf("%s: %v %s", tc.cp, err, out)
			}
			for _, n := range testnet.Applets(t) {
				wantWho := "cnibox"
				if refHas[n] {
					wantWho = "reference"
				}
				if who := whoAnswers(filepath.Join(dir, n)); who != wantWho {
					t.Errorf("after %s, %s answers %s, want %s", tc.cp, n, who, wantWho)
				}
			}
			if out := cnibox(t, "--list"); out == "" {
				t.Error("no applets")
			}
			// The way back: uninstall leaves exactly the reference's set.
			cnibox(t, "uninstall", "--dir", dir)
			left, _ := os.ReadDir(dir)
			var leftNames []string
			for _, e := range left {
				leftNames = append(leftNames, e.Name())
			}
			if !slices.Equal(leftNames, names) {
				t.Errorf("after uninstall %s holds %v, want the reference's %v", dir, leftNames, names)
			}
			for _, n := range names {
				a, _ := os.ReadFile(filepath.Join(ref, n))
				b, _ := os.ReadFile(filepath.Join(dir, n))
				if !bytes.Equal(a, b) {
					t.Errorf("%s is not the reference's after uninstall", n)
				}
			}
		})
	}
}

// TestUninstall removes exactly cnibox's binary and what runs it, in every
// install mode, over a reference install with foreign files beside.
func TestUninstall(t *testing.T) {
	ref, names := reference(t)
	applets := testnet.Applets(t)
	for _, mode := range [][]string{nil, {"--symlink"}, {"--hardlink"}} {
		t.Run(strings.Join(append([]string{"mode"}, mode...), ""), func(t *testing.T) {
			dir := t.TempDir()
			out, err := exec.Command("cp", append(prefixed(ref, names), dir+"/")...).CombinedOutput()
			if err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			victim := filepath.Join(t.TempDir(), "cnibox")
			os.WriteFile(victim, []byte("not ours"), 0o755)
			os.Symlink(victim, filepath.Join(dir, "elsewhere")) // a link to another "cnibox"
			os.WriteFile(filepath.Join(dir, "notes.sh"), []byte("#!/bin/sh\n# cnibox applet entry? no: /bin/sh\n"), 0o755)
			cnibox(t, append([]string{"install", "--dir", dir}, mode...)...)
			msg := cnibox(t, "uninstall", "--dir", dir)
			for _, n := range append(applets, "cnibox") {
				if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
					t.Errorf("%s left after uninstall (%s)", n, msg)
				}
			}
			for _, n := range append(slices.DeleteFunc(slices.Clone(names), func(n string) bool { return slices.Contains(applets, n) }), "elsewhere", "notes.sh") {
				if _, err := os.Lstat(filepath.Join(dir, n)); err != nil {
					t.Errorf("uninstall removed %s, which is not cnibox's: %s", n, msg)
				}
			}
			if b, _ := os.ReadFile(victim); string(b) != "not ours" {
				t.Error("uninstall touched a file outside the directory")
			}
			if msg := cnibox(t, "uninstall", "--dir", dir); !strings.Contains(msg, "no cnibox install") {
				t.Errorf("second uninstall: %q", msg)
			}
		})
	}
}

func prefixed(dir string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join(dir, n)
	}
	return out
}

// TestConflist: --conflist puts a network list into --conf-dir after the
// plugins, atomically and only when it changed; a missing file fails
// before anything is installed.
func TestConflist(t *testing.T) {
	dir, conf := t.TempDir(), filepath.Join(t.TempDir(), "net.d")
	list := filepath.Join(testnet.RepoRoot(), "conflists", "kubernetes.conflist")
	cnibox(t, "install", "--dir", dir, "--conflist", list, "--conf-dir", conf)
	a, _ := os.ReadFile(list)
	b, err := os.ReadFile(filepath.Join(conf, "kubernetes.conflist"))
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("conflist not installed: %v", err)
	}
	before := ino(t, filepath.Join(conf, "kubernetes.conflist"))
	cnibox(t, "install", "--dir", dir, "--conflist", list, "--conf-dir", conf)
	if ino(t, filepath.Join(conf, "kubernetes.conflist")) != before {
		t.Error("an unchanged conflist was rewritten")
	}
	empty := t.TempDir()
	out, err := exec.Command(testnet.Binary(t), "install", "--dir", empty, "--conflist", "/nonexistent.conflist").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "nonexistent") {
		t.Errorf("missing conflist: %v %s", err, out)
	}
	if left, _ := os.ReadDir(empty); len(left) > 0 {
		t.Errorf("a failed install left %d files", len(left))
	}
}

// TestPurge: in a throwaway node netns with portmap's guard (iptables,
// ip6tables, nftables) and cnibox's state directories under a temporary
// /var/lib/cni, "uninstall --purge" removes all of it and nothing else.
func TestPurge(t *testing.T) {
	testnet.RequireRoot(t)
	node := testnet.NewNS(t, "node")
	state, run := t.TempDir(), filepath.Join(t.TempDir(), "run-cnibox")
	for _, d := range []string{"cnibox-portmap/net1", "cnibox-firewall/net1", "networks/.cnibox/net1", "networks/net1", run} {
		p := d
		if !filepath.IsAbs(p) {
			p = filepath.Join(state, d)
		}
		os.MkdirAll(p, 0o700)
		os.WriteFile(filepath.Join(p, "record"), []byte("x"), 0o600)
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		node.MustRun(ipt, "-w", "-N", "CNI-HOSTPORT-GUARD")
		node.MustRun(ipt, "-w", "-A", "CNI-HOSTPORT-GUARD", "-m", "comment", "--comment", "guard", "-j", "DROP")
		node.MustRun(ipt, "-w", "-I", "INPUT", "1", "-j", "CNI-HOSTPORT-GUARD")
		node.MustRun(ipt, "-w", "-A", "INPUT", "-j", "ACCEPT") // not ours
	}
	node.MustRun("nft", "add table ip cni_hostport; add chain ip cni_hostport hostports; "+
		"add chain ip cni_hostport guard { type filter hook input priority filter; }; "+
		"add rule ip cni_hostport guard iifname != lo ip daddr 127.0.0.0/8 drop")
	out, err := node.Command(testnet.Binary(t), "uninstall", "--dir", t.TempDir(), "--purge", "--state-dir", state, "--run-dir", run).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall --purge: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	for _, d := range []string{"cnibox-portmap", "cnibox-firewall", "networks/.cnibox"} {
		if _, err := os.Lstat(filepath.Join(state, d)); err == nil {
			t.Errorf("%s left", d)
		}
	}
	if _, err := os.Lstat(run); err == nil {
		t.Errorf("%s left", run)
	}
	if _, err := os.Stat(filepath.Join(state, "networks/net1/record")); err != nil {
		t.Error("purge removed host-local's reservations (the reference's state)")
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		rules := node.MustRun(ipt, "-w", "-S")
		if strings.Contains(rules, "GUARD") || !strings.Contains(rules, "-A INPUT -j ACCEPT") {
			t.Errorf("%s after purge:\n%s", ipt, rules)
		}
	}
	nft := node.MustRun("nft", "list", "table", "ip", "cni_hostport")
	if strings.Contains(nft, "guard") || !strings.Contains(nft, "hostports") {
		t.Errorf("nftables after purge:\n%s", nft)
	}
}

// TestSleep: with --sleep (the DaemonSet's main container) install
// installs, says so, keeps running, and exits 0 on SIGTERM.
func TestSleep(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(testnet.Binary(t), "install", "--dir", dir, "--sleep")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 256)
	n, _ := out.Read(line) // returns once install has printed its line
	if !strings.Contains(string(line[:n]), "installed cnibox") || install.Inspect(dir, "bridge") != install.Script {
		t.Fatalf("before sleeping: %q, bridge %v", line[:n], install.Inspect(dir, "bridge"))
	}
	if cmd.ProcessState != nil {
		t.Fatal("exited instead of sleeping")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v", err)
	}
}
