package tuning_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/applets/tuning"
	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// chainRuntime is a node whose CNI_PATH finds bridge and host-local: ours
// once they exist in cnibox, the reference ones (/usr/lib/cni) until then.
func chainRuntime(t *testing.T) *testnet.Runtime {
	r := testnet.NewRuntime(t)
	testnet.RequireReference(t, "bridge")
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	return r
}

// skipUnchainable skips versions the bridge in CNI_PATH cannot run: the
// reference bridge (v1.1.1) stops at 1.0.0.
func skipUnchainable(t *testing.T, v string) {
	if v == "1.1.0" && !slices.Contains(testnet.Applets(t), "bridge") {
		t.Skip("cniVersion 1.1.0 needs cnibox's bridge (the reference bridge v1.1.1 supports up to 1.0.0); runs once applets/bridge lands")
	}
}

// bridgeList is bridge + host-local followed by the given plugin configs.
func bridgeList(v, name string, plugins ...string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[
	  {"type":"bridge","bridge":"cbx0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.77.0.0/24"}}%s]}`,
		v, name, prefixComma(plugins))
}

func prefixComma(p []string) string {
	if len(p) == 0 {
		return ""
	}
	return "," + strings.Join(p, ",")
}

func netName(prefix, v string) string { return prefix + strings.ReplaceAll(v, ".", "") }

// state is everything tuning may change, read back from the kernel.
type state struct {
	Mac      string
	MTU      int
	Promisc  bool
	Allmulti bool
	TxQLen   int
	Sysctls  map[string]string
}

var watched = []string{
	"net/ipv4/conf/eth0/arp_notify",
	"net/ipv4/conf/eth0/arp_ignore",
	"net/ipv4/ping_group_range",
	"net/core/somaxconn",
}

func readState(t *testing.T, pod *testnet.NS, ifName string) state {
	t.Helper()
	var s state
	err := pod.Do(func() error {
		link, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return err
		}
		a := link.Attrs()
		s = state{Mac: a.HardwareAddr.String(), MTU: a.MTU, Promisc: a.Promisc != 0,
			Allmulti: a.RawFlags&unix.IFF_ALLMULTI != 0, TxQLen: a.TxQLen, Sysctls: map[string]string{}}
		for _, k := range watched {
			data, err := os.ReadFile("/proc/sys/" + k)
			if err != nil {
				return err
			}
			s.Sysctls[k] = strings.Join(strings.Fields(string(data)), " ")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read state of %s: %v", ifName, err)
	}
	return s
}

func (s state) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}

const tuningAll = `{"type":"tuning","dataDir":%q,
  "sysctl":{"net.ipv4.conf.IFNAME.arp_notify":"1","net/ipv4/conf/IFNAME/arp_ignore":"2",
            "net.ipv4.ping_group_range":"0 2147483647","net.core.somaxconn":"777"},
  "mac":%q,"promisc":true,"mtu":1400,"allmulti":true,"txQLen":123}`

// TestEveryKey sets every key at every spec version, chained after bridge,
// checks the kernel and the result, CHECKs, and DELs back to the original.
func TestEveryKey(t *testing.T) {
	r := chainRuntime(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		skipUnchainable(t, v)
		dir := t.TempDir()
		mac := "02:42:0a:00:00:" + strings.ReplaceAll(v, ".", "")[:2]
		list := r.Conflist(bridgeList(v, netName("tune", v), fmt.Sprintf(tuningAll, dir, mac)))
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		res, err := r.Add(list, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		got := readState(t, pod, "eth0")
		want := state{Mac: mac, MTU: 1400, Promisc: true, Allmulti: true, TxQLen: 123, Sysctls: map[string]string{
			watched[0]: "1", watched[1]: "2", watched[2]: "0 2147483647", watched[3]: "777"}}
		if got.String() != want.String() {
			t.Fatalf("after ADD:\n got %v\nwant %v", got, want)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, i := range cur.Interfaces {
				if i.Name == "eth0" && i.Sandbox != "" {
					found = true
					if i.Mac != mac {
						t.Errorf("result MAC of eth0 = %s, want %s", i.Mac, mac)
					}
				}
			}
			if !found {
				t.Errorf("result has no eth0: %v", cur.Interfaces)
			}
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(list, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			for _, drift := range [][]string{
				{"ip", "link", "set", "eth0", "mtu", "1300"},
				{"ip", "link", "set", "eth0", "promisc", "off"},
				{"ip", "link", "set", "eth0", "allmulticast", "off"},
				{"ip", "link", "set", "eth0", "txqueuelen", "5"},
				{"ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"},
				{"sysctl", "-w", "net.core.somaxconn=778"},
				{"sysctl", "-w", "net.ipv4.ping_group_range=1 0"},
			} {
				snap := readState(t, pod, "eth0")
				pod.MustRun(drift[0], drift[1:]...)
				if err := r.Check(list, a); err == nil {
					t.Errorf("CHECK passed after %v", drift)
				}
				restoreState(t, pod, snap)
			}
			if err := r.Check(list, a); err != nil {
				t.Fatalf("CHECK after putting values back: %v", err)
			}
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("dataDir not empty after DEL: %v", entries)
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
	})
}

func restoreState(t *testing.T, pod *testnet.NS, s state) {
	t.Helper()
	pod.MustRun("ip", "link", "set", "eth0", "mtu", fmt.Sprint(s.MTU), "txqueuelen", fmt.Sprint(s.TxQLen), "address", s.Mac)
	pod.MustRun("ip", "link", "set", "eth0", "promisc", onOff(s.Promisc), "allmulticast", onOff(s.Allmulti))
	for k, v := range s.Sysctls {
		pod.MustRun("sysctl", "-w", strings.ReplaceAll(k, "/", ".")+"="+v)
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// bridged makes eth0 in a new pod with bridge alone, as the chain's first
// plugin would; the test then runs tuning on its own against the result.
func bridged(t *testing.T, r *testnet.Runtime, v, name string) (bridgeOnly *libcni.NetworkConfigList, pod *testnet.NS, a *testnet.Attachment, res types.Result) {
	t.Helper()
	bridgeOnly = r.Conflist(bridgeList(v, name))
	pod = r.Pod(t)
	a = r.Attach(pod, "eth0")
	res, err := r.Add(bridgeOnly, a)
	if err != nil {
		t.Fatalf("bridge ADD: %v", err)
	}
	return bridgeOnly, pod, a, res
}

// tuningOnly is the list of tuning alone, for libcni's DEL of it.
func tuningOnly(r *testnet.Runtime, v, name, plugin string) *libcni.NetworkConfigList {
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s]}`, v, name, plugin))
}

