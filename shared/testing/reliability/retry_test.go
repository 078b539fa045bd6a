package reliability

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/veth"
)

// Runtimes retry ADD after a timeout, with the same container ID and
// interface, sometimes while the first ADD still runs; a pod can also be
// handed a second attachment of the same interface name by a confused
// runtime. Whatever the second ADD does, the first attachment must stay
// as it was: a failing ADD undoes only what it made itself.

// retryConf is a one-plugin list of a main applet with everything that
// leaves state on the node: a bridge or ptp veth, host-local's
// reservation, masquerade rules, and for bridge the spoof check.
func retryConf(kind string, n int) string {
	return retryConfIPAM(kind, n, fmt.Sprintf(`{"type": "host-local", "ranges": [[{"subnet": "10.%d.0.0/24"}]]}`, 70+n))
}

// retryConfIPAM is retryConf with another IPAM configuration.
func retryConfIPAM(kind string, n int, ipam string) string {
	extra := ""
	if kind == "bridge" {
		extra = fmt.Sprintf(`"bridge": "rtbr%d", "isGateway": true, "macspoofchk": true,`, n)
	}
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "retry-%s", "plugins": [{
		"type": %q, %s "ipMasq": true, "ipam": %s}]}`, kind, kind, extra, ipam)
}

// podState is what a pod's attachment is made of, as lines to compare:
// its links (name, MAC, state, MTU), addresses, routes and arp_filter.
func podState(t *testing.T, pod *testnet.NS) string {
	t.Helper()
	// A link-local address still in DAD gets its route when DAD ends.
	for i := 0; i < 50 && strings.TrimSpace(pod.MustRun("ip", "-6", "-o", "addr", "show", "tentative")) != ""; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	var out []string
	for _, args := range [][]string{
		{"-br", "link"}, {"-br", "addr"}, {"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"},
	} {
		out = append(out, pod.MustRun("ip", args...))
	}
	// The MTU, and a sysctl tuning sets.
	out = append(out, pod.MustRun("sh", "-c", "ip -o link 2>/dev/null | grep -o '^[0-9]*: [^:]*: .* mtu [0-9]*'; cat /proc/sys/net/ipv4/conf/*/arp_filter"))
	return strings.Join(out, "")
}

// warm ADDs and DELs a throwaway pod, so that what stays for the next
// pods (the bridge, the shared chains, the state directories) is there,
// and returns the snapshot of that node.
func warm(t *testing.T, r *testnet.Runtime, list *libcni.NetworkConfigList) *testnet.Snapshot {
	t.Helper()
	a := r.Attach(r.Pod(t), "eth0")
	caps(a, 299) // what a list does not take, libcni leaves out
	if _, err := r.Add(list, a); err != nil {
		t.Fatalf("warm-up ADD: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatalf("warm-up DEL: %v", err)
	}
	return r.Snapshot(t)
}

// firstAttachment is a working attachment to compare with later.
type firstAttachment struct {
	att  *testnet.Attachment
	res  *current.Result
	node *testnet.Snapshot
	pod  string
}

func (f *firstAttachment) gateway() string { return f.res.IPs[0].Gateway.String() }

// intact fails the test when the first attachment is not exactly as it
// was right after its ADD, or its pod cannot reach its gateway.
func (f *firstAttachment) intact(t *testing.T, r *testnet.Runtime, after string) {
	t.Helper()
	if d := f.node.Diff(r.Snapshot(t)); d != "" {
		t.Errorf("after %s the node changed:\n%s", after, d)
	}
	if p := podState(t, f.att.Pod); p != f.pod {
		t.Errorf("after %s the pod changed:\nwas:\n%s\nnow:\n%s", after, f.pod, p)
	}
	if err := f.att.Pod.Ping(f.gateway()); err != nil {
		t.Errorf("after %s the pod cannot reach its gateway %s: %v", after, f.gateway(), err)
	}
}

func addFirst(t *testing.T, r *testnet.Runtime, list *libcni.NetworkConfigList) *firstAttachment {
	t.Helper()
	f := &firstAttachment{att: r.Attach(r.Pod(t), "eth0")}
	res, err := r.Add(list, f.att)
	if err != nil {
		t.Fatalf("first ADD: %v", err)
	}
	if f.res, err = current.NewResultFromResult(res); err != nil {
		t.Fatal(err)
	}
	if err := f.att.Pod.Ping(f.gateway()); err != nil {
		t.Fatalf("first attachment cannot reach its gateway: %v", err)
	}
	f.node, f.pod = r.Snapshot(t), podState(t, f.att.Pod)
	return f
}

// repeatOutcome is what one implementation did with the repeated ADDs.
type repeatOutcome struct {
	same, other error // the same attachment again; another container ID, same pod and ifname
}

// repeatedAdd ADDs an attachment, then ADDs it again, then ADDs another
// container ID with the same interface name into the same pod: both must
// fail and leave the first exactly as it was, reachable.
func repeatedAdd(t *testing.T, r *testnet.Runtime, kind string, n int) (*firstAttachment, repeatOutcome) {
	t.Helper()
	list := r.Conflist(retryConf(kind, n))
	baseline := warm(t, r, list)
	f := addFirst(t, r, list)
	var out repeatOutcome

	_, out.same = r.Add(list, f.att)
	if out.same == nil {
		t.Errorf("repeated ADD of %s/%s succeeded; want it refused", f.att.ContainerID, f.att.IfName)
	}
	f.intact(t, r, "a repeated ADD")

	other := &testnet.Attachment{ContainerID: f.att.ContainerID + "-other", IfName: "eth0", Pod: f.att.Pod}
	_, out.other = r.Add(list, other)
	if out.other == nil {
		t.Errorf("ADD of another container ID as eth0 of the same pod succeeded; want it refused")
	}
	f.intact(t, r, "an ADD of another container ID with the same ifname")

	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		if err := r.Del(list, f.att); err != nil {
			t.Errorf("DEL of the first attachment: %v", err)
		}
		if d := baseline.Diff(r.Snapshot(t)); d != "" {
			t.Errorf("DEL left:\n%s", d)
		}
	})
	// DEL of the other container, as a runtime does after a failed ADD:
	// eth0 is not its, so it stays.
	if err := r.Del(list, other); err != nil {
		t.Errorf("DEL of the refused attachment: %v", err)
	}
	return f, out
}

// TestRepeatedAddMain: bridge and ptp refuse a repeated ADD of an
// attachment and an ADD of another container ID with the same ifname in
// the same pod, and leave the first attachment working (links, addresses,
// routes, reservation, masquerade and spoof-check rules, a ping), as the
// reference does; unlike the reference, the runtime's DEL of the refused
// container leaves the pod's eth0 alone too. Before the fix, bridge's
// roll-back deleted the pod's eth0 and host veth.
func TestRepeatedAddMain(t *testing.T) {
	for i, kind := range []string{"bridge", "ptp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			r := testnet.NewRuntime(t)
			f, got := repeatedAdd(t, r, kind, i)
			f.intact(t, r, "DEL of the refused container ID")
			for _, e := range []error{got.same, got.other} {
				if e != nil && !strings.Contains(e.Error(), "already exists") {
					t.Errorf("refusal %q does not say what exists", e)
				}
			}

			ref := testnet.ReferenceDir()
			if _, err := os.Stat(filepath.Join(ref, kind)); err != nil {
				t.Logf("no reference %s in %s (REF_CNI_PATH): not compared", kind, ref)
				return
			}
			rr := testnet.NewRuntime(t)
			rr.SetPath(ref)
			list := rr.Conflist(retryConf(kind, i))
			rf := addFirst(t, rr, list)
			_, refSame := rr.Add(list, rf.att)
			rf.intact(t, rr, "the reference's repeated ADD")
			other := &testnet.Attachment{ContainerID: rf.att.ContainerID + "-other", IfName: "eth0", Pod: rf.att.Pod}
			_, refOther := rr.Add(list, other)
			rf.intact(t, rr, "the reference's ADD of another container ID")
			for _, c := range []struct {
				what     string
				us, them error
			}{{"repeated ADD", got.same, refSame}, {"ADD of another container ID", got.other, refOther}} {
				if (c.us == nil) != (c.them == nil) || code(c.us) != code(c.them) {
					t.Errorf("%s: cnibox %v, reference %v", c.what, c.us, c.them)
				}
				t.Logf("%s: cnibox %v; reference %v", c.what, c.us, c.them)
			}
			if err := rr.Del(list, other); err != nil {
				t.Logf("reference DEL of the refused container: %v", err)
			}
			if p := podState(t, rf.att.Pod); p != rf.pod {
				t.Logf("known reference flaw: its DEL of the refused container ID deleted the pod's eth0")
			}
			_ = rr.Del(list, rf.att)
		})
	}
}

// code is the CNI error code of err (0 for nil).
func code(err error) uint {
	if err == nil {
		return 0
	}
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 999
}

// TestConcurrentAdd: two ADDs of the same attachment at once, as a
// runtime's retry racing its first try, ten rounds: exactly one succeeds
// and its attachment is whole (the pod's address, the host veth, the
// reservation that matches the result, the masquerade rules), the other's
// failure left nothing more, and DEL leaves the node as it was. Before
// the fix, in most rounds the ADD that answered success had lost its veth.
// With static IPAM both ADDs get their addresses: without the
// attachment's lock, the one that lost the race for the veth tore down
// the masquerade rules of the one that won. Two container IDs racing for
// the same pod's eth0 (the kernel picks one) end the same way, and the
// runtime's DEL of the loser leaves the winner whole.
func TestConcurrentAdd(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	for i, c := range []struct {
		kind, ipam string
		otherID    bool // the second ADD is another container ID's, as the same pod's eth0
	}{
		{"bridge", "host-local", false}, {"ptp", "host-local", false}, {"bridge", "static", false}, {"ptp", "static", false},
		{"bridge", "host-local", true}, {"ptp", "host-local", true},
	} {
		name := c.kind + "/" + c.ipam
		if c.otherID {
			name += "/other-id"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			kind := c.kind
			r := testnet.NewRuntime(t)
			conf := retryConf(kind, 10+i)
			if c.ipam == "static" {
				conf = retryConfIPAM(kind, 10+i, fmt.Sprintf(`{"type": "static", "addresses": [{"address": "10.%d.0.2/24", "gateway": "10.%d.0.1"}]}`, 80+i, 80+i))
			}
			list := r.Conflist(conf)
			baseline := warm(t, r, list)
			for round := 0; round < 10; round++ {
				atts := []*testnet.Attachment{r.Attach(r.Pod(t), "eth0")}
				atts = append(atts, atts[0])
				if c.otherID {
					atts[1] = &testnet.Attachment{ContainerID: atts[0].ContainerID + "-other", IfName: "eth0", Pod: atts[0].Pod}
				}
				var wg sync.WaitGroup
				res := make([]types.Result, 2)
				errs := make([]error, 2)
				for j := range res {
					wg.Add(1)
					go func() {
						defer wg.Done()
						res[j], errs[j] = r.Add(list, atts[j])
					}()
				}
				wg.Wait()
				ok := -1
				for j, err := range errs {
					if err == nil {
						if ok >= 0 {
							t.Fatalf("round %d: both ADDs succeeded", round)
						}
						ok = j
					}
				}
				if ok < 0 {
					t.Fatalf("round %d: both ADDs failed: %v; %v", round, errs[0], errs[1])
				}
				won, err := current.NewResultFromResult(res[ok])
				if err != nil {
					t.Fatal(err)
				}
				att := atts[ok]
				wholeAttachment(t, r, kind, c.ipam == "host-local", att, won)
				if c.otherID {
					// The runtime DELs the container whose ADD failed.
					if err := r.Del(list, atts[1-ok]); err != nil {
						t.Fatalf("round %d: DEL of the loser: %v", round, err)
					}
					wholeAttachment(t, r, kind, c.ipam == "host-local", att, won)
				}
				if err := r.Del(list, att); err != nil {
					t.Fatalf("round %d: DEL: %v", round, err)
				}
				if d := baseline.Diff(r.Snapshot(t)); d != "" {
					t.Fatalf("round %d: after DEL the node holds:\n%s", round, d)
				}
			}
		})
	}
}

// wholeAttachment checks that an attachment is there exactly once: the
// pod's address, one host veth naming it, one reservation (the result's
// address, with host-local), one set of masquerade rules, and the pod
// reaches its gateway.
func wholeAttachment(t *testing.T, r *testnet.Runtime, kind string, hostLocal bool, att *testnet.Attachment, res *current.Result) {
	t.Helper()
	ip := res.IPs[0].Address.IP.String()
	if a := att.Pod.MustRun("ip", "-o", "addr", "show", "dev", att.IfName); !strings.Contains(a, " "+ip+"/") {
		t.Errorf("the pod's %s lacks the result's address %s:\n%s", att.IfName, ip, a)
	}
	alias := veth.Alias("retry-"+kind, att.ContainerID, att.IfName)
	if n := strings.Count(r.Node.MustRun("ip", "-d", "link", "show", "type", "veth"), "alias "+alias+"\n"); n != 1 {
		t.Errorf("%d host veths of the attachment, want 1", n)
	}
	if dir := filepath.Join(r.StateDir, "networks", "retry-"+kind); hostLocal {
		entries, _ := os.ReadDir(dir)
		var held []string
		for _, e := range entries {
			data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			if strings.HasPrefix(string(data), att.ContainerID) {
				held = append(held, e.Name())
			}
		}
		if len(held) != 1 || held[0] != ip {
			t.Errorf("reservations of the container: %v, want [%s]", held, ip)
		}
	}
	nat := r.Node.MustRun("iptables-save", "-t", "nat")
	re := regexp.MustCompile(`(?m)^-A POSTROUTING -s ` + regexp.QuoteMeta(ip) + `(/32)? .*id: \\"` + regexp.QuoteMeta(att.ContainerID) + `\\"`)
	if n := len(re.FindAllString(nat, -1)); n != 1 {
		t.Errorf("%d masquerade jumps for %s, want 1:\n%s", n, ip, nat)
	}
	if err := att.Pod.Ping(res.IPs[0].Gateway.String()); err != nil {
		t.Errorf("the pod cannot reach its gateway: %v", err)
	}
}

// metaConf is a list of bridge and one meta applet (loopback alone).
func metaConf(kind string, n int) string {
	meta := map[string]string{
		"tuning":   `{"type": "tuning", "mtu": 1400, "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1"}}`,
		"portmap":  `{"type": "portmap", "capabilities": {"portMappings": true}}`,
		"firewall": `{"type": "firewall", "backend": "iptables"}`,
	}[kind]
	if kind == "loopback" {
		return `{"cniVersion": "1.0.0", "name": "retry-lo", "plugins": [{"type": "loopback"}]}`
	}
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "retry-%s", "plugins": [{
		"type": "bridge", "bridge": "rtm%d", "isGateway": true,
		"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.%d.0.0/24"}]]}}, %s]}`, kind, n, 90+n, meta)
}

