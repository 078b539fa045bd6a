package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// fakeApplet records what it was called with and returns a fixed result.
func fakeApplet() (*Applet, *[]string) {
	var calls []string
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		IPs:        []*current.IPConfig{{Address: net.IPNet{IP: net.IPv4(10, 0, 0, 2), Mask: net.CIDRMask(24, 32)}}},
	}
	a := &Applet{
		Name: "fake",
		Add: func(r *Request) (types.Result, error) {
			calls = append(calls, "ADD "+r.ContainerID+" "+r.Name)
			return res, nil
		},
		Del:   func(r *Request) error { calls = append(calls, "DEL"); return nil },
		Check: func(r *Request) error { calls = append(calls, "CHECK"); return nil },
	}
	return a, &calls
}

type invocation struct {
	env   map[string]string
	stdin string
}

func (i invocation) run(a *Applet) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	code = Run(a, func(k string) string { return i.env[k] }, strings.NewReader(i.stdin), &out, &errb)
	return out.String(), errb.String(), code
}

func addEnv(extra ...string) map[string]string {
	env := map[string]string{
		"CNI_COMMAND":     "ADD",
		"CNI_CONTAINERID": "c1",
		"CNI_NETNS":       "/run/netns/does-not-matter",
		"CNI_IFNAME":      "eth0",
		"CNI_PATH":        "/opt/cni/bin",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

func conf(version string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":"net1","type":"fake"}`, version)
}

func TestBadInputGetsTheRightCode(t *testing.T) {
	for _, tc := range []struct {
		name  string
		inv   invocation
		code  uint
		words []string
	}{
		{"unknown command", invocation{addEnv("CNI_COMMAND", "FROB"), conf("1.1.0")}, 4, []string{"unknown CNI_COMMAND: FROB"}},
		{"missing netns", invocation{addEnv("CNI_NETNS", ""), conf("1.1.0")}, 4, []string{"CNI_NETNS"}},
		{"missing container id and ifname", invocation{addEnv("CNI_CONTAINERID", "", "CNI_IFNAME", ""), conf("1.1.0")}, 4, []string{"CNI_CONTAINERID", "CNI_IFNAME"}},
		{"bad container id", invocation{addEnv("CNI_CONTAINERID", "../etc"), conf("1.1.0")}, 4, []string{"CNI_CONTAINERID"}},
		{"bad ifname", invocation{addEnv("CNI_IFNAME", "eth0/x"), conf("1.1.0")}, 4, []string{"CNI_IFNAME"}},
		{"long ifname", invocation{addEnv("CNI_IFNAME", "abcdefghijklmnop"), conf("1.1.0")}, 4, []string{"CNI_IFNAME"}},
		{"malformed json", invocation{addEnv(), `{"cniVersion":"1.1.0","name":`}, 6, []string{"malformed JSON"}},
		{"not json", invocation{addEnv(), `hello`}, 6, []string{"network configuration"}},
		{"missing name", invocation{addEnv(), `{"cniVersion":"1.1.0","type":"fake"}`}, 7, []string{`"name"`}},
		{"bad name", invocation{addEnv(), `{"cniVersion":"1.1.0","name":"a/b","type":"fake"}`}, 7, []string{`"name"`}},
		{"unsupported version", invocation{addEnv(), conf("9.9.9")}, 1, []string{"incompatible CNI versions"}},
		{"garbage version", invocation{addEnv(), conf("one")}, 6, []string{"cniVersion"}},
		{"check before 0.4.0", invocation{addEnv("CNI_COMMAND", "CHECK"), conf("0.3.1")}, 1, []string{"CHECK"}},
		{"gc before 1.1.0", invocation{map[string]string{"CNI_COMMAND": "GC"}, conf("1.0.0")}, 1, []string{"GC"}},
		{"status before 1.1.0", invocation{map[string]string{"CNI_COMMAND": "STATUS"}, conf("0.4.0")}, 1, []string{"STATUS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, calls := fakeApplet()
			stdout, stderr, code := tc.inv.run(a)
			if code == 0 {
				t.Fatalf("exit 0, want failure; stdout %q", stdout)
			}
			var e types.Error
			if err := json.Unmarshal([]byte(stdout), &e); err != nil {
				t.Fatalf("stdout is not error JSON: %v: %q", err, stdout)
			}
			if e.Code != tc.code {
				t.Errorf("code = %d, want %d (%s)", e.Code, tc.code, e.Error())
			}
			for _, w := range tc.words {
				if !strings.Contains(e.Error(), w) {
					t.Errorf("error %q does not mention %q", e.Error(), w)
				}
			}
			if len(*calls) != 0 {
				t.Errorf("applet was called: %v", *calls)
			}
			if !strings.Contains(stderr, "error") {
				t.Errorf("nothing logged to stderr: %q", stderr)
			}
		})
	}
}

func TestNoCommandPrintsAbout(t *testing.T) {
	a, _ := fakeApplet()
	stdout, stderr, code := invocation{map[string]string{}, ""}.run(a)
	if code != 0 || stdout != "" {
		t.Fatalf("code %d stdout %q", code, stdout)
	}
	if !strings.Contains(stderr, "CNI fake plugin") || !strings.Contains(stderr, "1.1.0") {
		t.Errorf("about text = %q", stderr)
	}
}

func TestVersion(t *testing.T) {
	a, _ := fakeApplet()
	a.Versions = VersionsFrom("0.4.0")
	stdout, _, code := invocation{map[string]string{"CNI_COMMAND": "VERSION"}, "not even json"}.run(a)
	if code != 0 {
		t.Fatalf("code %d: %s", code, stdout)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		t.Fatal(err)
	}
	if v.CNIVersion != CurrentVersion || strings.Join(v.SupportedVersions, ",") != "0.4.0,1.0.0,1.1.0" {
		t.Errorf("VERSION = %+v", v)
	}
}

// TestResultIsConvertedToTheConfigVersion: applets return a current result
// and the core prints it in the config's version.
func TestResultIsConvertedToTheConfigVersion(t *testing.T) {
	for _, v := range AllVersions {
		t.Run(v, func(t *testing.T) {
			a, calls := fakeApplet()
			stdout, _, code := invocation{addEnv(), conf(v)}.run(a)
			if code != 0 {
				t.Fatalf("code %d: %s", code, stdout)
			}
			if len(*calls) != 1 || (*calls)[0] != "ADD c1 net1" {
				t.Fatalf("calls = %v", *calls)
			}
			var out map[string]any
			if err := json.Unmarshal([]byte(stdout), &out); err != nil {
				t.Fatal(err)
			}
			switch {
			case !VersionAtLeast(v, "0.3.0"):
				ip4, _ := out["ip4"].(map[string]any)
				if ip4["ip"] != "10.0.0.2/24" {
					t.Errorf("0.x result = %s", stdout)
				}
			default:
				ips, _ := out["ips"].([]any)
				if len(ips) != 1 {
					t.Fatalf("result = %s", stdout)
				}
				_, hasVersion := ips[0].(map[string]any)["version"]
				if hasVersion == VersionAtLeast(v, "1.0.0") {
					t.Errorf("ips[0].version presence wrong for %s: %s", v, stdout)
				}
			}
			if v != "0.1.0" && out["cniVersion"] != v {
				t.Errorf("cniVersion = %v, want %s", out["cniVersion"], v)
			}
		})
	}
}

func TestMissingConfigVersionIs010(t *testing.T) {
	a, _ := fakeApplet()
	stdout, _, code := invocation{addEnv(), `{"name":"net1","type":"fake"}`}.run(a)
	if code != 0 || !strings.Contains(stdout, `"ip4"`) {
		t.Fatalf("code %d: %s", code, stdout)
	}
}

func TestErrorsKeepTheirCode(t *testing.T) {
	a, _ := fakeApplet()
	a.Del = func(r *Request) error {
		return fmt.Errorf("fake %q: release: %w", r.Name, TryAgain("lock is busy"))
	}
	stdout, _, code := invocation{addEnv("CNI_COMMAND", "DEL"), conf("1.0.0")}.run(a)
	var e types.Error
	if code == 0 || json.Unmarshal([]byte(stdout), &e) != nil {
		t.Fatalf("code %d stdout %q", code, stdout)
	}
	if e.Code != ErrTryAgain || !strings.Contains(e.Msg, `fake "net1": release: lock is busy`) {
		t.Errorf("error = %+v", e)
	}

	a.Del = func(*Request) error { return errors.New("plain") }
	stdout, _, _ = invocation{addEnv("CNI_COMMAND", "DEL"), conf("1.0.0")}.run(a)
	if json.Unmarshal([]byte(stdout), &e) != nil || e.Code != ErrInternal {
		t.Errorf("plain error → %s", stdout)
	}
}

func TestDelWithoutNetnsAndNilVerbs(t *testing.T) {
	a, calls := fakeApplet()
	env := addEnv("CNI_COMMAND", "DEL", "CNI_NETNS", "", "CNI_PATH", "")
	if _, _, code := (invocation{env, conf("1.1.0")}).run(a); code != 0 || len(*calls) != 1 {
		t.Fatalf("DEL without netns: code %d calls %v", code, *calls)
	}
	for _, cmd := range []string{"GC", "STATUS"} {
		if stdout, _, code := (invocation{map[string]string{"CNI_COMMAND": cmd}, conf("1.1.0")}).run(a); code != 0 {
			t.Errorf("%s with a nil func: code %d %s", cmd, code, stdout)
		}
	}
}

func TestOwnNetnsIsRefused(t *testing.T) {
	a, calls := fakeApplet()
	stdout, _, code := invocation{addEnv("CNI_NETNS", "/proc/self/ns/net"), conf("1.1.0")}.run(a)
	var e types.Error
	if code == 0 || json.Unmarshal([]byte(stdout), &e) != nil || e.Code != types.ErrInvalidNetNS {
		t.Fatalf("code %d stdout %s", code, stdout)
	}
	if len(*calls) != 0 {
		t.Fatal("applet ran on the plugin's own netns")
	}
	if _, _, code := (invocation{addEnv("CNI_NETNS", "/proc/self/ns/net", "CNI_NETNS_OVERRIDE", "1"), conf("1.1.0")}).run(a); code != 0 {
		t.Fatal("CNI_NETNS_OVERRIDE=1 did not allow it")
	}
}

func TestDecodeErrorNamesTheField(t *testing.T) {
	var c struct {
		NetConf
		MTU int `json:"mtu"`
	}
	req := &Request{Config: []byte(`{"cniVersion":"1.0.0","name":"n","mtu":"big"}`)}
	err := req.Decode(&c)
	e := AsError(err)
	if e.Code != ErrInvalidConfig || !strings.Contains(e.Msg, `"mtu"`) {
		t.Errorf("error = %v (code %d)", e, e.Code)
	}
}

func TestValidAttachments(t *testing.T) {
	for _, tc := range []struct {
		config string
		want   int
	}{
		{`{"name":"n"}`, 0},
		{`{"name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`, 1},
		{`{"name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]}`, 2},
	} {
		got, err := (&Request{Config: []byte(tc.config)}).ValidAttachments()
		if err != nil || len(got) != tc.want {
			t.Errorf("%s: %v %v", tc.config, got, err)
		}
	}
}

func TestPrevResultOfEveryVersion(t *testing.T) {
	for _, v := range AllVersions {
		res := &current.Result{
			CNIVersion: current.ImplementedSpecVersion,
			IPs:        []*current.IPConfig{{Address: net.IPNet{IP: net.IPv4(10, 0, 0, 2), Mask: net.CIDRMask(24, 32)}}},
		}
		raw, err := MarshalResultJSON(res, v)
		if err != nil {
			t.Fatal(err)
		}
		var c NetConf
		if err := json.Unmarshal([]byte(fmt.Sprintf(`{"cniVersion":%q,"name":"n","prevResult":%s}`, v, raw)), &c); err != nil {
			t.Fatal(err)
		}
		prev, err := PrevResult(&c)
		if err != nil || len(prev.IPs) != 1 || prev.IPs[0].Address.String() != "10.0.0.2/24" {
			t.Errorf("%s: prev %+v err %v", v, prev, err)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for _, ok := range []string{"0.1.0", "1.1.0", "1.0", "1", "10.20.30"} {
		if _, _, _, err := ParseVersion(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a.b.c", "1.2.3.4", "-1.0.0", "1..0"} {
		if _, _, _, err := ParseVersion(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if !VersionAtLeast("1.1.0", "0.4.0") || VersionAtLeast("0.3.1", "0.4.0") || !VersionAtLeast("0.4.0", "0.4.0") {
		t.Error("VersionAtLeast is wrong")
	}
}

// FuzzRun feeds arbitrary configs to every verb: the core must never panic,
// and every failure must be a well-formed CNI error on stdout.
func FuzzRun(f *testing.F) {
	f.Add("ADD", conf("1.1.0"))
	f.Add("DEL", `{"name":"n"}`)
	f.Add("CHECK", `{"cniVersion":"0.4.0","name":"n","prevResult":{"ips":[]}}`)
	f.Add("GC", `{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{}]}`)
	f.Add("STATUS", `{"cniVersion":"1.1","name":"x"}`)
	f.Add("VERSION", `[`)
	f.Fuzz(func(t *testing.T, cmd, stdin string) {
		a, _ := fakeApplet()
		stdout, _, code := invocation{addEnv("CNI_COMMAND", cmd), stdin}.run(a)
		if code != 0 {
			var e types.Error
			if err := json.Unmarshal([]byte(stdout), &e); err != nil || e.Code == 0 || e.Msg == "" {
				t.Fatalf("failure without a CNI error: %q", stdout)
			}
		}
	})
}

func TestDuplicateEnv(t *testing.T) {
	for _, c := range []struct {
		env  []string
		want string
	}{
		{[]string{"CNI_COMMAND=ADD", "CNI_IFNAME=eth0", "PATH=/bin"}, ""},
		{[]string{"CNI_IFNAME=eth0", "CNI_IFNAME=eth0"}, ""}, // same value twice is harmless
		{[]string{"CNI_IFNAME=eth0", "PATH=/bin", "CNI_IFNAME=../x"}, "CNI_IFNAME"},
		{[]string{"PATH=/bin", "PATH=/usr/bin"}, ""}, // not ours
	} {
		if got := DuplicateEnv(c.env); got != c.want {
			t.Errorf("DuplicateEnv(%q) = %q, want %q", c.env, got, c.want)
		}
	}
}

// TestDeadline: an applet still busy after CNIBOX_TIMEOUT answers "try
// again" (11) naming the limit and exits; one that finishes in time is
// not disturbed; "0" disables the limit.
func TestDeadline(t *testing.T) {
	hang := &Applet{Name: "hang", Add: func(*Request) (types.Result, error) { select {} }}
	env := func(timeout string) Env {
		return func(k string) string {
			return map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNIBOX_TIMEOUT": timeout}[k]
		}
	}
	var stdout, stderr strings.Builder
	exited := make(chan int, 1)
	go runWithDeadline(hang, env("200ms"), strings.NewReader(conf("1.0.0")), &stdout, &stderr, func(code int) { exited <- code; select {} })
	select {
	case code := <-exited:
		if code != 1 {
			t.Errorf("exit code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a hung applet was not stopped by CNIBOX_TIMEOUT=200ms")
	}
	var e types.Error
	if err := json.Unmarshal([]byte(stdout.String()), &e); err != nil || e.Code != ErrTryAgain || !strings.Contains(e.Msg, "CNIBOX_TIMEOUT") || !strings.Contains(e.Msg, "200ms") {
		t.Errorf("stdout %q (%v), want code 11 naming CNIBOX_TIMEOUT and the limit", stdout.String(), err)
	}

	a, _ := fakeApplet()
	var out strings.Builder
	if code := runWithDeadline(a, env("1m"), strings.NewReader(conf("1.0.0")), &out, io.Discard, func(int) { t.Error("exit called") }); code != 0 {
		t.Errorf("a quick ADD under a deadline: code %d: %s", code, out.String())
	}
	for in, want := range map[string]time.Duration{"": DefaultTimeout, "0": 0, "30s": 30 * time.Second, "junk": DefaultTimeout, "-1s": DefaultTimeout} {
		if got := invocationTimeout(func(string) string { return in }); got != want {
			t.Errorf("CNIBOX_TIMEOUT=%q: %v, want %v", in, got, want)
		}
	}
}

// TestPrevResultWithoutVersion: a prevResult without a cniVersion of its
// own (the reference's tuning, portmap and bandwidth tests send one; so do
// chaining plugins that build it by hand) is read at the config's version,
// as libcni's ParsePrevResult does; one with its own version (any case of
// the key) keeps it.
func TestPrevResultWithoutVersion(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{`{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"10.0.0.2/24"}]}}`, "10.0.0.2/24"},
		{`{"cniVersion":"0.4.0","name":"n","prevResult":{"cniVersion":"","ips":[{"version":"4","address":"10.0.0.3/24"}]}}`, "10.0.0.3/24"},
		{`{"cniVersion":"0.4.0","name":"n","prevResult":{"CNIVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.4/24"}]}}`, "10.0.0.4/24"},
	} {
		var c NetConf
		if err := json.Unmarshal([]byte(tc.conf), &c); err != nil {
			t.Fatal(err)
		}
		prev, err := PrevResult(&c)
		if err != nil || len(prev.IPs) != 1 || prev.IPs[0].Address.String() != tc.want {
			t.Errorf("%s: prev %+v err %v", tc.conf, prev, err)
		}
		if _, ok := c.RawPrevResult["cniVersion"]; ok && c.RawPrevResult["cniVersion"] != "" {
			t.Errorf("%s: PrevResult changed the request's prevResult", tc.conf)
		}
	}
}

// TestInfoLine: at "info" a successful ADD, DEL and GC each log exactly one
// line naming the verb, network, interface and what was done (the result's
// interfaces and addresses, the applet's notes); at the default "warn"
// nothing is logged.
func TestInfoLine(t *testing.T) {
	zero := 0
	a := &Applet{
		Name: "fake",
		Add: func(r *Request) (types.Result, error) {
			r.Log.Note("reserved 10.0.0.2")
			return &current.Result{
				CNIVersion: current.ImplementedSpecVersion,
				Interfaces: []*current.Interface{{Name: "eth0", Mac: "aa:bb:cc:dd:ee:ff", Sandbox: "/run/netns/p"}, {Name: "veth1234", Mac: "02:00:00:00:00:01"}},
				IPs:        []*current.IPConfig{{Interface: &zero, Address: net.IPNet{IP: net.IPv4(10, 0, 0, 2), Mask: net.CIDRMask(24, 32)}}},
			}, nil
		},
		Del: func(r *Request) error { r.Log.Note("released 10.0.0.2"); return nil },
		GC:  func(r *Request) error { return nil },
	}
	conf := `{"cniVersion":"1.1.0","name":"net1","type":"fake"}`
	for _, tc := range []struct {
		verb, level string
		want        []string
	}{
		{"ADD", "info", []string{"info fake[", "c1: ADD net1 eth0 done in ", "pod eth0 aa:bb:cc:dd:ee:ff 10.0.0.2/24", "host veth1234 02:00:00:00:00:01", "reserved 10.0.0.2"}},
		{"DEL", "info", []string{"DEL net1 eth0 done in ", ": released 10.0.0.2"}},
		{"GC", "info", []string{"GC net1 done in ", ": nothing to do"}},
		{"ADD", "", nil},
		{"DEL", "warn", nil},
	} {
		env := addEnv("CNI_COMMAND", tc.verb, "CNIBOX_LOG_LEVEL", tc.level)
		if tc.verb == "GC" {
			delete(env, "CNI_CONTAINERID")
			delete(env, "CNI_IFNAME")
		}
		t.Setenv("CNIBOX_LOG_LEVEL", tc.level)
		_, stderr, code := invocation{env, conf}.run(a)
		if code != 0 {
			t.Fatalf("%s: exit %d %s", tc.verb, code, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if tc.want == nil {
			if stderr != "" {
				t.Errorf("%s at %q logged %q", tc.verb, tc.level, stderr)
			}
			continue
		}
		if len(lines) != 1 {
			t.Errorf("%s at info logged %d lines: %q", tc.verb, len(lines), stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s line %q lacks %q", tc.verb, stderr, w)
			}
		}
	}
}

// TestCheckPrevResult: CHECK without prevResult is the config error (7)
// naming it; with one (a 0.4.0 result, as libcni caches it), the result.
func TestCheckPrevResult(t *testing.T) {
	var none NetConf
	if _, err := CheckPrevResult(&none); !isCode(err, types.ErrInvalidNetworkConfig) || !strings.Contains(err.Error(), "prevResult") {
		t.Errorf("no prevResult: %v, want code 7 naming prevResult", err)
	}
	var c NetConf
	if err := json.Unmarshal([]byte(`{"cniVersion":"0.4.0","name":"n","type":"bridge","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24"}]}}`), &c); err != nil {
		t.Fatal(err)
	}
	prev, err := CheckPrevResult(&c)
	if err != nil || len(prev.IPs) != 1 || prev.IPs[0].Address.String() != "10.1.0.2/24" {
		t.Errorf("prevResult: %+v, %v", prev, err)
	}
}

func isCode(err error, code uint) bool {
	var e *types.Error
	return errors.As(err, &e) && e.Code == code
}
