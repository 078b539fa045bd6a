package loopback_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

func conflist(version string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":"lo-%s","plugins":[{"type":"loopback"}]}`,
		version, strings.ReplaceAll(version, ".", ""))
}

func loUp(t *testing.T, pod *testnet.NS) bool {
	t.Helper()
	out := pod.MustRun("ip", "-o", "link", "show", "lo")
	return strings.Contains(out, "<LOOPBACK,UP")
}

// TestLibcni drives loopback the way containerd does, at every version.
func TestLibcni(t *testing.T) {
	r := testnet.NewRuntime(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		list := r.Conflist(conflist(v))
		pod := r.Pod(t)
		pod.MustRun("ip", "link", "set", "lo", "down")
		a := r.Attach(pod, "lo")
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if !loUp(t, pod) {
			t.Fatal("lo is not up after ADD")
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatalf("convert result: %v", err)
		}
		if got := cur.IPs[0].Address.String(); got != "127.0.0.1/8" {
			t.Errorf("result address = %s, want 127.0.0.1/8", got)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "lo" || cur.Interfaces[0].Sandbox != pod.Path {
				t.Errorf("result interfaces = %+v", cur.Interfaces)
			}
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(list, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			pod.MustRun("ip", "link", "set", "lo", "down")
			if err := r.Check(list, a); err == nil {
				t.Fatal("CHECK passed with lo down")
			}
		} else if err := r.Check(list, a); err == nil {
			t.Fatal("CHECK accepted a config older than 0.4.0")
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if loUp(t, pod) {
			t.Error("lo is still up after DEL")
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(list); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			if err := r.GC(list); err != nil {
				t.Fatalf("GC: %v", err)
			}
		}
	})
}

// TestCnitool drives loopback through the reference cnitool.
func TestCnitool(t *testing.T) {
	r := testnet.NewRuntime(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		list := r.Conflist(conflist(v))
		pod := r.Pod(t)
		pod.MustRun("ip", "link", "set", "lo", "down")
		out, err := r.Cnitool("add", list.Name, pod, "CNI_IFNAME=lo")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "127.0.0.1/8") || !loUp(t, pod) {
			t.Fatalf("ADD: lo not up or result wrong: %s", out)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := r.Cnitool("check", list.Name, pod, "CNI_IFNAME=lo"); err != nil {
				t.Fatal(err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if _, err := r.Cnitool("status", list.Name, pod); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Cnitool("del", list.Name, pod, "CNI_IFNAME=lo"); err != nil {
			t.Fatal(err)
		}
		if loUp(t, pod) {
			t.Error("lo still up after DEL")
		}
	})
}

// TestDelWithoutNetns: a DEL whose netns is gone, or was never given,
// succeeds.
func TestDelWithoutNetns(t *testing.T) {
	r := testnet.NewRuntime(t)
	list := r.Conflist(conflist("1.1.0"))
	pod := r.Pod(t)
	a := r.Attach(pod, "lo")
	if _, err := r.Add(list, a); err != nil {
		t.Fatal(err)
	}
	pod.Delete()
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	conf := []byte(`{"cniVersion":"1.1.0","name":"x","type":"loopback"}`)
	out, _, code := r.Exec("loopback", []string{"CNI_COMMAND=DEL", "CNI_CONTAINERID=c1", "CNI_IFNAME=lo", "CNI_NETNS=", "CNI_PATH=" + r.BinDir}, conf)
	if code != 0 {
		t.Fatalf("DEL without CNI_NETNS: exit %d: %s", code, out)
	}
}

// TestAddMissingNetns: ADD into a netns that does not exist is "unknown
// container" (code 3) and creates nothing.
func TestAddMissingNetns(t *testing.T) {
	r := testnet.NewRuntime(t)
	conf := []byte(`{"cniVersion":"1.1.0","name":"x","type":"loopback"}`)
	out, _, code := r.Exec("loopback", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=lo",
		"CNI_NETNS=/run/netns/cnibox-does-not-exist", "CNI_PATH=" + r.BinDir}, conf)
	if code == 0 {
		t.Fatalf("ADD into a missing netns succeeded: %s", out)
	}
	if e := testnet.ParseError(t, out); e.Code != types.ErrUnknownContainer {
		t.Fatalf("code = %d (%s), want 3", e.Code, e.Msg)
	}
}