// addAlone runs tuning's ADD directly with prevResult, as libcni would
// inside a chain; it lets a test read the interface before tuning touches it.
func addAlone(t *testing.T, r *testnet.Runtime, v, name, plugin string, a *testnet.Attachment, prev types.Result, env ...string) ([]byte, int) {
	t.Helper()
	// Built as text so a test can send duplicate keys.
	head := fmt.Sprintf(`{"cniVersion":%q,"name":%q,`, v, name)
	if prev != nil {
		pr, err := prev.GetAsVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(pr)
		head += `"prevResult":` + string(raw) + ","
	}
	stdin := []byte(head + strings.TrimPrefix(strings.TrimSpace(plugin), "{"))
	out, errOut, code := r.Exec("tuning", append([]string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + a.ContainerID,
		"CNI_IFNAME=" + a.IfName, "CNI_NETNS=" + a.Pod.Path, "CNI_PATH=" + r.Path}, env...), stdin)
	if code != 0 && testing.Verbose() {
		t.Logf("tuning ADD stderr: %s", errOut)
	}
	return out, code
}

// TestDelRestores proves DEL puts back every value, read from the kernel:
// bridge makes eth0, the original state is read, tuning is added with every
// key, and a DEL of tuning alone (libcni, prevResult from its cache) must
// leave eth0 exactly as it was, sysctls included.
func TestDelRestores(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "restore"
	dir := t.TempDir()
	bridgeOnly, pod, a, res := bridged(t, r, v, name)
	before := readState(t, pod, "eth0")
	plugin := fmt.Sprintf(tuningAll, dir, "02:42:0a:00:00:42")
	if out, code := addAlone(t, r, v, name, plugin, a, res); code != 0 {
		t.Fatalf("tuning ADD: %s", out)
	}
	if got := readState(t, pod, "eth0"); got.String() == before.String() {
		t.Fatal("tuning changed nothing")
	}
	backup, err := os.ReadFile(filepath.Join(dir, a.ContainerID+"_eth0.json"))
	if err != nil {
		t.Fatalf("no backup: %v", err)
	}
	// The reference's keys are there for a node that switches back.
	for _, k := range []string{`"mac"`, `"mtu"`, `"promisc"`, `"allmulti"`, `"txQLen"`, `"sysctl"`, `"network": "restore"`} {
		if !strings.Contains(string(backup), k) {
			t.Errorf("backup lacks %s: %s", k, backup)
		}
	}
	if err := r.Del(tuningOnly(r, v, name, plugin), a); err != nil {
		t.Fatalf("tuning DEL: %v", err)
	}
	if after := readState(t, pod, "eth0"); after.String() != before.String() {
		t.Errorf("DEL did not restore:\nbefore %v\n after %v", before, after)
	}
	if _, err := os.Stat(filepath.Join(dir, a.ContainerID+"_eth0.json")); !os.IsNotExist(err) {
		t.Errorf("backup still there after DEL: %v", err)
	}
	if err := r.Del(bridgeOnly, a); err != nil {
		t.Fatalf("bridge DEL: %v", err)
	}
}

