package conformance

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(mainRunner{m}) }

type mainRunner struct{ m *testing.M }

func (r mainRunner) Run() int {
	code := r.m.Run()
	if refMerged != "" {
		os.RemoveAll(refMerged)
	}
	return code
}

var (
	refOnce   sync.Once
	refMerged string
	refErr    error
)

// refSource is the directory of the reference plugins:
// CNIBOX_CONFORMANCE_REF (scripts/vmtest sets it in the VM), REF_CNI_PATH
// (make conformance sets it), or where make ref-plugins builds v1.9.1.
func refSource() string {
	for _, v := range []string{"CNIBOX_CONFORMANCE_REF", "REF_CNI_PATH"} {
		if d := os.Getenv(v); d != "" {
			return d
		}
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		cache = filepath.Join(os.Getenv("HOME"), ".cache")
	}
	return filepath.Join(cache, "cnibox", "ref-v1.9.1")
}

// debianRef holds Debian's 1.1.1 plugins: the fallback for a plugin the
// v1.9.1 directory lacks.
const debianRef = "/usr/lib/cni"

// referenceDir returns a directory of the reference plugins: one symlink
// per plugin to refSource's, or to Debian's where refSource lacks it.
func referenceDir(t *testing.T) string {
	t.Helper()
	src := refSource()
	refOnce.Do(func() {
		if ents, err := os.ReadDir(src); err != nil || len(ents) == 0 {
			refErr = fmt.Errorf("the reference plugins v1.9.1 are not in %s (make ref-plugins builds them): %v", src, err)
			return
		}
		refMerged, refErr = os.MkdirTemp("", "cnibox-conformance-ref-")
		if refErr != nil {
			return
		}
		for _, dir := range []string{src, debianRef} {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				link := filepath.Join(refMerged, e.Name())
				if _, err := os.Lstat(link); err == nil {
					continue
				}
				if refErr = os.Symlink(filepath.Join(dir, e.Name()), link); refErr != nil {
					return
				}
			}
		}
	})
	if refErr != nil {
		if os.Getenv("REF_CNI_PATH") != "" || os.Getenv("CNIBOX_CONFORMANCE_REF") != "" {
			t.Fatal(refErr)
		}
		t.Skip(refErr)
	}
	return refMerged
}

// report collects every case's divergences for the summary.
type report struct {
	mu       sync.Mutex
	status   map[string]string // case: identical, intentional, unexplained
	divs     []Divergence
	skipped  map[string]string // case: why
	declUsed map[int]bool
}

func (r *report) add(c string, divs []Divergence) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := "identical"
	for _, d := range divs {
		if d.Reason == "" {
			st = "unexplained"
		} else if st == "identical" {
			st = "intentional"
		}
	}
	r.status[c] = st
	r.divs = append(r.divs, divs...)
}

func (r *report) skip(c, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.skipped[c] = why
}

// print writes one line per divergence and the summary, to stdout and to
// CNIBOX_CONFORMANCE_REPORT when it names a file.
func (r *report) print(t *testing.T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sort.SliceStable(r.divs, func(i, j int) bool {
		a, b := r.divs[i], r.divs[j]
		if a.Case != b.Case {
			return a.Case < b.Case
		}
		return a.Run < b.Run
	})
	var b strings.Builder
	for _, d := range r.divs {
		fmt.Fprintln(&b, d)
	}
	n := map[string]int{}
	for _, st := range r.status {
		n[st]++
	}
	if len(r.skipped) > 0 {
		why := map[string]int{}
		for _, w := range r.skipped {
			why[w]++
		}
		var ws []string
		for w, k := range why {
			ws = append(ws, fmt.Sprintf("%d: %s", k, w))
		}
		sort.Strings(ws)
		fmt.Fprintf(&b, "skipped %d cases (%s)\n", len(r.skipped), strings.Join(ws, "; "))
	}
	fmt.Fprintf(&b, "%d cases, %d identical, %d intentional, %d unexplained\n",
		len(r.status), n["identical"], n["intentional"], n["unexplained"])
	fmt.Print(b.String())
	if f := os.Getenv("CNIBOX_CONFORMANCE_REPORT"); f != "" {
		if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
			t.Errorf("write the report: %v", err)
		}
	}
}