// execMeta runs the list's last plugin alone, as libcni would in the
// chain, with prev as prevResult.
func execMeta(t *testing.T, r *testnet.Runtime, list *libcni.NetworkConfigList, cmd, cid string, pod *testnet.NS, prev *current.Result, caps map[string]any, edit func(map[string]any)) *types.Error {
	t.Helper()
	plugin := list.Plugins[len(list.Plugins)-1]
	conf := map[string]any{}
	if err := json.Unmarshal(plugin.Bytes, &conf); err != nil {
		t.Fatal(err)
	}
	conf["name"], conf["cniVersion"] = list.Name, list.CNIVersion
	if prev != nil {
		conf["prevResult"] = prev
	}
	if caps != nil {
		conf["runtimeConfig"] = caps
	}
	if edit != nil {
		edit(conf)
	}
	stdin, _ := json.Marshal(conf)
	// No system bus: firewall's firewalld backend must fail, never
	// reach the machine's firewalld.
	noBus := "DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(t.TempDir(), "no-bus")
	out, stderr, rc := r.Exec(plugin.Network.Type, []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + cid,
		"CNI_NETNS=" + pod.Path, "CNI_IFNAME=eth0", "CNI_PATH=" + r.Path, noBus}, stdin)
	if rc == 0 {
		return nil
	}
	t.Logf("%s %s: %s", plugin.Network.Type, cmd, stderr)
	return testnet.ParseError(t, out)
}