// TestDelLeavesOthersChanges: a sysctl someone changed after ADD is theirs;
// DEL puts back only what still holds the value tuning set.
func TestDelLeavesOthersChanges(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "others"
	dir := t.TempDir()
	_, pod, a, res := bridged(t, r, v, name)
	before := readState(t, pod, "eth0")
	plugin := fmt.Sprintf(`{"type":"tuning","dataDir":%q,"sysctl":{"net.core.somaxconn":"777","net.ipv4.conf.IFNAME.arp_notify":"1"}}`, dir)
	if out, code := addAlone(t, r, v, name, plugin, a, res); code != 0 {
		t.Fatalf("tuning ADD: %s", out)
	}
	pod.MustRun("sysctl", "-w", "net.core.somaxconn=555")
	if err := r.Del(tuningOnly(r, v, name, plugin), a); err != nil {
		t.Fatal(err)
	}
	after := readState(t, pod, "eth0")
	if after.Sysctls["net/core/somaxconn"] != "555" {
		t.Errorf("DEL overwrote a value someone else set: somaxconn = %s", after.Sysctls["net/core/somaxconn"])
	}
	if after.Sysctls["net/ipv4/conf/eth0/arp_notify"] != before.Sysctls["net/ipv4/conf/eth0/arp_notify"] {
		t.Errorf("arp_notify not restored: %s", after.Sysctls["net/ipv4/conf/eth0/arp_notify"])
	}
}

// TestDelRestoresNormalized: a value the kernel reads back otherwise than
// written ("02" reads back as "2") is recorded as read back, so DEL still
// knows it is the value tuning set and puts back the original.
func TestDelRestoresNormalized(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "normalized"
	dir := t.TempDir()
	bridgeOnly, pod, a, res := bridged(t, r, v, name)
	key := "net/ipv4/conf/eth0/arp_ignore"
	was := readState(t, pod, "eth0").Sysctls[key]
	plugin := fmt.Sprintf(`{"type":"tuning","dataDir":%q,"sysctl":{"net.ipv4.conf.IFNAME.arp_ignore":"02"}}`, dir)
	if out, code := addAlone(t, r, v, name, plugin, a, res); code != 0 {
		t.Fatalf("tuning ADD: %s", out)
	}
	if got := readState(t, pod, "eth0").Sysctls[key]; got != "2" || was == "2" {
		t.Fatalf("arp_ignore %s after ADD (was %s), want 2", got, was)
	}
	if err := r.Del(tuningOnly(r, v, name, plugin), a); err != nil {
		t.Fatal(err)
	}
	if got := readState(t, pod, "eth0").Sysctls[key]; got != was {
		t.Errorf("arp_ignore %s after DEL, want %s back", got, was)
	}
	if err := r.Del(bridgeOnly, a); err != nil {
		t.Fatal(err)
	}
}

