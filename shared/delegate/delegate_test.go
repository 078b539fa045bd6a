package delegate

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/install"
)

const script = `#!/bin/sh
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $(cat)" >> "$(dirname "$0")/calls"
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3/24","gateway":"10.1.2.1"}]}'
fi
`

// fakeIPAM installs an executable named fake-ipam in a new directory.
func fakeIPAM(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "fake-ipam"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// selfDir holds a link named fake-ipam to this very test binary, which is
// what an installed cnibox looks like to the delegation code.
func selfDir(t *testing.T) string {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(dir, "fake-ipam")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// entryDir holds an applet entry named fake-ipam (what "cnibox install"
// makes by default) whose interpreter is this very test binary.
func entryDir(t *testing.T) string {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The binary's name is cnibox, as installed.
	bin := filepath.Join(t.TempDir(), "cnibox")
	if err := os.Symlink(exe, bin); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fake-ipam"), install.Entry(bin, "fake-ipam"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestInProcessThroughAnAppletEntry(t *testing.T) {
	var calls []string
	withApplet(t, inProcessApplet(&calls))
	res, err := Add(request(entryDir(t)), "fake-ipam")
	if err != nil {
		t.Fatal(err)
	}
	if res.IPs[0].Address.String() != "10.9.9.9/24" || len(calls) != 1 {
		t.Fatalf("the entry's applet did not run in process: result %+v, calls %v", res, calls)
	}
}

func request(path string) *cni.Request {
	return &cni.Request{
		Command: cni.CmdAdd, ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x", Path: path,
		Config:  []byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"fake-ipam"}}`),
		Version: "1.0.0", Name: "n",
	}
}

func withApplet(t *testing.T, a *cni.Applet) {
	old := cni.Lookup
	cni.Lookup = func(name string) *cni.Applet {
		if name == a.Name {
			return a
		}
		return nil
	}
	t.Cleanup(func() { cni.Lookup = old })
}

func inProcessApplet(calls *[]string) *cni.Applet {
	return &cni.Applet{
		Name: "fake-ipam",
		Add: func(r *cni.Request) (types.Result, error) {
			*calls = append(*calls, r.Command+" "+r.ContainerID)
			return &current.Result{CNIVersion: "1.0.0", IPs: []*current.IPConfig{{
				Address: net.IPNet{IP: net.IPv4(10, 9, 9, 9), Mask: net.CIDRMask(24, 32)}}}}, nil
		},
		Del: func(r *cni.Request) error { *calls = append(*calls, r.Command+" "+r.ContainerID); return nil },
	}
}

func TestExec(t *testing.T) {
	dir := fakeIPAM(t)
	res, err := Add(request(dir), "fake-ipam")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.1.2.3/24" {
		t.Fatalf("result %+v", res)
	}
	if err := Del(request(dir), "fake-ipam"); err != nil {
		t.Fatal(err)
	}
	calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
	lines := strings.Split(strings.TrimSpace(string(calls)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ADD c1 eth0 {") || !strings.HasPrefix(lines[1], "DEL c1 eth0 {") ||
		!strings.Contains(lines[0], `"ipam":{"type":"fake-ipam"}`) {
		t.Errorf("delegate saw %q", calls)
	}
}

func TestInProcessWhenThePluginIsThisBinary(t *testing.T) {
	var calls []string
	withApplet(t, inProcessApplet(&calls))
	res, err := Add(request(selfDir(t)), "fake-ipam")
	if err != nil {
		t.Fatal(err)
	}
	if res.IPs[0].Address.String() != "10.9.9.9/24" || len(calls) != 1 || calls[0] != "ADD c1" {
		t.Fatalf("result %+v, calls %v", res, calls)
	}
	if err := Del(request(selfDir(t)), "fake-ipam"); err != nil || len(calls) != 2 || calls[1] != "DEL c1" {
		t.Fatalf("DEL: %v, calls %v", err, calls)
	}
	// Verbs the applet leaves nil succeed, as they would through exec.
	gc := request(selfDir(t))
	gc.Command, gc.Version = cni.CmdGC, "1.1.0"
	if err := GC(gc, "fake-ipam"); err != nil {
		t.Fatal(err)
	}
}

// TestUsersOwnPluginWins: a plugin of the same name earlier in CNI_PATH is
// the one that runs, as the spec's lookup says.
func TestUsersOwnPluginWins(t *testing.T) {
	var calls []string
	withApplet(t, inProcessApplet(&calls))
	user := fakeIPAM(t)
	res, err := Add(request(user+":"+selfDir(t)), "fake-ipam")
	if err != nil {
		t.Fatal(err)
	}
	if res.IPs[0].Address.String() != "10.1.2.3/24" || len(calls) != 0 {
		t.Fatalf("the in-process applet ran instead of the user's plugin: %+v %v", res, calls)
	}
}

func TestInProcessAppliesVersionRules(t *testing.T) {
	var calls []string
	a := inProcessApplet(&calls)
	a.Versions = []string{"1.1.0"}
	withApplet(t, a)
	_, err := Add(request(selfDir(t)), "fake-ipam")
	if e := cni.AsError(err); e.Code != cni.ErrIncompatibleVersion {
		t.Fatalf("err = %v", err)
	}
}

func TestFindErrors(t *testing.T) {
	for _, tc := range []struct {
		plugin, path string
		code         uint
	}{
		{"../../bin/reboot", "/opt/cni/bin", cni.ErrInvalidConfig},
		{"", "/opt/cni/bin", cni.ErrInvalidConfig},
		{"host-local", "", cni.ErrInvalidEnv},
		{"no-such-plugin", t.TempDir(), cni.ErrInvalidConfig},
	} {
		_, err := Find(request(tc.path), tc.plugin)
		if e := cni.AsError(err); err == nil || e.Code != tc.code {
			t.Errorf("Find(%q, %q) = %v, want code %d", tc.plugin, tc.path, err, tc.code)
		}
	}
}