// TestRepeatedAddMeta: loopback, tuning, portmap and firewall, ADDed
// again for the same attachment and for another container ID with the
// same ifname in the same pod, leave the first attachment exactly as it
// was and reachable; the repeated ADDs succeed, as the reference's do
// (these applets are idempotent). A repeated tuning ADD that fails
// half-way undoes only its own changes and keeps the first ADD's backup,
// which before the fix it replaced with the first's "originals" and then
// deleted; a repeated firewall ADD that fails keeps the first's record
// (before the fix the first's DEL then looked for its rules in the failed
// ADD's backend, and left them).
func TestRepeatedAddMeta(t *testing.T) {
	for i, kind := range []string{"loopback", "tuning", "portmap", "firewall"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			r := testnet.NewRuntime(t)
			list := r.Conflist(metaConf(kind, i))
			baseline := warm(t, r, list)
			f := &firstAttachment{att: r.Attach(r.Pod(t), "eth0")}
			var caps map[string]any
			if kind == "portmap" {
				caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080 + i, "containerPort": 80, "protocol": "tcp"}}}
				f.att.Caps = caps
			}
			res, err := r.Add(list, f.att)
			if err != nil {
				t.Fatalf("first ADD: %v", err)
			}
			if f.res, err = current.NewResultFromResult(res); err != nil {
				t.Fatal(err)
			}
			gw := "127.0.0.1"
			if kind != "loopback" {
				gw = f.gateway()
			}
			f.node, f.pod = r.Snapshot(t), podState(t, f.att.Pod)
			check := func(after string) {
				t.Helper()
				if d := f.node.Diff(r.Snapshot(t)); d != "" {
					t.Errorf("after %s the node changed:\n%s", after, d)
				}
				if p := podState(t, f.att.Pod); p != f.pod {
					t.Errorf("after %s the pod changed:\nwas:\n%s\nnow:\n%s", after, f.pod, p)
				}
				if err := f.att.Pod.Ping(gw); err != nil {
					t.Errorf("after %s the pod cannot reach %s: %v", after, gw, err)
				}
			}
			prev := f.res
			if e := execMeta(t, r, list, "ADD", f.att.ContainerID, f.att.Pod, prev, caps, nil); e != nil {
				t.Errorf("repeated ADD: %v (the reference succeeds)", e)
			}
			check("a repeated ADD")
			if kind == "tuning" {
				// Fails at its last sysctl, after changing the MTU.
				e := execMeta(t, r, list, "ADD", f.att.ContainerID, f.att.Pod, prev, nil, func(c map[string]any) {
					c["mtu"] = 1300
					c["sysctl"] = map[string]string{"net.ipv4.conf.eth0.arp_filter": "1", "net.ipv4.conf.eth0.rp_filter": "x"}
				})
				if e == nil {
					t.Errorf("tuning ADD with rp_filter=x succeeded")
				}
				check("a repeated ADD that failed")
			}
			if kind == "firewall" {
				// With a backend that cannot work here (no firewalld):
				// the first ADD's record, which its DEL reads, stays.
				e := execMeta(t, r, list, "ADD", f.att.ContainerID, f.att.Pod, prev, nil, func(c map[string]any) {
					c["backend"] = "firewalld"
				})
				if e == nil {
					t.Errorf("firewall ADD with the firewalld backend and no firewalld succeeded")
				}
				check("a repeated ADD that failed")
			}
			other := f.att.ContainerID + "-other"
			if e := execMeta(t, r, list, "ADD", other, f.att.Pod, prev, nil, nil); e != nil {
				t.Logf("ADD of another container ID: %v", e)
			}
			if kind == "loopback" || kind == "tuning" {
				// Their state is the pod's: a second container ID
				// changes nothing (tuning: its own backup only).
				if d := f.node.Diff(r.Snapshot(t)); d != "" && kind == "loopback" {
					t.Errorf("after an ADD of another container ID the node changed:\n%s", d)
				}
				if p := podState(t, f.att.Pod); p != f.pod {
					t.Errorf("after an ADD of another container ID the pod changed:\n%s", p)
				}
				_ = execMeta(t, r, list, "DEL", other, f.att.Pod, nil, nil, nil)
			} else {
				_ = execMeta(t, r, list, "DEL", other, f.att.Pod, prev, nil, nil)
				if kind == "portmap" {
					check("ADD and DEL of another container ID")
				}
			}
			if err := r.Del(list, f.att); err != nil {
				t.Errorf("DEL: %v", err)
			}
			if d := baseline.Diff(r.Snapshot(t)); d != "" {
				t.Errorf("DEL left:\n%s", d)
			}
		})
	}
}

