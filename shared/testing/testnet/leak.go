package testnet

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Snapshot is what a node netns holds that a plugin can leave behind:
// links, addresses, routes, qdiscs, iptables and ip6tables rules, the
// nftables ruleset, and the files of some state directories (the IPAM
// store). Each section is a sorted list of normalised lines, so two
// snapshots compare with Diff whatever order the kernel dumps them in.
//
// Volatile parts are dropped so that equal state compares equal: link
// flags and operstate, packet counters, ifindexes, address lifetimes and
// flags, route expiries. A link is its name, kind, master and alias; an address is
// its device and prefix; a file is its path, mode and content.
type Snapshot struct {
	Sections map[string][]string
	// Raw holds, for a Batch snapshot, each command's output keyed by
	// the command line ("ip -o -d link show", and Snapshotter.Extra's).
	Raw map[string]string
}

// Snapshotter takes snapshots of one node. Ignore holds patterns of lines
// (any section, "section: line" form) that are bookkeeping rather than
// state, such as host-local's last-reserved marker.
type Snapshotter struct {
	Node   *NS
	Dirs   []string // state directories whose files are part of the snapshot
	Ignore []*regexp.Regexp
	// NoSettle skips the wait for IPv6 DAD to finish: for a caller that
	// leaves out the routes DAD's end adds (the local table's local and
	// anycast routes), such as the conformance runner, which takes
	// thousands of snapshots.
	NoSettle bool
	// Batch runs the snapshot's commands in one shell inside the node
	// (NS.RunBatch: one "ip netns exec", not one per command), for
	// callers that take many snapshots.
	Batch bool
	// Extra are more commands a Batch snapshot runs in the same shell;
	// their outputs are in Snapshot.Raw, not in Sections.
	Extra [][]string
}

// DefaultIgnore are the lines every snapshot leaves out: host-local's lock,
// last-reserved markers and index (networks/.cnibox/), which are not
// reservations, and the libcni result cache is not taken at all.
var DefaultIgnore = []*regexp.Regexp{
	regexp.MustCompile(`^files: .*/lock `),
	regexp.MustCompile(`^files: .*/last_reserved_ip\.`),
	regexp.MustCompile(`^files: .*/\.cnibox(/| )`),
}

// Snapshotter returns a snapshotter of the runtime's node and its state
// and run dirs (/var/lib/cni and /run/cni of its plugins).
func (r *Runtime) Snapshotter() *Snapshotter {
	return &Snapshotter{Node: r.Node, Dirs: []string{r.StateDir, r.RunDir}, Ignore: DefaultIgnore}
}

// Snapshot takes a snapshot of the runtime's node and state and run dirs.
func (r *Runtime) Snapshot(t testing.TB) *Snapshot {
	t.Helper()
	return r.Snapshotter().Take(t)
}

// Take takes a snapshot now.
func (s *Snapshotter) Take(t testing.TB) *Snapshot {
	t.Helper()
	snap := &Snapshot{Sections: map[string][]string{}}
	if !s.NoSettle {
		s.settle()
	}
	cmds := [][]string{{"ip", "-o", "-d", "link", "show"}, {"ip", "-o", "addr", "show"},
		{"ip", "-4", "-o", "route", "show", "table", "all"}, {"ip", "-6", "-o", "route", "show", "table", "all"},
		{"ip", "rule", "show"}, {"ip", "-6", "rule", "show"}, {"tc", "qdisc", "show"},
		{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}}
	cmds = append(cmds, s.Extra...)
	outs := s.collect(t, cmds)
	if s.Batch {
		snap.Raw = outs
	}
	run := func(name string, args ...string) string {
		return outs[strings.Join(append([]string{name}, args...), " ")]
	}
	snap.add("link", linkLines(run("ip", "-o", "-d", "link", "show")))
	snap.add("addr", addrLines(run("ip", "-o", "addr", "show")))
	snap.add("route4", routeLines(run("ip", "-4", "-o", "route", "show", "table", "all")))
	snap.add("route6", routeLines(run("ip", "-6", "-o", "route", "show", "table", "all")))
	snap.add("rule", strings.Split(run("ip", "rule", "show")+run("ip", "-6", "rule", "show"), "\n"))
	snap.add("qdisc", qdiscLines(run("tc", "qdisc", "show")))
	snap.add("iptables", pruneEmpty(saveLines(run("iptables-save"))))
	snap.add("ip6tables", pruneEmpty(saveLines(run("ip6tables-save"))))
	snap.add("nft", pruneEmpty(nftLines(run("nft", "list", "ruleset"))))
	for _, d := range s.Dirs {
		snap.add("files", fileLines(t, d))
	}
	for sec, lines := range snap.Sections {
		kept := lines[:0]
		for _, l := range lines {
			if !s.ignored(sec + ": " + l) {
				kept = append(kept, l)
			}
		}
		sort.Strings(kept)
		snap.Sections[sec] = kept
	}
	return snap
}

