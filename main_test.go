package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/install"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

func TestAppletTableIsSortedAndUnique(t *testing.T) {
	for i := 1; i < len(applets); i++ {
		if applets[i-1].Name >= applets[i].Name {
			t.Errorf("applet table not sorted/unique at %q, %q", applets[i-1].Name, applets[i].Name)
		}
	}
	for _, a := range applets {
		if lookup(a.Name) != a {
			t.Errorf("lookup(%q) does not find it", a.Name)
		}
		if a.Add == nil {
			t.Errorf("%s has no ADD", a.Name)
		}
	}
	if lookup("loopback.exe") == nil {
		t.Error("the .exe suffix is not accepted")
	}
}

// TestReferenceReleaseCovered: every plugin of the reference release
// (containernetworking/plugins v1.9.1, Linux) is an applet, so "cnibox
// install" over a reference install leaves none of its binaries in use.
func TestReferenceReleaseCovered(t *testing.T) {
	release := strings.Fields("bandwidth bridge dhcp dummy firewall host-device host-local ipvlan loopback macvlan portmap ptp sbr static tap tuning vlan vrf")
	for _, name := range release {
		if lookup(name) == nil {
			t.Errorf("no applet %s", name)
		}
	}
}

func run(t *testing.T, stdin string, env []string, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestListVersionHelp(t *testing.T) {
	bin := testnet.Binary(t)
	out, _, code := run(t, "", nil, bin, "--list")
	if code != 0 {
		t.Fatalf("--list exit %d", code)
	}
	if got, want := strings.Fields(out), names(); strings.Join(got, " ") != strings.Join(want, " ") || !sort.StringsAreSorted(got) {
		t.Errorf("--list = %v, want %v", got, want)
	}
	out, _, code = run(t, "", nil, bin, "version")
	if code != 0 || !strings.Contains(out, "cnibox ") || !strings.Contains(out, strings.Join(cni.AllVersions, ", ")) {
		t.Errorf("version: exit %d: %q", code, out)
	}
	out, _, code = run(t, "", nil, bin, "--help")
	for _, w := range []string{"install --dir", "cni add", "--list", "loopback", "CNIBOX_LOG_LEVEL"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("--help (exit %d) does not mention %q", code, w)
		}
	}
	if _, _, code := run(t, "", nil, bin); code == 0 {
		t.Error("cnibox with no arguments exits 0")
	}
}

// TestVersionThroughEverySymlink is what podman does when it loads a
// network: VERSION of every plugin, which must list the config's version.
func TestVersionThroughEverySymlink(t *testing.T) {
	dir := testnet.BinDir(t)
	for _, name := range testnet.Applets(t) {
		a := lookup(name)
		for _, v := range cni.AllVersions {
			out, stderr, code := run(t, `{"cniVersion":"`+v+`"}`, []string{"CNI_COMMAND=VERSION"}, filepath.Join(dir, name))
			if code != 0 {
				t.Fatalf("%s VERSION: exit %d: %s %s", name, code, out, stderr)
			}
			var info struct {
				CNIVersion        string   `json:"cniVersion"`
				SupportedVersions []string `json:"supportedVersions"`
			}
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatalf("%s VERSION output %q: %v", name, out, err)
			}
			if strings.Join(info.SupportedVersions, ",") != strings.Join(a.SupportedVersions(), ",") || info.CNIVersion != cni.CurrentVersion {
				t.Errorf("%s VERSION = %+v", name, info)
			}
		}
	}
}

// TestUnknownApplet: a name cnibox does not implement is an error with a
// CNI error JSON, never an exit 0 with empty output (k3s's multicall does that).
func TestUnknownApplet(t *testing.T) {
	bin := testnet.Binary(t)
	dir := t.TempDir()
	link := filepath.Join(dir, "frobnicate")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{{link}, {bin, "frobnicate"}} {
		for _, cmd := range []string{"VERSION", "ADD", ""} {
			out, stderr, code := run(t, `{"cniVersion":"1.0.0","name":"n"}`, []string{"CNI_COMMAND=" + cmd}, argv[0], argv[1:]...)
			if code == 0 {
				t.Fatalf("%v (%s) exited 0", argv, cmd)
			}
			var e types.Error
			if err := json.Unmarshal([]byte(out), &e); err != nil {
				t.Fatalf("%v: stdout %q is not a CNI error: %v", argv, out, err)
			}
			if e.Code != 7 || !strings.Contains(e.Msg, `"frobnicate"`) || !strings.Contains(stderr, "frobnicate") {
				t.Errorf("%v: error %+v, stderr %q", argv, e, stderr)
			}
		}
	}
}