// TestOverrides: CNI_ARGS MAC, runtimeConfig.mac (capability "mac") and
// args.cni.* override the static keys, in the reference's order.
func TestOverrides(t *testing.T) {
	r := chainRuntime(t)
	const v = "1.0.0"
	dir := t.TempDir()
	list := r.Conflist(bridgeList(v, "over", fmt.Sprintf(`{"type":"tuning","dataDir":%q,"capabilities":{"mac":true},
	  "mac":"02:00:00:00:00:01","mtu":1300,"txQLen":10,"promisc":true,"sysctl":{"net.core.somaxconn":"100"},
	  "args":{"cni":{"mtu":1280,"txQLen":20,"promisc":false,"allmulti":true,"sysctl":{"net.core.somaxconn":"200","net.ipv4.conf.IFNAME.arp_notify":"1"}}}}`, dir)))

	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	a.Args = [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:00:00:00:00:02"}}
	if _, err := r.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	s := readState(t, pod, "eth0")
	if s.Mac != "02:00:00:00:00:02" || s.MTU != 1280 || s.TxQLen != 20 || s.Promisc || !s.Allmulti ||
		s.Sysctls["net/core/somaxconn"] != "200" || s.Sysctls["net/ipv4/conf/eth0/arp_notify"] != "1" {
		t.Errorf("CNI_ARGS MAC + args.cni: %v", s)
	}
	if err := r.Check(list, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatal(err)
	}

	pod2 := r.Pod(t)
	b := r.Attach(pod2, "eth0")
	b.Args = [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:00:00:00:00:02"}}
	b.Caps = map[string]any{"mac": "02:00:00:00:00:03"}
	if _, err := r.Add(list, b); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if s := readState(t, pod2, "eth0"); s.Mac != "02:00:00:00:00:03" {
		t.Errorf("runtimeConfig.mac did not win over CNI_ARGS: %v", s.Mac)
	}
	if err := r.Del(list, b); err != nil {
		t.Fatal(err)
	}
}

// TestCnitool drives the chain through the reference cnitool with the mac
// capability and CNI_ARGS.
func TestCnitool(t *testing.T) {
	r := chainRuntime(t)
	testnet.ForEachVersion(t, []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}, func(t *testing.T, v string) {
		skipUnchainable(t, v)
		dir := t.TempDir()
		name := netName("tct", v)
		r.Conflist(bridgeList(v, name, fmt.Sprintf(`{"type":"tuning","dataDir":%q,"capabilities":{"mac":true},"mtu":1450,"sysctl":{"net.ipv4.conf.IFNAME.arp_notify":"1"}}`, dir)))
		pod := r.Pod(t)
		out, err := r.Cnitool("add", name, pod, `CAP_ARGS={"mac":"02:00:00:00:aa:01"}`)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "02:00:00:00:aa:01") {
			t.Errorf("result lacks the new MAC: %s", out)
		}
		s := readState(t, pod, "eth0")
		if s.Mac != "02:00:00:00:aa:01" || s.MTU != 1450 || s.Sysctls["net/ipv4/conf/eth0/arp_notify"] != "1" {
			t.Errorf("after ADD: %v", s)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := r.Cnitool("check", name, pod, `CAP_ARGS={"mac":"02:00:00:00:aa:01"}`); err != nil {
				t.Error(err)
			}
		}
		if _, err := r.Cnitool("del", name, pod); err != nil {
			t.Fatal(err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("dataDir not empty after DEL: %v", entries)
		}
	})
}

// TestBadInput: each bad key gets code 7 with the field in the message,
// and nothing is left behind (no backup, nothing changed).
func TestBadInput(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "bad"
	dir := t.TempDir()
	_, pod, a, res := bridged(t, r, v, name)
	before := readState(t, pod, "eth0")
	allow := filepath.Join(t.TempDir(), "allowlist.conf")
	os.WriteFile(allow, []byte("^net\\.core\\.somaxconn$\n"), 0o644)
	for _, c := range []struct {
		plugin string
		want   string
		env    []string
		noPrev bool
	}{
		{plugin: `"sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}`, want: `sysctl: duplicate key "net.core.somaxconn"`},
		{plugin: `"args":{"cni":{"sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}}}`, want: `args.cni.sysctl: duplicate key`},
		{plugin: `"sysctl":{"kernel.panic":"1"}`, want: `sysctl["kernel.panic"]: only net.*`},
		{plugin: `"sysctl":{"net/../kernel/panic":"1"}`, want: `sysctl["net/../kernel/panic"]`},
		{plugin: `"sysctl":{"net.core.nosuch":"1"}`, want: `sysctl["net.core.nosuch"]: /proc/sys/net/core/nosuch does not exist`},
		{plugin: `"sysctl":{"net.core.somaxconn":"1","net.ipv4.conf.IFNAME.arp_notify":"1"}`, env: []string{tuning.AllowlistEnv + "=" + allow}, want: `sysctl["net.ipv4.conf.IFNAME.arp_notify"]: not allowed`},
		{plugin: `"sysctl":{"net.core.somaxconn":7}`, want: `sysctl`},
		{plugin: `"mac":"nope"`, want: `mac: address nope: invalid MAC address`},
		{plugin: `"mac":"01:00:5e:00:00:01"`, want: `mac: 01:00:5e:00:00:01 is not a unicast address`},
		{plugin: `"args":{"cni":{"mac":"zz"}}`, want: `args.cni.mac:`},
		{plugin: `"mtu":-1`, want: `mtu: -1 is not between 0 and 65535`},
		{plugin: `"mtu":70000`, want: `mtu: 70000 is not between 0 and 65535`},
		{plugin: `"mtu":"big"`, want: `"mtu"`},
		{plugin: `"txQLen":-5`, want: `txQLen: -5 is negative`},
		{plugin: `"promisc":"yes"`, want: `"promisc"`},
		// Applied, then refused by the kernel: what was set is undone.
		{plugin: `"sysctl":{"net.core.somaxconn":"999","net.ipv4.conf.IFNAME.arp_notify":"1"},"mtu":50`, want: `mtu: eth0 refuses 50`},
		{plugin: `"sysctl":{"net.core.somaxconn":"abc"}`, want: `sysctl["net.core.somaxconn"]: the kernel refused "abc"`},
		{plugin: `"mtu":1400`, noPrev: true, want: `prevResult: missing`},
	} {
		plugin := fmt.Sprintf(`{"type":"tuning","dataDir":%q,%s}`, dir, c.plugin)
		prev := types.Result(res)
		if c.noPrev {
			prev = nil
		}
		out, code := addAlone(t, r, v, name, plugin, a, prev, c.env...)
		if code == 0 {
			t.Errorf("%s: ADD succeeded", c.plugin)
			continue
		}
		e := testnet.ParseError(t, out)
		if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, c.want) {
			t.Errorf("%s: got code %d %q, want 7 containing %q", c.plugin, e.Code, e.Msg, c.want)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s: left %v in dataDir", c.plugin, entries)
		}
		if after := readState(t, pod, "eth0"); after.String() != before.String() {
			t.Errorf("%s: state changed:\nbefore %v\n after %v", c.plugin, before, after)
		}
	}
}