// TestFailedAddKeepsSibling: a pod attached to one network twice (eth0,
// then net1, the same container ID: Multus does this) whose second ADD
// fails after IPAM and the masquerade rules were set up (every name its
// host veth may take is taken) loses nothing of eth0. The iptables masquerade chain is
// one per network and container ID, as the reference names it: before the
// fix the roll-back deleted it, with eth0's jump to it. The runtime's DEL
// of net1 that follows (without prevResult) keeps them too, as does, on
// bridge, the DEL of a net1 that was added (with prevResult); the
// reference's DEL flushes the shared chain in both cases.
func TestFailedAddKeepsSibling(t *testing.T) {
	for i, kind := range []string{"bridge", "ptp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			r := testnet.NewRuntime(t)
			list := r.Conflist(retryConf(kind, 20+i))
			baseline := warm(t, r, list)
			f := addFirst(t, r, list)
			// Every name the host end may take is held by another device.
			blockers := veth.HostNames(f.att.ContainerID, "net1")
			for _, blocker := range blockers {
				r.Node.MustRun("ip", "link", "add", blocker, "type", "veth", "peer", "name", "blk"+blocker[4:])
			}
			f.node = r.Snapshot(t)
			second := &testnet.Attachment{ContainerID: f.att.ContainerID, IfName: "net1", Pod: f.att.Pod}
			if _, err := r.Add(list, second); err == nil || !strings.Contains(err.Error(), "taken by another device") {
				t.Fatalf("ADD of net1 with its host veth name taken: %v", err)
			}
			f.intact(t, r, "a failed ADD of net1")
			for _, blocker := range blockers {
				r.Node.MustRun("ip", "link", "del", blocker)
			}
			f.node = r.Snapshot(t)
			// The runtime DELs net1 (no prevResult: its ADD failed).
			if err := r.Del(list, second); err != nil {
				t.Errorf("DEL of the failed net1: %v", err)
			}
			f.intact(t, r, "DEL of the failed net1")
			if kind == "bridge" { // ptp cannot route one subnet through two interfaces
				// net1 made and deleted: eth0 keeps its masquerade,
				// whose iptables chain net1 shared.
				if _, err := r.Add(list, second); err != nil {
					t.Fatalf("ADD of net1: %v", err)
				}
				if err := r.Del(list, second); err != nil {
					t.Fatalf("DEL of net1: %v", err)
				}
				f.intact(t, r, "ADD and DEL of net1")
			}
			if err := r.Del(list, f.att); err != nil {
				t.Fatal(err)
			}
			if d := baseline.Diff(r.Snapshot(t)); d != "" {
				t.Errorf("DEL left:\n%s", d)
			}
		})
	}
}