// TestBusyboxStyle: "cnibox APPLET" runs the applet.
func TestBusyboxStyle(t *testing.T) {
	out, _, code := run(t, "", []string{"CNI_COMMAND=VERSION"}, testnet.Binary(t), "loopback")
	if code != 0 || !strings.Contains(out, "supportedVersions") {
		t.Fatalf("cnibox loopback VERSION: exit %d %q", code, out)
	}
	_, stderr, code := run(t, "", nil, testnet.Binary(t), "loopback")
	if code != 0 || !strings.Contains(stderr, "CNI loopback plugin") {
		t.Fatalf("cnibox loopback without CNI_COMMAND: exit %d %q", code, stderr)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// checkInstalled checks dir holds the test binary as cnibox and every applet
// name as the given kind of entry, each answering VERSION.
func checkInstalled(t *testing.T, dir string, want install.Kind) {
	t.Helper()
	bin := filepath.Join(dir, "cnibox")
	wantBin, _ := os.ReadFile(testnet.Binary(t))
	got, err := os.ReadFile(bin)
	if err != nil || !bytes.Equal(got, wantBin) {
		t.Fatalf("%s is not the cnibox binary (%v)", bin, err)
	}
	for _, name := range names() {
		p := filepath.Join(dir, name)
		if k := install.Inspect(dir, name); k != want {
			t.Errorf("%s is %v, want %v", p, k, want)
		}
		if want == install.Hardlink && inode(t, p) != inode(t, bin) {
			t.Errorf("%s is not a hard link to cnibox", p)
		}
		if want == install.Symlink {
			if target, err := os.Readlink(p); err != nil || target != "cnibox" {
				t.Errorf("%s -> %q (%v), want a relative link to cnibox", p, target, err)
			}
		}
		out, _, code := run(t, "", []string{"CNI_COMMAND=VERSION"}, p)
		if code != 0 || !strings.Contains(out, "supportedVersions") {
			t.Errorf("%s VERSION: exit %d %q", p, code, out)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*cnibox-tmp*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func runInstall(t *testing.T, dir string, extra ...string) {
	t.Helper()
	out, stderr, code := run(t, "", nil, testnet.Binary(t), append([]string{"install", "--dir", dir}, extra...)...)
	if code != 0 {
		t.Fatalf("install: exit %d: %s %s", code, out, stderr)
	}
}

func TestInstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "opt", "cni", "bin")
	runInstall(t, dir)
	checkInstalled(t, dir, install.Script)
	runInstall(t, dir) // idempotent
	checkInstalled(t, dir, install.Script)
	runInstall(t, dir, "--symlink")
	checkInstalled(t, dir, install.Symlink)
	runInstall(t, dir) // back to entries
	checkInstalled(t, dir, install.Script)

	// The installed binary can reinstall itself (an upgrade in place).
	out, stderr, code := run(t, "", nil, filepath.Join(dir, "cnibox"), "install", "--dir", dir)
	if code != 0 {
		t.Fatalf("reinstall from the installed binary: %s %s", out, stderr)
	}
	checkInstalled(t, dir, install.Script)
}

func TestInstallHardlinks(t *testing.T) {
	dir := t.TempDir()
	runInstall(t, dir, "--hardlink")
	checkInstalled(t, dir, install.Hardlink)
	runInstall(t, dir, "--hardlink")
	checkInstalled(t, dir, install.Hardlink)
	runInstall(t, dir) // switch to entries
	checkInstalled(t, dir, install.Script)
}

// TestInstallOverReferencePlugins: the reference's separate binaries, and
// links pointing elsewhere, are replaced, never written through.
func TestInstallOverReferencePlugins(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("do not overwrite"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A reference-style directory: separate binaries, plus a plugin we do
	// not implement, plus links through which a naive cp would write.
	for _, name := range []string{"loopback", "sbr", "vrf", "win-overlay"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\necho reference "+name+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(victim, filepath.Join(dir, "cnibox")); err != nil {
		t.Fatal(err)
	}
	if ref := testnet.ReferenceDir() + "/loopback"; fileExists(ref) {
		data, _ := os.ReadFile(ref)
		os.WriteFile(filepath.Join(dir, "loopback"), data, 0o755)
	}
	runInstall(t, dir)
	checkInstalled(t, dir, install.Script)
	if data, _ := os.ReadFile(victim); string(data) != "do not overwrite" {
		t.Fatal("install wrote through an existing symlink")
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "win-overlay")); !strings.Contains(string(data), "reference win-overlay") {
		t.Error("install touched a plugin cnibox does not implement")
	}
	for _, name := range []string{"sbr", "vrf"} {
		if data, _ := os.ReadFile(filepath.Join(dir, name)); strings.Contains(string(data), "echo reference "+name) {
			t.Errorf("install left the reference's %s", name)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestInstallRefusesADirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "loopback"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(t, "", nil, testnet.Binary(t), "install", "--dir", dir)
	if code == 0 || !strings.Contains(stderr, "directory") {
		t.Errorf("install over a directory: exit %d %q", code, stderr)
	}
}

// TestHelpExitsZero: asking any command for help is a success, with the
// usage on stdout and no terminal escapes.
func TestHelpExitsZero(t *testing.T) {
	bin := testnet.Binary(t)
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"}, {"cni", "--help"}, {"cni", "-h"}, {"install", "--help"},
		{"uninstall", "--help"}, {"dhcp", "--help"}, {"dhcp", "daemon", "--help"}, {"version", "--help"},
	} {
		out, stderr, code := run(t, "", nil, bin, args...)
		if code != 0 || strings.TrimSpace(out) == "" || strings.Contains(out+stderr, "\x1b") {
			t.Errorf("cnibox %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, stderr)
		}
	}
}