// TestGC removes this network's backups of attachments that are gone, and
// nothing of valid attachments or of other networks sharing the dataDir.
func TestGC(t *testing.T) {
	r := chainRuntime(t)
	dir := t.TempDir()
	plugin := fmt.Sprintf(`{"type":"tuning","dataDir":%q,"mtu":1400}`, dir)
	const v = "1.0.0"
	list := r.Conflist(bridgeList(v, "gca", plugin))
	other := r.Conflist(bridgeList(v, "gcb", plugin))
	var atts []*testnet.Attachment
	for _, l := range []*libcni.NetworkConfigList{list, list, other} {
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		if _, err := r.Add(l, a); err != nil {
			t.Fatal(err)
		}
		atts = append(atts, a)
	}
	// A backup the reference wrote (no network recorded) is not ours to judge.
	foreign := filepath.Join(dir, "ref-container_eth0.json")
	os.WriteFile(foreign, []byte(`{"mtu":1500}`), 0o600)
	gcConf := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"gca","type":"tuning","dataDir":%q,
	  "cni.dev/valid-attachments":[{"containerID":%q,"ifname":"eth0"}]}`, dir, atts[0].ContainerID))
	out, _, code := r.Exec("tuning", []string{"CNI_COMMAND=GC", "CNI_PATH=" + r.BinDir}, gcConf)
	if code != 0 {
		t.Fatalf("GC: %s", out)
	}
	exists := func(a *testnet.Attachment) bool {
		_, err := os.Stat(filepath.Join(dir, a.ContainerID+"_eth0.json"))
		return err == nil
	}
	if !exists(atts[0]) || exists(atts[1]) || !exists(atts[2]) {
		t.Errorf("after GC: valid=%v stale=%v other-network=%v; want true false true", exists(atts[0]), exists(atts[1]), exists(atts[2]))
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("GC removed a backup of unknown network: %v", err)
	}
	// libcni at 1.1.0 with a tuning-only list of the same name: GC with no
	// valid attachments removes the rest of this network's backups.
	if err := r.GC(r.Conflist(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"gca","plugins":[%s]}`, plugin))); err != nil {
		t.Fatalf("libcni GC: %v", err)
	}
	if exists(atts[0]) || !exists(atts[2]) {
		t.Errorf("after libcni GC: gca=%v gcb=%v; want false true", exists(atts[0]), exists(atts[2]))
	}
}

// TestStatus: a broken allowlist makes STATUS say ADD cannot work.
func TestStatus(t *testing.T) {
	r := testnet.NewRuntime(t)
	conf := []byte(`{"cniVersion":"1.1.0","name":"st","type":"tuning"}`)
	allow := filepath.Join(t.TempDir(), "allowlist.conf")
	env := []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + r.BinDir, tuning.AllowlistEnv + "=" + allow}
	if out, _, code := r.Exec("tuning", env, conf); code != 0 {
		t.Fatalf("STATUS without allowlist: %s", out)
	}
	os.WriteFile(allow, []byte("net\\.(\n"), 0o644)
	out, _, code := r.Exec("tuning", env, conf)
	if code == 0 || testnet.ParseError(t, out).Code != cni.ErrNotAvailable {
		t.Fatalf("STATUS with a broken allowlist: %d %s", code, out)
	}
}
