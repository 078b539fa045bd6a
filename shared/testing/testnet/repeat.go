package testnet

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// RepeatedAdd is a main-plugin applet's repeated-ADD test: with a working
// attachment of List as eth0 in a pod, a runtime's retried ADD (the same
// container ID and ifname) fails naming Want, and an ADD of another
// container ID with the same ifname (of Other) fails naming OtherWant;
// the DEL the runtime sends for that refused container ID follows. Each
// leaves the first attachment as it was: the node's and the pod's
// snapshots (links, addresses, routes, the host-local reservation among
// the node's state files), eth0 itself (Link), and CHECK passes. Then, in
// new pods, Rounds times: two ADDs of Concurrent at once for one
// attachment, and (unless SameOnly) for two container IDs with one
// ifname: exactly one succeeds, its attachment passes CHECK (also after
// the loser's DEL), and its DEL leaves the pod with lo only.
type RepeatedAdd struct {
	List *libcni.NetworkConfigList
	Want []string
	// Other and OtherWant default to List and Want.
	Other     *libcni.NetworkConfigList
	OtherWant []string
	// Concurrent defaults to List.
	Concurrent *libcni.NetworkConfigList
	Rounds     int
	SameOnly   bool
	// Reservations: List's host-local network holds one address (the
	// first attachment's) after the refused ADDs and after the rounds.
	Reservations bool
	// Link identifies the pod's eth0 (default: its ifindex and MAC).
	Link func(t *testing.T, pod *NS) string
	// Added and Deleted, if set, check a round's winner after its CHECK
	// (in pod) and after its DEL.
	Added   func(t *testing.T, round int, pod *NS)
	Deleted func(t *testing.T, round int)
}

// Run runs the test in r's node.
func (c RepeatedAdd) Run(t *testing.T, r *Runtime) {
	t.Helper()
	if c.Other == nil {
		c.Other = c.List
	}
	if c.OtherWant == nil {
		c.OtherWant = c.Want
	}
	if c.Concurrent == nil {
		c.Concurrent = c.List
	}
	if c.Link == nil {
		c.Link = ifindexMAC
	}
	// The node's snapshot does not count the host-local network
	// directories (not reservations) that the other networks create.
	node := r.Snapshotter()
	node.Ignore = append([]*regexp.Regexp(nil), node.Ignore...)
	for _, l := range []*libcni.NetworkConfigList{c.Other, c.Concurrent} {
		if l.Name != c.List.Name {
			node.Ignore = append(node.Ignore, regexp.MustCompile(`^files: networks/`+regexp.QuoteMeta(l.Name)+`/ `))
		}
	}
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(c.List, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	before := c.take(t, node, pod)
	reservations := func(when string) {
		if !c.Reservations {
			return
		}
		if got := r.Reservations(c.List.Name); len(got) != 1 {
			t.Errorf("host-local holds %v%s, want the first attachment's address only", got, when)
		}
	}
	for _, o := range []struct {
		what string
		l    *libcni.NetworkConfigList
		att  *Attachment
		want []string
	}{
		{"a repeated ADD", c.List, a, c.Want},
		{"an ADD of another container ID", c.Other, r.Attach(pod, "eth0"), c.OtherWant},
	} {
		_, err := r.Add(o.l, o.att)
		if err == nil {
			t.Errorf("%s succeeded, want an error naming %q", o.what, o.want)
		}
		for _, w := range o.want {
			if err != nil && !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want an error naming %q", o.what, err, w)
			}
		}
		c.assertSame(t, r, node, pod, a, before, o.what)
		if o.att != a {
			// The runtime DELs the container whose ADD was refused.
			if err := r.Del(o.l, o.att); err != nil {
				t.Errorf("DEL of the refused container ID: %v", err)
			}
			c.assertSame(t, r, node, pod, a, before, "the DEL of the refused container ID")
		}
	}
	reservations("")
	l2 := c.Concurrent
	for round := 0; round < c.Rounds; round++ {
		for _, same := range []bool{true, false} {
			if !same && c.SameOnly {
				continue
			}
			p := r.Pod(t)
			atts := []*Attachment{r.Attach(p, "eth0"), r.Attach(p, "eth0")}
			if same {
				atts[1] = atts[0]
			}
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range atts {
				wg.Add(1)
				go func(i int) { defer wg.Done(); _, errs[i] = r.Add(l2, atts[i]) }(i)
			}
			wg.Wait()
			if (errs[0] == nil) == (errs[1] == nil) {
				t.Fatalf("round %d (same attachment %v): %v, want exactly one error", round, same, errs)
			}
			won := 0
			if errs[0] != nil {
				won = 1
			}
			if err := r.Check(l2, atts[won]); err != nil {
				t.Errorf("round %d (same attachment %v): CHECK of the ADD that succeeded: %v (the other: %v)", round, same, err, errs[1-won])
			}
			if c.Added != nil {
				c.Added(t, round, p)
			}
			if !same {
				// The runtime DELs the container whose ADD failed: the
				// winner's eth0 is not its to delete.
				if err := r.Del(l2, atts[1-won]); err != nil {
					t.Fatalf("DEL of the ADD that failed: %v", err)
				}
				if err := r.Check(l2, atts[won]); err != nil {
					t.Errorf("round %d: CHECK of the winner after the loser's DEL: %v", round, err)
				}
			}
			if err := r.Del(l2, atts[won]); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if got := p.Links(t); len(got) != 1 {
				t.Errorf("round %d: the pod has %v after DEL, want lo", round, got)
			}
			if c.Deleted != nil {
				c.Deleted(t, round)
			}
		}
	}
	reservations(" after the concurrent rounds")
	c.assertSame(t, r, node, pod, a, before, "the concurrent rounds")
}

// attachment is what must not change in a working attachment when
// another ADD fails.
type attachment struct {
	node, pod *Snapshot
	link      string
}

func (c RepeatedAdd) take(t *testing.T, node *Snapshotter, pod *NS) attachment {
	t.Helper()
	return attachment{node: node.Take(t), pod: (&Snapshotter{Node: pod}).Take(t), link: c.Link(t, pod)}
}

func (c RepeatedAdd) assertSame(t *testing.T, r *Runtime, node *Snapshotter, pod *NS, a *Attachment, before attachment, what string) {
	t.Helper()
	now := c.take(t, node, pod)
	if d := before.node.Diff(now.node); d != "" {
		t.Errorf("%s changed the node:\n%s", what, d)
	}
	if d := before.pod.Diff(now.pod); d != "" {
		t.Errorf("%s changed the pod:\n%s", what, d)
	}
	if now.link != before.link {
		t.Errorf("%s replaced the pod's eth0: %s, was %s", what, now.link, before.link)
	}
	if err := r.Check(c.List, a); err != nil {
		t.Errorf("CHECK of the first attachment after %s: %v", what, err)
	}
}

// ifindexMAC is the ifindex and MAC of eth0 in pod (from ip's JSON: its
// text output may start with warnings about peer netns ids).
func ifindexMAC(t *testing.T, pod *NS) string {
	t.Helper()
	out, err := pod.Command("ip", "-j", "link", "show", "eth0").Output()
	if err != nil {
		t.Fatalf("the pod's eth0 is gone (ip link show eth0: %v)", err)
	}
	var links []struct {
		Index   int    `json:"ifindex"`
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show eth0: %v: %s", err, out)
	}
	return fmt.Sprintf("%d %s", links[0].Index, links[0].Address)
}