// TestConformance runs every case of testdata/field on the reference and
// on cnibox, plus the mixed chains and switches, and compares them.
// Subtests are TestConformance/<source>/<case>; -run
// 'TestConformance/containerd/' runs one source.
func TestConformance(t *testing.T) {
	testnet.RequireRoot(t)
	cases, err := LoadCases(Dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := referenceDir(t)
	box := testnet.BinDir(t)
	applets := map[string]bool{}
	for _, a := range testnet.Applets(t) {
		applets[a] = true
	}
	switches := selectSwitches(cases, applets)
	vmRepresentative = representatives(cases)
	covered := map[string]bool{}
	var lines []string
	for c, as := range switches {
		for _, a := range as {
			covered[a] = true
		}
		lines = append(lines, strings.Join(as, ",")+": "+c)
	}
	sort.Strings(lines)
	for a := range applets {
		if !covered[a] && CniboxOnly[a] == "" {
			t.Errorf("no case of the corpus can switch sides for applet %s (one that uses it, expects no failure and whose every plugin is a cnibox applet)", a)
		}
	}
	rep := &report{status: map[string]string{}, skipped: map[string]string{}}
	t.Cleanup(func() {
		fmt.Printf("switch cases (ADD by one side, CHECK/GC/DEL by the other): %s\n", strings.Join(lines, "; "))
		for _, a := range slices.Sorted(maps.Keys(CniboxOnly)) {
			fmt.Printf("no reference for %s: %s\n", a, CniboxOnly[a])
		}
		rep.print(t)
	})

	bySource := map[string][]*Case{}
	var sources []string
	for _, c := range cases {
		src, _, _ := strings.Cut(c.Name, "/")
		if bySource[src] == nil {
			sources = append(sources, src)
		}
		bySource[src] = append(bySource[src], c)
	}
	for _, src := range sources {
		t.Run(src, func(t *testing.T) {
			t.Parallel()
			for _, c := range bySource[src] {
				_, name, _ := strings.Cut(c.Name, "/")
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					runCase(t, c, ref, box, applets, switches[c.Name], rep)
				})
			}
		})
	}
}

