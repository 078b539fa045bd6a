package static_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

func conflist(v, name, ipam string, extra ...string) string {
	plugin := fmt.Sprintf(`{"type":"static","ipam":{"type":"static",%s}`, ipam)
	for _, e := range extra {
		plugin += "," + e
	}
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s}]}`, v, name, plugin)
}

func ips(t *testing.T, res types.Result) []string {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ip := range cur.IPs {
		s := ip.Address.String()
		if ip.Gateway != nil {
			s += " gw " + ip.Gateway.String()
		}
		out = append(out, s)
	}
	return out
}

const ipam = `"addresses":[{"address":"10.80.0.5/24","gateway":"10.80.0.1"},{"address":"fd00:80::5/64"}],
	"routes":[{"dst":"0.0.0.0/0","gw":"10.80.0.1"}],
	"dns":{"nameservers":["10.80.0.53"],"domain":"example.org","search":["example.org"],"options":["ndots:1"]}`

// TestLibcni: ADD returns addresses, routes and DNS at every version;
// CHECK passes against the cached result and fails when the config no
// longer matches it; DEL succeeds, twice.
func TestLibcni(t *testing.T) {
	r := testnet.NewRuntime(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		name := "st-" + strings.ReplaceAll(v, ".", "")
		list := r.Conflist(conflist(v, name, ipam))
		a := r.Attach(r.Pod(t), "eth0")
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if got, want := ips(t, res), []string{"10.80.0.5/24 gw 10.80.0.1", "fd00:80::5/64"}; !slices.Equal(got, want) {
			t.Fatalf("ips = %q, want %q", got, want)
		}
		cur, _ := current.NewResultFromResult(res)
		if len(cur.Routes) != 1 || cur.Routes[0].GW.String() != "10.80.0.1" {
			t.Errorf("routes = %v", cur.Routes)
		}
		if !slices.Equal(cur.DNS.Nameservers, []string{"10.80.0.53"}) || cur.DNS.Domain != "example.org" {
			t.Errorf("dns = %+v", cur.DNS)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(list, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			changed := r.Conflist(conflist(v, name, strings.Replace(ipam, `"gateway":"10.80.0.1"`, `"gateway":"10.80.0.254"`, 1)))
			if err := r.Check(changed, a); err == nil || !strings.Contains(err.Error(), "gateway") {
				t.Fatalf("CHECK with another gateway: %v", err)
			}
			changed = r.Conflist(conflist(v, name, strings.Replace(ipam, "10.80.0.5/24", "10.80.0.6/24", 1)))
			if err := r.Check(changed, a); err == nil || !strings.Contains(err.Error(), "10.80.0.6") {
				t.Fatalf("CHECK with another address: %v", err)
			}
			list = r.Conflist(conflist(v, name, ipam))
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("DEL: %v", err)
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

// TestCnitool: CNI_ARGS IP= appends, GATEWAY= sets the gateways of those
// addresses, and the ips capability replaces the configured addresses, at
// every version.
func TestCnitool(t *testing.T) {
	r := testnet.NewRuntime(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		name := "stc-" + strings.ReplaceAll(v, ".", "")
		r.Conflist(conflist(v, name, `"addresses":[{"address":"10.81.0.5/24"}]`, `"capabilities":{"ips":true}`))
		pod := r.Pod(t)
		out, err := r.Cnitool("add", name, pod, "CNI_IFNAME=eth0", "CNI_ARGS=IP=fd00:81::7/64;GATEWAY=10.81.0.1,fd00:81::1")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"10.81.0.5/24", "fd00:81::7/64", "fd00:81::1"} {
			if !strings.Contains(out, want) {
				t.Fatalf("ADD result lacks %s: %s", want, out)
			}
		}
		if strings.Contains(out, `"10.81.0.1"`) {
			// As in the reference: GATEWAY= goes to the IP= addresses only.
			t.Fatalf("GATEWAY= applied to a configured address: %s", out)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := r.Cnitool("check", name, pod, "CNI_IFNAME=eth0", "CNI_ARGS=IP=fd00:81::7/64;GATEWAY=10.81.0.1,fd00:81::1"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Cnitool("del", name, pod, "CNI_IFNAME=eth0"); err != nil {
			t.Fatal(err)
		}
		pod2 := r.Pod(t)
		out, err = r.Cnitool("add", name, pod2, "CNI_IFNAME=eth0", `CAP_ARGS={"ips":["10.81.0.99/25"]}`)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "10.81.0.99/25") || strings.Contains(out, "10.81.0.5") {
			t.Fatalf("the ips capability did not replace the addresses: %s", out)
		}
		if _, err := r.Cnitool("del", name, pod2, "CNI_IFNAME=eth0"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestPrecedence: runtimeConfig.ips beats args.cni.ips, which beats
// ipam.addresses with CNI_ARGS IP= appended (as in the reference, IP= is
// dropped with the addresses it was appended to); GATEWAY= goes to the
// IP= addresses.
func TestPrecedence(t *testing.T) {
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	run := func(extra, args string) string {
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"p","type":"static","ipam":{"type":"static","addresses":[{"address":"10.82.0.1/24"}]}%s}`, extra)
		out, _, code := r.Exec("static", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir, "CNI_ARGS=" + args}, []byte(conf))
		if code != 0 {
			t.Fatalf("ADD: %s", out)
		}
		return string(out)
	}
	if out := run(`,"args":{"cni":{"ips":["10.82.0.2/24"]}}`, ""); !strings.Contains(out, "10.82.0.2/24") || strings.Contains(out, "10.82.0.1/") {
		t.Errorf("args.cni.ips did not replace addresses: %s", out)
	}
	if out := run(`,"args":{"cni":{"ips":["10.82.0.2/24"]}},"runtimeConfig":{"ips":["10.82.0.3/24"]}`, "IP=10.82.0.4/24"); !strings.Contains(out, "10.82.0.3/24") || strings.Contains(out, "10.82.0.2/") || strings.Contains(out, "10.82.0.4/24") {
		t.Errorf("runtimeConfig.ips did not replace everything, CNI_ARGS IP included: %s", out)
	}
	if out := run(``, "IP=10.82.0.4/24;GATEWAY=10.82.0.254"); !strings.Contains(out, "10.82.0.1/24") || !strings.Contains(out, "10.82.0.4/24") || strings.Count(out, "10.82.0.254") != 1 {
		t.Errorf("CNI_ARGS IP not appended to ipam.addresses, or GATEWAY not applied to it alone: %s", out)
	}
}