// collect runs the snapshot's commands (in one shell when s.Batch). A
// netlink dump that the kernel marks interrupted (the netns changed
// while it was read: "Dump was interrupted and may be inconsistent")
// is taken again, as iproute2 leaves the retry to its caller.
func (s *Snapshotter) collect(t testing.TB, cmds [][]string) map[string]string {
	t.Helper()
	for attempt := 1; ; attempt++ {
		outs := make([]string, len(cmds))
		if s.Batch {
			var err error
			if outs, err = s.Node.RunBatch(cmds); err != nil {
				t.Fatalf("snapshot: %v", err)
			}
		} else {
			for i, c := range cmds {
				out, err := s.Node.Run(c[0], c[1:]...)
				if err != nil {
					t.Fatalf("snapshot: %v", err)
				}
				outs[i] = out
			}
		}
		m := map[string]string{}
		interrupted := false
		for i, c := range cmds {
			m[strings.Join(c, " ")] = outs[i]
			interrupted = interrupted || strings.Contains(outs[i], "Dump was interrupted")
		}
		if !interrupted || attempt == 5 {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settle waits (up to 5 s) until no IPv6 address is tentative: a
// link-local address gets its local route only when DAD is done, and a
// snapshot taken in between would differ from a later one for nothing.
func (s *Snapshotter) settle() {
	for i := 0; i < 50; i++ {
		out, err := s.Node.Run("ip", "-6", "-o", "addr", "show", "tentative")
		if err != nil || strings.TrimSpace(out) == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *Snapshotter) ignored(line string) bool {
	for _, re := range s.Ignore {
		if re.MatchString(line) {
			return true
		}
	}
	return false
}

func (s *Snapshot) add(section string, lines []string) {
	for _, l := range lines {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			s.Sections[section] = append(s.Sections[section], l)
		}
	}
}

// Diff returns what after holds that s does not ("+ section: line") and
// what s held that after lost ("- section: line"), one per line, or ""
// when they hold the same.
func (s *Snapshot) Diff(after *Snapshot) string {
	var out []string
	secs := map[string]bool{}
	for k := range s.Sections {
		secs[k] = true
	}
	for k := range after.Sections {
		secs[k] = true
	}
	for sec := range secs {
		count := map[string]int{}
		for _, l := range s.Sections[sec] {
			count[l]--
		}
		for _, l := range after.Sections[sec] {
			count[l]++
		}
		for l, n := range count {
			for ; n > 0; n-- {
				out = append(out, "+ "+sec+": "+l)
			}
			for ; n < 0; n++ {
				out = append(out, "- "+sec+": "+l)
			}
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// Count returns how many lines differ between s and after.
func (s *Snapshot) Count(after *Snapshot) int {
	d := s.Diff(after)
	if d == "" {
		return 0
	}
	return strings.Count(d, "\n") + 1
}

// AssertSame fails the test when the node no longer holds exactly what
// the snapshot held, listing every line added or lost.
func (s *Snapshotter) AssertSame(t testing.TB, before *Snapshot, what string) {
	t.Helper()
	if d := before.Diff(s.Take(t)); d != "" {
		t.Errorf("%s: the node differs from its snapshot (+ leaked, - lost):\n%s", what, d)
	}
}

// AssertNoLeaks is AssertSame for the runtime's node.
func (r *Runtime) AssertNoLeaks(t testing.TB, before *Snapshot, what string) {
	t.Helper()
	r.Snapshotter().AssertSame(t, before, what)
}

var (
	linkRe  = regexp.MustCompile(`^\d+: ([^:@ ]+)(@[^: ]+)?: `)
	kindRe  = regexp.MustCompile(`\n?\s+(veth|bridge|ifb|macvlan|ipvlan|vlan|dummy|vxlan|vrf|ipip|gre|tun|bridge_slave)\s`)
	keepTok = map[string]bool{"master": true, "alias": true}
)

// linkLines turns "ip -o -d link" into "name kind master=X alias=Y" lines
// (host-device keeps a moved device's node name in its alias).
func linkLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		m := linkRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		line := m[1]
		f := strings.Fields(l)
		for i, tok := range f {
			if keepTok[tok] && i+1 < len(f) {
				line += " " + tok + "=" + f[i+1]
			}
		}
		if k := kindRe.FindStringSubmatch(strings.ReplaceAll(l, `\`, " ")); k != nil {
			line += " kind=" + k[1]
		}
		lines = append(lines, line)
	}
	return lines
}

// addrLines turns "ip -o addr" into "dev family prefix" lines.
func addrLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		lines = append(lines, f[1]+" "+f[2]+" "+f[3])
	}
	return lines
}

var routeDrop = regexp.MustCompile(`\b(linkdown|expires \S+|pref \S+|offload|trap|rt_offload)\b`)

func routeLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		lines = append(lines, routeDrop.ReplaceAllString(l, ""))
	}
	return lines
}

var refcntRe = regexp.MustCompile(`\brefcnt \d+`)

func qdiscLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		lines = append(lines, refcntRe.ReplaceAllString(l, ""))
	}
	return lines
}

var counterRe = regexp.MustCompile(`\[\d+:\d+\]`)

// saveLines keeps iptables-save's tables, chains and rules, without
// comments and counters; a line is prefixed with its table.
func saveLines(out string) []string {
	var lines []string
	table := ""
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "#"), l == "COMMIT", strings.TrimSpace(l) == "":
		case strings.HasPrefix(l, "*"):
			table = l[1:]
			lines = append(lines, "*"+table)
		default:
			lines = append(lines, table+" "+counterRe.ReplaceAllString(l, ""))
		}
	}
	return lines
}

var emptyRe = regexp.MustCompile(`^(\*\w+|\w+ :(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT ?|table (ip|ip6) (filter|nat|mangle|raw|security)( / chain [A-Z]+( / type \w+ hook \w+ priority [^;]+; policy accept;)?)?)$`)

// pruneEmpty drops tables that hold nothing but built-in chains with an
// accept policy: iptables-nft makes them on first use and never removes
// them, and they change nothing a packet sees.
func pruneEmpty(lines []string) []string {
	tableOf := func(l string) string {
		if strings.HasPrefix(l, "*") {
			return l[1:]
		}
		if strings.HasPrefix(l, "table ") {
			t, _, _ := strings.Cut(l, " / ")
			return t
		}
		t, _, _ := strings.Cut(l, " ")
		return t
	}
	busy := map[string]bool{}
	for _, l := range lines {
		if !emptyRe.MatchString(strings.TrimSpace(l)) {
			busy[tableOf(l)] = true
		}
	}
	var kept []string
	for _, l := range lines {
		if busy[tableOf(l)] {
			kept = append(kept, l)
		}
	}
	return kept
}

var nftCounterRe = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// nftLines flattens "nft list ruleset": every line is prefixed with its
// table and chain, so a rule moved between chains shows as a difference.
func nftLines(out string) []string {
	var lines []string
	var table, chain string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(nftCounterRe.ReplaceAllString(l, "counter"))
		switch {
		case l == "" || l == "}" || strings.HasPrefix(l, "#"):
			continue
		case strings.HasPrefix(l, "table "):
			table, chain = strings.TrimSuffix(l, " {"), ""
			lines = append(lines, table)
		case strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "map "):
			chain = strings.TrimSuffix(l, " {")
			lines = append(lines, table+" / "+chain)
		default:
			lines = append(lines, table+" / "+chain+" / "+l)
		}
	}
	return lines
}

// fileLines lists the files under dir as "path mode content" (content
// quoted, at most 256 bytes) and directories as "path/ mode".
func fileLines(t testing.TB, dir string) []string {
	var lines []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		if d.IsDir() {
			lines = append(lines, fmt.Sprintf("%s/ %v", rel, info.Mode().Perm()))
			return nil
		}
		data, _ := os.ReadFile(path)
		if len(data) > 256 {
			data = data[:256]
		}
		lines = append(lines, fmt.Sprintf("%s %v %q", rel, info.Mode().Perm(), data))
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return lines
}

// WaitLinksGone waits (up to 10 s) until none of the named links exists in
// the node any more: a veth whose peer was in a deleted netns goes away
// only when the kernel has finished destroying that netns, which it does
// asynchronously. Safe to call from any goroutine.
func (r *Runtime) WaitLinksGone(names ...string) error {
	for _, name := range names {
		for i := 0; ; i++ {
			if _, err := r.Node.Run("ip", "link", "show", "dev", name); err != nil {
				break
			}
			if i == 100 {
				return fmt.Errorf("link %s still exists 10 s after its peer's netns was deleted", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// HostVeths returns the names of the node-side veths of an ADD result
// (interfaces without a sandbox, named veth*), as bridge and ptp report them.
func HostVeths(res types.Result) []string {
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil
	}
	var out []string
	for _, i := range cur.Interfaces {
		if i.Sandbox == "" && strings.HasPrefix(i.Name, "veth") {
			out = append(out, i.Name)
		}
	}
	return out
}