// runCase plays every run of one case and records its divergences.
func runCase(t *testing.T, c *Case, ref, box string, applets map[string]bool, switchFor []string, rep *report) {
	defer func() {
		if t.Skipped() {
			rep.skip(c.Name, skipReason(t))
		}
	}()
	if testnet.InVM() && len(c.kernelFeatures()) > 0 && len(switchFor) == 0 && !vmRepresentative[c.Name] && os.Getenv("CNIBOX_CONFORMANCE_VM_ALL") == "" {
		t.Skip("CNIBOX_IN_VM: the VM (TCG) plays the switch case and two representative cases of each applet and kernel feature; CNIBOX_CONFORMANCE_VM_ALL=1 plays all")
	}
	if feats := c.kernelFeatures(); len(feats) > 0 {
		for i := range feats {
			feats[i] = kernelFeature(feats[i])
		}
		testnet.RequireKernel(t, feats...)
	} else if testnet.InVM() {
		t.Skip("CNIBOX_IN_VM: needs no kernel feature the host lacks; ran on the host")
	}
	id := c.ContainerID
	if id == "" {
		id = randomID()
	}
	mk := func(name, dir string, verbs []string) plan {
		p := plan{name: name}
		for _, v := range verbs {
			verb, fail := strings.CutSuffix(v, "!")
			p.steps = append(p.steps, step{verb: verb, fail: fail, dir: dir})
		}
		return p
	}
	refPlan := mk("reference", ref, c.verbs())
	plans := []plan{refPlan, mk("cnibox", box, c.verbs())}
	types := c.types()
	// In the VM (TCG, slow) a case runs on each side only: the mixed
	// chains and switches of the applets it needs ran on the host for
	// every other case of those applets.
	vm := testnet.InVM()
	if len(c.Conflist) > 0 && len(types) > 1 && !vm {
		// Mixed chains: one side's main plugin (and its IPAM) with the
		// other side's meta plugins, through a directory of symlinks.
		plans = append(plans,
			mk("cnibox-main+ref-meta", mixDir(t, c, box, ref), c.verbs()),
			mk("ref-main+cnibox-meta", mixDir(t, c, ref, box), c.verbs()))
	}
	if len(c.Conflist) > 0 && !vm && switchable(c, applets) {
		// The one-exec chain must leave the kernel and the result exactly
		// as cnibox's ordinary chain does: no divergence is intentional.
		p := mk("cnibox-one-exec", box, c.verbs())
		p.oneExec = true
		plans = append(plans, p)
	}
	if len(switchFor) > 0 {
		// Switches: one side ADDs, the other CHECKs, GCs and DELs.
		verbs := switchVerbs(c)
		plans = append(plans, mk("switch:reference", ref, verbs))
		for _, sw := range [][2]string{{"ref", "cnibox"}, {"cnibox", "ref"}} {
			dirs := map[string]string{"ref": ref, "cnibox": box}
			p := mk("switch:"+sw[0]+"->"+sw[1], dirs[sw[1]], verbs)
			p.steps[0].dir = dirs[sw[0]]
			plans = append(plans, p)
		}
	}

	outs := map[string]*outcome{}
	var mu sync.Mutex
	t.Run("runs", func(t *testing.T) {
		for _, p := range plans {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				o := play(t, c, p, id)
				mu.Lock()
				outs[p.name] = o
				mu.Unlock()
			})
		}
	})
	var divs []Divergence
	for _, p := range plans {
		if outs[p.name] == nil {
			divs = append(divs, Divergence{Case: c.Name, Run: p.name, Kind: "run", Detail: "the harness could not finish this run (see the test log)"})
		}
	}
	if len(divs) == 0 {
		divs = append(divs, checkCase(c, refPlan, outs["reference"])...)
		for _, p := range plans {
			base := "reference"
			switch {
			case p.name == "reference" || p.name == "switch:reference" || p.oneExec:
				continue
			case strings.HasPrefix(p.name, "switch:"):
				base = "switch:reference"
			}
			divs = append(divs, compare(c, p, outs[base], outs[p.name], p.name)...)
		}
	}
	for i := range divs {
		if in := classify(divs[i], append(c.types(), c.ipamTypes()...), divs); in != nil {
			divs[i].Reason = in.Summary
		} else {
			t.Errorf("unexplained: %s", divs[i])
		}
	}
	if outs["cnibox"] != nil && outs["cnibox-one-exec"] != nil {
		for _, p := range plans {
			if p.oneExec {
				one := compare(c, p, outs["cnibox"], outs[p.name], p.name)
				for _, d := range one {
					t.Errorf("one exec differs from cnibox's ordinary chain: %s", d)
				}
				divs = append(divs, one...)
			}
		}
	}
	rep.add(c.Name, divs)
}

func skipReason(t *testing.T) string {
	// testing.T does not return its skip message; the runner's skips are
	// all about the kernel or the reference.
	return "kernel feature missing here (runs in the VM) or reference missing"
}

// vmRepresentative are the kernel cases the VM plays (representatives).
var vmRepresentative map[string]bool

// representatives picks, for each main plugin type and set of kernel
// features, the first two cases by name: the VM is emulated (TCG) and a
// run there takes seconds, so it plays a sample of the kernel cases.
func representatives(cases []*Case) map[string]bool {
	out := map[string]bool{}
	n := map[string]int{}
	for _, c := range cases {
		feats := c.kernelFeatures()
		if len(feats) == 0 {
			continue
		}
		key := strings.Join(append(c.types()[:1], feats...), " ")
		if n[key] < 2 {
			n[key]++
			out[c.Name] = true
		}
	}
	return out
}

// switchVerbs is the sequence of a switch: ADD by one side, then CHECK
// (from 0.4.0), GC with the attachment valid (from 1.1.0), DEL, DEL by
// the other.
func switchVerbs(c *Case) []string {
	v := []string{"ADD"}
	if versionAtLeast(c.version(), "0.4.0") {
		v = append(v, "CHECK")
	}
	if versionAtLeast(c.version(), "1.1.0") {
		v = append(v, "GC")
	}
	return append(v, "DEL", "DEL")
}

