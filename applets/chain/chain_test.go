package chain

import (
	"encoding/json"
	"errors"
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

// seen is what one inner plugin saw.
type seen struct {
	plugin, cmd string
	conf        map[string]any
}

// fakes installs inner applets a, b and c that record their calls. a's
// ADD makes a result with one address; b and c pass prevResult on, and
// fail[name] makes that one fail.
func fakes(t *testing.T, fail map[string]bool) *[]seen {
	t.Helper()
	var calls []seen
	mk := func(name string) *cni.Applet {
		record := func(r *cni.Request) error {
			var m map[string]any
			if err := json.Unmarshal(r.Config, &m); err != nil {
				t.Fatalf("%s got a config that is not JSON: %s", name, r.Config)
			}
			calls = append(calls, seen{name, r.Command, m})
			if fail[name] {
				return cni.Errorf(types.ErrTryAgainLater, "%s fails", name)
			}
			return nil
		}
		return &cni.Applet{
			Name: name,
			Add: func(r *cni.Request) (types.Result, error) {
				if err := record(r); err != nil {
					return nil, err
				}
				var n cni.NetConf
				if err := r.Decode(&n); err != nil {
					return nil, err
				}
				prev, err := cni.PrevResult(&n)
				if err != nil {
					return nil, err
				}
				if prev == nil {
					_, ipn, _ := net.ParseCIDR("10.1.2.3/24")
					ipn.IP = net.ParseIP("10.1.2.3").To4()
					prev = &current.Result{CNIVersion: current.ImplementedSpecVersion, IPs: []*current.IPConfig{{Address: *ipn}}}
				}
				prev.Interfaces = append(prev.Interfaces, &current.Interface{Name: name})
				return prev, nil
			},
			Del: record, Check: record, GC: record, Status: record,
		}
	}
	applets := map[string]*cni.Applet{"a": mk("a"), "b": mk("b"), "c": mk("c")}
	old := cni.Lookup
	cni.Lookup = func(name string) *cni.Applet { return applets[name] }
	t.Cleanup(func() { cni.Lookup = old })
	return &calls
}

const outer = `{"cniVersion":"0.4.0","name":"net","type":"cnibox",
	"capabilities":{"portMappings":true,"bandwidth":true},
	"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"bandwidth":{"ingressRate":1}},
	"plugins":[{"type":"a","x":1},{"type":"b","capabilities":{"portMappings":true}},{"type":"c","capabilities":{"bandwidth":true}}]}`

func request(cmd, config string) *cni.Request {
	var head struct {
		V string `json:"cniVersion"`
	}
	json.Unmarshal([]byte(config), &head)
	return &cni.Request{Command: cmd, ContainerID: "ctr", IfName: "eth0", Netns: "/proc/self/ns/net",
		Config: []byte(config), Version: head.V, Name: "net"}
}

func TestAddChainsLikeLibcni(t *testing.T) {
	calls := fakes(t, nil)
	res, err := Add(request(cni.CmdAdd, outer))
	if err != nil {
		t.Fatal(err)
	}
	if len(*calls) != 3 {
		t.Fatalf("calls %v, want a, b, c", *calls)
	}
	for i, c := range *calls {
		if want := string(rune('a' + i)); c.plugin != want || c.cmd != cni.CmdAdd {
			t.Errorf("call %d: %s %s, want %s ADD", i, c.plugin, c.cmd, want)
		}
		if c.conf["name"] != "net" || c.conf["cniVersion"] != "0.4.0" {
			t.Errorf("%s: name %v cniVersion %v, want the network's", c.plugin, c.conf["name"], c.conf["cniVersion"])
		}
	}
	a, b, c := (*calls)[0].conf, (*calls)[1].conf, (*calls)[2].conf
	if _, ok := a["prevResult"]; ok {
		t.Errorf("the first plugin got a prevResult: %v", a["prevResult"])
	}
	if _, ok := a["runtimeConfig"]; ok {
		t.Errorf("a declares no capability but got runtimeConfig %v", a["runtimeConfig"])
	}
	if a["x"] != float64(1) {
		t.Errorf("a's own field x lost: %v", a)
	}
	rc, _ := b["runtimeConfig"].(map[string]any)
	if _, ok := rc["portMappings"]; !ok || len(rc) != 1 {
		t.Errorf("b's runtimeConfig %v, want portMappings alone", rc)
	}
	rc, _ = c["runtimeConfig"].(map[string]any)
	if _, ok := rc["bandwidth"]; !ok || len(rc) != 1 {
		t.Errorf("c's runtimeConfig %v, want bandwidth alone", rc)
	}
	// b's prevResult is a's result as a 0.4.0 plugin prints it.
	prev, _ := json.Marshal(b["prevResult"])
	if !strings.Contains(string(prev), `"cniVersion":"0.4.0"`) || !strings.Contains(string(prev), `"version":"4"`) {
		t.Errorf("b's prevResult is not a's result at 0.4.0: %s", prev)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range cur.Interfaces {
		names = append(names, i.Name)
	}
	if strings.Join(names, ",") != "a,b,c" || len(cur.IPs) != 1 {
		t.Errorf("chain result: interfaces %v, %d IPs; want a,b,c and the one address", names, len(cur.IPs))
	}
}

func TestAddStopsAtFirstError(t *testing.T) {
	calls := fakes(t, map[string]bool{"b": true})
	_, err := Add(request(cni.CmdAdd, outer))
	if e := cni.AsError(err); e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, `plugin type="b"`) {
		t.Errorf("error %v, want b's code 11 and its name", err)
	}
	if len(*calls) != 2 {
		t.Errorf("c ran after b failed: %v", *calls)
	}
}

func TestDelReverseWithCachedResult(t *testing.T) {
	calls := fakes(t, nil)
	conf := strings.Replace(outer, `"plugins":`, `"prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.9.9.9/24"}]},"plugins":`, 1)
	if err := Del(request(cni.CmdDel, conf)); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, c := range *calls {
		order = append(order, c.plugin)
		prev, _ := json.Marshal(c.conf["prevResult"])
		if !strings.Contains(string(prev), "10.9.9.9") {
			t.Errorf("%s DEL got prevResult %s, want the cached result", c.plugin, prev)
		}
	}
	if strings.Join(order, ",") != "c,b,a" {
		t.Errorf("DEL order %v, want c,b,a", order)
	}
	*calls = nil
	if err := Check(request(cni.CmdCheck, conf)); err != nil {
		t.Fatal(err)
	}
	if len(*calls) != 3 || (*calls)[0].plugin != "a" {
		t.Errorf("CHECK calls %v, want a, b, c", *calls)
	}
}

func TestGCRunsEveryPlugin(t *testing.T) {
	calls := fakes(t, map[string]bool{"a": true, "c": true})
	conf := strings.Replace(outer, `"plugins":`, `"cni.dev/valid-attachments":[{"containerID":"k","ifname":"eth0"}],"plugins":`, 1)
	err := GC(request(cni.CmdGC, strings.Replace(conf, "0.4.0", "1.1.0", 1)))
	if err == nil || !strings.Contains(err.Error(), `"a"`) || !strings.Contains(err.Error(), `"c"`) {
		t.Errorf("GC error %v, want a's and c's", err)
	}
	if len(*calls) != 3 {
		t.Fatalf("GC calls %v, want all three", *calls)
	}
	for _, c := range *calls {
		if v, _ := json.Marshal(c.conf["cni.dev/valid-attachments"]); !strings.Contains(string(v), `"k"`) {
			t.Errorf("%s GC got valid attachments %s", c.plugin, v)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	fakes(t, nil)
	for name, conf := range map[string]string{
		"no plugins":         `{"cniVersion":"1.0.0","name":"net","type":"cnibox"}`,
		"missing capability": `{"cniVersion":"1.0.0","name":"net","type":"cnibox","plugins":[{"type":"b","capabilities":{"portMappings":true}}]}`,
		"nested":             `{"cniVersion":"1.0.0","name":"net","type":"cnibox","plugins":[{"type":"cnibox","plugins":[{"type":"a"}]}]}`,
		"no type":            `{"cniVersion":"1.0.0","name":"net","type":"cnibox","plugins":[{"x":1}]}`,
		"path in type":       `{"cniVersion":"1.0.0","name":"net","type":"cnibox","plugins":[{"type":"../a"}]}`,
	} {
		_, err := Add(request(cni.CmdAdd, conf))
		var e *types.Error
		if !errors.As(err, &e) || (e.Code != types.ErrInvalidNetworkConfig) {
			t.Errorf("%s: error %v, want a config error (%d)", name, err, types.ErrInvalidNetworkConfig)
		}
	}
}

// An installed directory holds applet entries ("#!DIR/cnibox" scripts),
// not the binary's inode: the inner plugins found there must run in this
// process, as through a symlink, and a foreign file of the same name must
// be exec'd.
func TestResolveRunsInstalledEntriesInProcess(t *testing.T) {
	fakes(t, nil)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(self, filepath.Join(dir, install.BinaryName)); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("a", install.Entry(filepath.Join(dir, install.BinaryName), "a"))
	if err := os.Symlink(filepath.Join(dir, install.BinaryName), filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	write("c", []byte("#!/bin/sh\nexit 0\n"))
	req := request(cni.CmdAdd, outer)
	req.Path = dir
	for plugin, inProc := range map[string]bool{"a": true, "b": true, "c": false} {
		a, path, err := resolve(req, plugin)
		if err != nil {
			t.Fatalf("%s: %v", plugin, err)
		}
		if got := a != nil; got != inProc || path != filepath.Join(dir, plugin) {
			t.Errorf("%s: in process %v (path %q), want %v", plugin, got, path, inProc)
		}
	}
}