// TestReferencePrecedence: the addresses static returns, with their
// gateways, are the reference's on the reference's own precedence test
// (runtimeConfig.ips replaces everything, CNI_ARGS IP= and GATEWAY=
// included, which the reference applies before the replacement) and its
// variations: GATEWAY= goes to the IP= addresses (and to entries with an
// "Address" object, which then is the address), not to plain
// ipam.addresses; a bad ipam.addresses entry that runtimeConfig.ips
// replaces is no error in either.
func TestReferencePrecedence(t *testing.T) {
	ref := testnet.RequireReference(t, "static")
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	const rc = `,"runtimeConfig":{"ips":["10.10.0.1/24","3ffe:ffff:0:01ff::1/64"]}`
	const ac = `,"args":{"cni":{"ips":["10.10.0.2/24","3ffe:ffff:0:01ff::2/64"]}}`
	const cniArgs = "IgnoreUnknown=1;IP=10.10.0.3/24,11.11.0.3/24;GATEWAY=10.10.0.254"
	addrs := `"addresses":[{"address":"10.10.0.9/24"}]`
	for _, c := range []struct{ name, addresses, extra, args string }{
		{"runtimeConfig, args and CNI_ARGS", addrs, rc + ac, cniArgs},
		{"args and CNI_ARGS", addrs, ac, cniArgs},
		{"addresses and CNI_ARGS", addrs, ``, cniArgs},
		{"runtimeConfig over a bad address", `"addresses":[{"address":"10.10.0.9"}]`, rc, ""},
		{"an Address object and CNI_ARGS", `"addresses":[{"address":"10.10.0.9/24","Address":{"IP":"10.10.0.8","Mask":"////AA=="}},{"address":"10.10.0.7/24"}]`, ``, cniArgs},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"prec","type":"static","ipam":{"type":"static",%s}%s}`, c.addresses, c.extra)
			run := func(bin string) []string {
				cmd := exec.Command(bin)
				cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir, "CNI_ARGS=" + c.args}
				cmd.Stdin = strings.NewReader(conf)
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("%s: %v: %s", bin, err, out)
				}
				var res current.Result
				if err := json.Unmarshal(out, &res); err != nil {
					t.Fatalf("%s: result %q: %v", bin, out, err)
				}
				return ips(t, &res)
			}
			if got, want := run(filepath.Join(r.BinDir, "static")), run(ref); !slices.Equal(got, want) {
				t.Errorf("ips = %q, the reference's %q", got, want)
			}
		})
	}
}

// TestBadInput: codes and messages naming the field.
func TestBadInput(t *testing.T) {
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	cases := []struct {
		name, body, args, version string
		code                      uint
		field                     string
	}{
		{"no ipam", ``, "", "1.0.0", 7, "ipam"},
		{"bad address", `,"ipam":{"type":"static","addresses":[{"address":"10.0.0.1"}]}`, "", "1.0.0", 7, "ipam.addresses[0].address"},
		{"bad gateway", `,"ipam":{"type":"static","addresses":[{"address":"10.0.0.1/24","gateway":"x"}]}`, "", "1.0.0", 7, "ipam.addresses[0].gateway"},
		{"gateway family", `,"ipam":{"type":"static","addresses":[{"address":"10.0.0.1/24","gateway":"fd00::1"}]}`, "", "1.0.0", 7, "ipam.addresses[0].gateway"},
		{"runtime ips without prefix", `,"ipam":{"type":"static"},"runtimeConfig":{"ips":["10.0.0.1"]}`, "", "1.0.0", 7, "runtimeConfig.ips[0]"},
		{"args ips garbage", `,"ipam":{"type":"static"},"args":{"cni":{"ips":["x"]}}`, "", "1.0.0", 7, "args.cni.ips[0]"},
		{"CNI_ARGS IP", `,"ipam":{"type":"static"}`, "IP=10.0.0.1", "1.0.0", 4, "CNI_ARGS IP"},
		{"CNI_ARGS GATEWAY", `,"ipam":{"type":"static"}`, "IP=10.0.0.1/24;GATEWAY=nope", "1.0.0", 4, "CNI_ARGS GATEWAY"},
		{"two v4 at 0.2.0", `,"ipam":{"type":"static","addresses":[{"address":"10.0.0.1/24"},{"address":"10.0.1.1/24"}]}`, "", "0.2.0", 7, "0.3.0"},
		{"routes not a list", `,"ipam":{"type":"static","routes":{}}`, "", "1.0.0", 7, "routes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf := fmt.Sprintf(`{"cniVersion":%q,"name":"bad","type":"static"%s}`, c.version, c.body)
			out, _, code := r.Exec("static", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir, "CNI_ARGS=" + c.args}, []byte(conf))
			if code == 0 {
				t.Fatalf("ADD succeeded: %s", out)
			}
			if e := testnet.ParseError(t, out); e.Code != c.code || !strings.Contains(e.Msg, c.field) {
				t.Fatalf("error = %d %q, want %d naming %q", e.Code, e.Msg, c.code, c.field)
			}
		})
	}
	t.Run("CHECK without prevResult", func(t *testing.T) {
		conf := `{"cniVersion":"1.0.0","name":"bad","type":"static","ipam":{"type":"static","addresses":[{"address":"10.0.0.1/24"}]}}`
		out, _, code := r.Exec("static", []string{"CNI_COMMAND=CHECK", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir}, []byte(conf))
		if code == 0 {
			t.Fatalf("CHECK succeeded: %s", out)
		}
		if e := testnet.ParseError(t, out); e.Code != 7 || !strings.Contains(e.Msg, "prevResult") {
			t.Fatalf("error = %d %q", e.Code, e.Msg)
		}
	})
}

// TestReferenceAddressKeys: Go code that reuses the reference's Address
// type writes each address with "address" (the CIDR string) and
// "Address" (the parsed net.IPNet, an object) side by side. The reference
// reads the exact-case key into each field and accepts it; so must static
// (it used to refuse it with code 7, "cannot use JSON object as string",
// as "Address" case-folded into the string). A key of another case
// ("ADDRESS") folds into "address" in both.
func TestReferenceAddressKeys(t *testing.T) {
	ref := testnet.RequireReference(t, "static")
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	run := func(bin, addrs string) (string, int) {
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"keys","type":"static","ipam":{"type":"static","addresses":[%s]}}`, addrs)
		cmd := exec.Command(bin)
		cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.BinDir}
		cmd.Stdin = strings.NewReader(conf)
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run %s: %v", bin, err)
		}
		return string(out), code
	}
	for name, addrs := range map[string]string{
		"address then Address": `{"address":"10.83.0.5/24","gateway":"10.83.0.1","Address":{"IP":"10.83.0.5","Mask":"////AA=="},"Version":"4"}`,
		"Address then address": `{"Address":{"IP":"10.83.0.6","Mask":"////AA=="},"Version":"4","address":"10.83.0.6/24"}`,
		"ADDRESS":              `{"ADDRESS":"10.83.0.7/24"}`,
		"both families":        `{"address":"10.83.0.8/24","Address":{"IP":"10.83.0.8","Mask":"////AA=="}},{"address":"fd00:83::8/64","Address":{"IP":"fd00:83::8","Mask":"//////////8AAAAAAAAAAA=="}}`,
	} {
		t.Run(name, func(t *testing.T) {
			want, wantCode := run(ref, addrs)
			got, code := run(filepath.Join(r.BinDir, "static"), addrs)
			if wantCode != 0 {
				t.Fatalf("the reference refuses it (%d): %s", wantCode, want)
			}
			if code != 0 {
				t.Fatalf("ADD failed (%d) where the reference succeeds: %s", code, got)
			}
			var g, w current.Result
			if err := json.Unmarshal([]byte(got), &g); err != nil {
				t.Fatalf("our result %q: %v", got, err)
			}
			if err := json.Unmarshal([]byte(want), &w); err != nil {
				t.Fatalf("reference result %q: %v", want, err)
			}
			if gs, ws := ips(t, &g), ips(t, &w); !slices.Equal(gs, ws) || len(gs) == 0 {
				t.Fatalf("ips = %q, the reference's %q", gs, ws)
			}
		})
	}
}