// selectSwitches picks, for every applet, one case to switch sides on:
// one that uses the applet (as a plugin of the chain or as IPAM), whose
// every plugin is a cnibox applet and that expects no failure,
// preferring one that needs no kernel feature (it runs on the host; the
// others run in the VM), then spec 1.1.0 (GC), then the name order.
// It returns case name -> applets it stands for.
func selectSwitches(cases []*Case, applets map[string]bool) map[string][]string {
	out := map[string][]string{}
	var names []string
	for a := range applets {
		names = append(names, a)
	}
	sort.Strings(names)
	for _, a := range names {
		var best *Case
		for _, c := range cases {
			if !switchable(c, applets) || !slices.Contains(append(c.types(), c.ipamTypes()...), a) {
				continue
			}
			if best == nil || better(c, best) {
				best = c
			}
		}
		if best != nil {
			out[best.Name] = append(out[best.Name], a)
		}
	}
	return out
}

// better reports whether c is a better switch case than best.
func better(c, best *Case) bool {
	ck, bk := len(c.kernelFeatures()) > 0, len(best.kernelFeatures()) > 0
	if ck != bk {
		return !ck
	}
	return versionAtLeast(c.version(), "1.1.0") && !versionAtLeast(best.version(), "1.1.0")
}

func switchable(c *Case, applets map[string]bool) bool {
	if c.Expect != "" {
		return false
	}
	for _, v := range c.verbs() {
		if strings.HasSuffix(v, "!") {
			return false
		}
	}
	if c.verbs()[0] != "ADD" {
		return false
	}
	for _, p := range append(c.types(), c.ipamTypes()...) {
		if !applets[p] {
			return false
		}
	}
	return true
}

// mixDir makes a plugin directory where the chain's main plugin (the
// first) and its IPAM come from mainDir and every other plugin from
// metaDir, falling back to the other side for a plugin one side lacks.
func mixDir(t *testing.T, c *Case, mainDir, metaDir string) string {
	dir := t.TempDir()
	main := map[string]bool{}
	ps := c.plugins()
	if len(ps) > 0 {
		if tp, _ := ps[0]["type"].(string); tp != "" {
			main[tp] = true
		}
		if ipam, ok := ps[0]["ipam"].(map[string]any); ok {
			if tp, _ := ipam["type"].(string); tp != "" {
				main[tp] = true
			}
		}
	}
	names := map[string]bool{}
	for _, d := range []string{mainDir, metaDir} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			names[e.Name()] = true
		}
	}
	for name := range names {
		src, other := metaDir, mainDir
		if main[name] {
			src, other = mainDir, metaDir
		}
		if _, err := os.Stat(filepath.Join(src, name)); err != nil {
			src = other
		}
		if err := os.Symlink(filepath.Join(src, name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestCorpus checks that every case of the corpus parses, names its
// source and plays known verbs and fixtures (LoadCase), without root.
func TestCorpus(t *testing.T) {
	cases, err := LoadCases(Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) == 0 {
		t.Fatal("no case under " + Dir)
	}
	for _, c := range cases {
		if strings.TrimSpace(c.Source) == "" || strings.TrimSpace(c.About) == "" {
			t.Errorf("%s: source and about are required", c.Name)
		}
	}
}

const (
	readmeBegin = "<!-- conformance:intentional:begin (generated from shared/testing/conformance/intentional.go; CNIBOX_UPDATE_README=1 go test -run TestReadmeTable ./shared/testing/conformance) -->\n"
	readmeEnd   = "<!-- conformance:intentional:end -->"
)

// TestReadmeTable checks that README.md's table of differences from the
// reference is the one Intentionals generates, so the two cannot drift.
// CNIBOX_UPDATE_README=1 rewrites it.
func TestReadmeTable(t *testing.T) {
	path := "../../../README.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, readmeBegin)
	j := strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the generated table between %q and %q", strings.TrimSpace(readmeBegin), readmeEnd)
	}
	want := ReadmeTable()
	if got := s[i+len(readmeBegin) : j]; got != want {
		if os.Getenv("CNIBOX_UPDATE_README") == "1" {
			if err := os.WriteFile(path, []byte(s[:i+len(readmeBegin)]+want+s[j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("README.md's table of differences differs from intentional.go (CNIBOX_UPDATE_README=1 go test -run TestReadmeTable ./shared/testing/conformance rewrites it):\n--- README.md\n%s--- intentional.go\n%s", got, want)
	}
}