// TestConcurrentAddChain: the default chain (bridge, loopback, portmap,
// firewall, tuning, bandwidth) ADDed twice at once for one pod, five
// rounds: exactly one ADD succeeds, CHECK of the whole chain passes for it
// (every plugin verifies its links, addresses, qdiscs and rules), the
// node reaches the pod, and DEL leaves the node as it was.
func TestConcurrentAddChain(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	r := testnet.NewRuntime(t)
	list := defaultList(t, r)
	baseline := warm(t, r, list)
	for round := 0; round < 5; round++ {
		att := r.Attach(r.Pod(t), "eth0")
		caps(att, 300+round)
		res := make([]types.Result, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for j := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[j], errs[j] = r.Add(list, att)
			}()
		}
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: want exactly one ADD to succeed: %v; %v", round, errs[0], errs[1])
		}
		won := res[0]
		if errs[0] != nil {
			won = res[1]
		}
		cur, err := current.NewResultFromResult(won)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Check(list, att); err != nil {
			t.Errorf("round %d: CHECK of the ADD that succeeded: %v", round, err)
		}
		if err := r.Node.Ping(cur.IPs[0].Address.IP.String()); err != nil {
			t.Errorf("round %d: node to pod: %v", round, err)
		}
		if err := r.Del(list, att); err != nil {
			t.Fatalf("round %d: DEL: %v", round, err)
		}
		if d := baseline.Diff(r.Snapshot(t)); d != "" {
			t.Fatalf("round %d: after DEL the node holds:\n%s", round, d)
		}
	}
}
