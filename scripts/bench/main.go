// Command bench measures cnibox side by side with the reference plugins
// and with the floor (floor.go: no-op plugins plus the scenario's kernel
// work done in this process): the same scenarios, in the same run, each
// in its own throwaway node network namespace, driven through libcni as a
// runtime drives them. It prints one table: per scenario and verb, the
// median and p95 of each side, the floor's median, reference / cnibox
// (how many times faster cnibox is) and cnibox / floor (how far above
// what is physically needed it still sits).
//
//	make bench                       # cnibox vs the reference v1.9.1 (REF_CACHE) and the floor
//	REF_CNI_PATH=/path/to/v1.9.1 make bench
//	go run ./scripts/bench -n 50 -run 'bridge|ptp'
//	go run ./scripts/bench -n 10 -run full -plugins  # and each plugin's median per verb
//
// It needs root (it makes network namespaces) and never touches the root
// netns, its firewall or /var/lib/cni: every state directory is temporary,
// and it runs in a private mount namespace where /var/lib/cni is one too.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
)

var (
	iterations = flag.Int("n", 30, "iterations per scenario and side")
	runFilter  = flag.String("run", "", "only scenarios matching this regexp")
	binary     = flag.String("bin", "bin/cnibox", "the cnibox binary")
	perPlugin  = flag.Bool("plugins", false, "also print each plugin's median per verb (where a chain's time goes)")
	refDir     = flag.String("ref", envOr("REF_CNI_PATH", "/usr/lib/cni"), "directory of the reference plugins (make bench: the v1.9.1 build)")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// side is one implementation under test: a CNI plugin directory.
type side struct {
	name    string
	dir     string
	applets map[string]bool
}

func (s *side) has(plugins ...string) bool {
	for _, p := range plugins {
		if !s.applets[p] {
			return false
		}
	}
	return true
}

// scenario is one network, measured per verb over many pods.
type scenario struct {
	name     string
	plugins  []string // what a side must implement to run it
	conflist string   // with @STATE@, @NET@ and @MASTER@ placeholders
	// refConflist, when set, is what the reference runs instead: the same
	// network in the reference's own terms (for cnibox-only settings).
	refConflist string
	caps        map[string]any
	// setup prepares the node (e.g. a master link, or existing reservations).
	setup func(node, state string) error
	// parallel > 0 runs `pods` pods with this many in flight and reports wall time.
	parallel, pods int
	// verbs to time; the default is ADD, CHECK, DEL.
	verbs []string
	// floor is what the kernel must do for one pod of this scenario, done
	// by the floor side in the bench's own process (see floor.go).
	floor floorOps
}

type sample struct {
	durations map[string][]time.Duration
	failures  int
	failed    []string // the verb of each failure
	maxRSS    int64    // KiB, largest plugin process of any ADD
	wall      map[string]time.Duration
}

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fatalf("bench needs root: it makes network namespaces")
	}
	tmp, err := os.MkdirTemp("", "cnibox-bench-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(tmp)
	if os.Getenv("CNIBOX_BENCH_MOUNTNS") == "" {
		code := inPrivateMounts(tmp)
		os.RemoveAll(tmp)
		os.Exit(code)
	}

	cnibox := &side{name: "cnibox", dir: filepath.Join(tmp, "cnibox")}
	if out, err := exec.Command(*binary, "install", "--dir", cnibox.dir).CombinedOutput(); err != nil {
		fatalf("install %s: %v: %s", *binary, err, out)
	}
	ref := &side{name: "reference", dir: *refDir}
	floor, err := newFloorSide(tmp)
	if err != nil {
		fatalf("floor: %v", err)
	}
	for _, s := range []*side{cnibox, ref, floor} {
		s.applets = map[string]bool{}
		entries, err := os.ReadDir(s.dir)
		if err != nil {
			fatalf("read %s: %v", s.dir, err)
		}
		for _, e := range entries {
			s.applets[e.Name()] = true
		}
	}

	filter := regexp.MustCompile(*runFilter)
	var rows []row
	for _, sc := range scenarios() {
		if !filter.MatchString(sc.name) {
			continue
		}
		var sides []*side
		for _, s := range []*side{cnibox, ref, floor} {
			if s.has(sc.plugins...) {
				sides = append(sides, s)
			}
		}
		fmt.Fprintf(os.Stderr, "%-34s ", sc.name)
		results, err := runScenario(sc, sides, tmp)
		if err != nil {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
			continue
		}
		for _, s := range sides {
			if r := results[s.name]; r != nil {
				fmt.Fprintf(os.Stderr, "%s: %d failures  ", s.name, r.failures)
			}
		}
		fmt.Fprintln(os.Stderr)
		rows = append(rows, tabulate(sc, results)...)
	}
	rows = append(rows, sizeRows(cnibox, ref)...)
	rows = append(rows, versionRows(cnibox, ref, floor)...)
	printTable(rows)
}

// inPrivateMounts runs the bench again in a private mount namespace where
// /var/lib/cni is an empty temporary directory: plugins that keep state
// there (cnibox's firewall and portmap records, libcni's defaults) never
// touch the machine's. It returns the exit code.
func inPrivateMounts(tmp string) int {
	state := filepath.Join(tmp, "var-lib-cni")
	if err := os.MkdirAll(state, 0o700); err != nil {
		fatalf("%v", err)
	}
	self, err := os.Executable()
	if err != nil {
		fatalf("%v", err)
	}
	script := `mount --make-rprivate / && mkdir -p /var/lib/cni && mount --bind "$0" /var/lib/cni && exec "$@"`
	cmd := exec.Command("unshare", append([]string{"-m", "sh", "-c", script, state, self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), "CNIBOX_BENCH_MOUNTNS=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fatalf("unshare: %v", err)
	}
	return 0
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	os.Exit(1)
}

const (
	hostLocal = `"ipam":{"type":"host-local","dataDir":"@STATE@/ipam","ranges":[[{"subnet":"10.77.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}`
)

func scenarios() []scenario {
	bridge := `{"type":"bridge","bridge":"cbench0","isGateway":true,"ipMasq":true,"hairpinMode":true,` + hostLocal + `}`
	bridgeNft := `{"type":"bridge","bridge":"cbench0","isGateway":true,"ipMasq":true,"ipMasqBackend":"nftables","hairpinMode":true,` + hostLocal + `}`
	portMap := map[string]any{"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}}}
	full := map[string]any{
		"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}},
		"bandwidth":    map[string]any{"ingressRate": 10_000_000, "ingressBurst": 1_000_000, "egressRate": 10_000_000, "egressBurst": 1_000_000},
	}
	fullInner := bridge + `,
				{"type":"portmap","capabilities":{"portMappings":true}},
				{"type":"firewall","backend":"iptables"},
				{"type":"tuning","dataDir":"@STATE@/tuning","sysctl":{"net.ipv4.conf.IFNAME.rp_filter":"0"}},
				{"type":"bandwidth","capabilities":{"bandwidth":true}}`
	masterVeth := func(node, _ string) error {
		_, err := run("ip", "-n", node, "link", "add", "bmaster0", "type", "veth", "peer", "name", "bmaster1")
		if err == nil {
			_, err = run("ip", "-n", node, "link", "set", "bmaster0", "up")
		}
		return err
	}
	return []scenario{
		{
			name: "bridge + host-local", plugins: []string{"bridge", "host-local"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[` + bridge + `]}`,
			floor:    floorOps{link: "bridge", rules: true},
		},
		{
			name: "full chain (bridge…bandwidth)", plugins: []string{"bridge", "host-local", "portmap", "firewall", "tuning", "bandwidth"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[` + bridge + `,
				{"type":"portmap","capabilities":{"portMappings":true}},
				{"type":"firewall","backend":"iptables"},
				{"type":"tuning","dataDir":"@STATE@/tuning","sysctl":{"net.ipv4.conf.IFNAME.rp_filter":"0"}},
				{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`,
			caps:  full,
			floor: floorOps{link: "bridge", bandwidth: true, sysctl: true, rules: true},
		},
		{
			// The same chain with cnibox's nftables backends (netlink, in
			// process: no iptables exec) against the reference's iptables
			// chain above, which is all the reference v1.1.1 has.
			name: "full chain, nftables backends", plugins: []string{"bridge", "host-local", "portmap", "firewall", "tuning", "bandwidth"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[` + bridgeNft + `,
				{"type":"portmap","backend":"nftables","capabilities":{"portMappings":true}},
				{"type":"firewall","backend":"nftables"},
				{"type":"tuning","dataDir":"@STATE@/tuning","sysctl":{"net.ipv4.conf.IFNAME.rp_filter":"0"}},
				{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`,
			refConflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[` + bridge + `,
				{"type":"portmap","capabilities":{"portMappings":true}},
				{"type":"firewall","backend":"iptables"},
				{"type":"tuning","dataDir":"@STATE@/tuning","sysctl":{"net.ipv4.conf.IFNAME.rp_filter":"0"}},
				{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`,
			caps:  full,
			floor: floorOps{link: "bridge", bandwidth: true, sysctl: true, rules: true},
		},
		{
			// The same chain as one exec: {"type":"cnibox","plugins":[...]}
			// (applets/chain) against the reference's ordinary chain; the
			// floor is one no-op exec plus the same kernel work.
			name: "full chain, one exec", plugins: []string{"bridge", "host-local", "portmap", "firewall", "tuning", "bandwidth"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[{"type":"cnibox",
				"capabilities":{"portMappings":true,"bandwidth":true},"plugins":[` + fullInner + `]}]}`,
			refConflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[` + fullInner + `]}`,
			caps:        full,
			floor:       floorOps{link: "bridge", bandwidth: true, sysctl: true, rules: true},
		},
		{
			name: "podman chain (0.4.0)", plugins: []string{"bridge", "host-local", "portmap", "firewall", "tuning"},
			conflist: `{"cniVersion":"0.4.0","name":"@NET@","plugins":[` + bridge + `,
				{"type":"portmap","capabilities":{"portMappings":true}},
				{"type":"firewall","backend":""},
				{"type":"tuning","dataDir":"@STATE@/tuning"}]}`,
			caps:  portMap,
			floor: floorOps{link: "bridge", rules: true},
		},
		{
			name: "containerd chain (bridge, portmap)", plugins: []string{"bridge", "host-local", "portmap"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[
				{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"promiscMode":true,` + hostLocal + `},
				{"type":"portmap","capabilities":{"portMappings":true}}]}`,
			caps:  portMap,
			floor: floorOps{link: "bridge", rules: true},
		},
		{
			name: "ptp + host-local", plugins: []string{"ptp", "host-local"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[{"type":"ptp","ipMasq":true,` + hostLocal + `}]}`,
			floor:    floorOps{link: "ptp", rules: true},
		},
		{
			name: "macvlan + host-local", plugins: []string{"macvlan", "host-local"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[{"type":"macvlan","master":"bmaster0",` + hostLocal + `}]}`,
			setup:    masterVeth,
			floor:    floorOps{link: "macvlan"},
		},
		{
			name: "100 pods, 8 parallel", plugins: []string{"bridge", "host-local"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[` + bridge + `]}`,
			parallel: 8, pods: 100,
			floor: floorOps{link: "bridge", rules: true},
		},
		{
			name: "host-local, 4k reservations", plugins: []string{"host-local"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[{"type":"host-local",` + hostLocal + `}]}`,
			setup:    reservations(4096), verbs: []string{"ADD", "DEL"},
		},
		{
			name: "host-local, 65k reservations", plugins: []string{"host-local"},
			conflist: `{"cniVersion":"1.0.0","name":"@NET@","plugins":[{"type":"host-local",` + hostLocal + `}]}`,
			setup:    reservations(65000), verbs: []string{"ADD", "DEL"},
		},
	}
}

// reservations fills the network's host-local store with n addresses held
// by other containers, in the reference's on-disk format.
func reservations(n int) func(node, state string) error {
	return func(_, state string) error {
		dir := filepath.Join(state, "ipam", "bench")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			ip := fmt.Sprintf("10.77.%d.%d", (i+2)/256, (i+2)%256)
			if (i+2)%256 == 0 || (i+2)%256 == 255 {
				continue
			}
			if err := os.WriteFile(filepath.Join(dir, ip), []byte(fmt.Sprintf("other-%d\r\neth0", i)), 0o600); err != nil {
				return err
			}
		}
		return nil
	}
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

var nsSeq int
var nsMu sync.Mutex

func newNS(prefix string) (string, error) {
	nsMu.Lock()
	nsSeq++
	name := fmt.Sprintf("cnibox-bench-%s-%d-%d", prefix, os.Getpid(), nsSeq)
	nsMu.Unlock()
	if _, err := run("ip", "netns", "add", name); err != nil {
		return "", err
	}
	_, err := run("ip", "-n", name, "link", "set", "lo", "up")
	return name, err
}

func delNS(name string) { run("ip", "netns", "del", name) }

// runScenario measures sc on every side. Each side gets its own node netns
// and state. One pod at a time, the sides take turns pod by pod (which
// goes first alternates), so that a busy machine's drift hits both alike;
// the parallel scenario runs one side after the other.
func runScenario(sc scenario, sides []*side, tmp string) (map[string]*sample, error) {
	var envs []*env
	defer func() {
		for _, e := range envs {
			e.close()
		}
	}()
	for _, s := range sides {
		e, err := newEnv(sc, s, tmp)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		envs = append(envs, e)
	}
	out := map[string]*sample{}
	if sc.parallel > 0 {
		for _, e := range envs {
			if err := e.parallel(); err != nil {
				return nil, fmt.Errorf("%s: %w", e.side.name, err)
			}
			out[e.side.name] = e.res
		}
		return out, nil
	}
	for i := 0; i < *iterations; i++ {
		for k := range envs {
			e := envs[(i+k)%len(envs)]
			if err := e.onePod(i); err != nil {
				return nil, fmt.Errorf("%s: %w", e.side.name, err)
			}
		}
	}
	for _, e := range envs {
		e.res.maxRSS = e.ex.maxRSS
		out[e.side.name] = e.res
		if *perPlugin {
			keys := make([]string, 0, len(e.ex.plugins))
			for k := range e.ex.plugins {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			fmt.Fprintf(os.Stderr, "\n  %s:", e.side.name)
			for _, k := range keys {
				fmt.Fprintf(os.Stderr, "\n    %-24s median %s, CPU %s", k, ms(quantile(e.ex.plugins[k], 0.5)), ms(quantile(e.ex.cpu[k], 0.5)))
			}
			fmt.Fprintln(os.Stderr)
		}
	}
	return out, nil
}

// env is one side of one scenario: its node netns, state and libcni.
type env struct {
	sc     scenario
	side   *side
	node   string
	state  string
	list   *libcni.NetworkConfigList
	cninet *libcni.CNIConfig
	ex     *rssExec
	res    *sample
}

func newEnv(sc scenario, s *side, tmp string) (*env, error) {
	e := &env{sc: sc, side: s, ex: &rssExec{}, res: &sample{durations: map[string][]time.Duration{}, wall: map[string]time.Duration{}}}
	var err error
	if e.node, err = newNS("node"); err != nil {
		return nil, err
	}
	if e.state, err = os.MkdirTemp(tmp, "state-"); err != nil {
		e.close()
		return nil, err
	}
	if sc.setup != nil {
		if err := sc.setup(e.node, e.state); err != nil {
			e.close()
			return nil, fmt.Errorf("setup: %w", err)
		}
	}
	if s.name == "floor" {
		if err := floorSetup(e); err != nil {
			e.close()
			return nil, fmt.Errorf("floor setup: %w", err)
		}
	}
	text := sc.conflist
	if sc.refConflist != "" && s.name == "reference" {
		text = sc.refConflist
	}
	conf := strings.NewReplacer("@STATE@", e.state, "@NET@", "bench").Replace(text)
	if e.list, err = libcni.ConfListFromBytes([]byte(conf)); err != nil {
		e.close()
		return nil, fmt.Errorf("conflist: %w", err)
	}
	e.cninet = libcni.NewCNIConfigWithCacheDir([]string{s.dir}, filepath.Join(e.state, "cache"), e.ex)
	return e, nil
}

func (e *env) close() {
	if e.node != "" {
		delNS(e.node)
	}
	if e.state != "" {
		os.RemoveAll(e.state)
	}
}

func (e *env) inNode(f func() error) error {
	return ns.WithNetNSPath("/run/netns/"+e.node, func(ns.NetNS) error { return f() })
}

func (e *env) pod(i int) (string, *libcni.RuntimeConf, error) {
	p, err := newNS("pod")
	if err != nil {
		return "", nil, err
	}
	return p, &libcni.RuntimeConf{ContainerID: fmt.Sprintf("bench-%d", i), NetNS: "/run/netns/" + p, IfName: "eth0", CapabilityArgs: e.sc.caps}, nil
}

func (e *env) verbs() []string {
	if e.sc.verbs != nil {
		return e.sc.verbs
	}
	return []string{"ADD", "CHECK", "DEL"}
}

func (e *env) call(verb string, rt *libcni.RuntimeConf) error {
	ctx := context.Background()
	return e.inNode(func() error {
		var err error
		switch verb {
		case "ADD":
			_, err = e.cninet.AddNetworkList(ctx, e.list, rt)
		case "CHECK":
			err = e.cninet.CheckNetworkList(ctx, e.list, rt)
		default:
			err = e.cninet.DelNetworkList(ctx, e.list, rt)
		}
		if err != nil || e.side.name != "floor" {
			return err
		}
		var i int
		fmt.Sscanf(rt.ContainerID, "bench-%d", &i)
		return e.floorKernel(verb, i, rt.NetNS)
	})
}

// onePod times each verb for one new pod.
func (e *env) onePod(i int) error {
	p, rt, err := e.pod(i)
	if err != nil {
		return err
	}
	defer delNS(p)
	for _, verb := range e.verbs() {
		if verb == "CHECK" && e.list.CNIVersion < "0.4.0" {
			continue
		}
		e.ex.measure = verb == "ADD"
		start := time.Now()
		err := e.call(verb, rt)
		e.ex.measure = false
		if err == nil {
			e.res.durations[verb] = append(e.res.durations[verb], time.Since(start))
			continue
		}
		e.res.failures++
		e.res.failed = append(e.res.failed, verb)
		if e.res.failures <= 3 {
			fmt.Fprintf(os.Stderr, "\n  %s %s: %v", e.side.name, verb, err)
		}
		if verb == "ADD" {
			e.call("DEL", rt)
			break
		}
	}
	return nil
}

// parallel sets up e.sc.pods pods with e.sc.parallel in flight, then tears
// them down the same way, and records the wall time of each.
func (e *env) parallel() error {
	pods := make([]string, e.sc.pods)
	rts := make([]*libcni.RuntimeConf, e.sc.pods)
	defer func() {
		for _, p := range pods {
			if p != "" {
				delNS(p)
			}
		}
	}()
	for i := range pods {
		var err error
		if pods[i], rts[i], err = e.pod(i); err != nil {
			return err
		}
	}
	for _, verb := range []string{"ADD", "DEL"} {
		var mu sync.Mutex
		sem := make(chan struct{}, e.sc.parallel)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range pods {
			wg.Add(1)
			sem <- struct{}{}
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				if err := e.call(verb, rts[i]); err != nil {
					mu.Lock()
					e.res.failures++
					if e.res.failures <= 3 {
						fmt.Fprintf(os.Stderr, "\n  %s %s pod %d: %v", e.side.name, verb, i, err)
					}
					mu.Unlock()
				}
			}(i)
		}
		wg.Wait()
		e.res.wall[verb] = time.Since(start)
	}
	return nil
}

// rssExec is libcni's plugin exec that also records the largest resident
// set of any plugin process while measure is set.
type rssExec struct {
	mu      sync.Mutex
	measure bool
	maxRSS  int64
	plugins map[string][]time.Duration // by "plugin VERB", with -plugins
	cpu     map[string][]time.Duration // user+system CPU of the same calls (their children included)
}

func (e *rssExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = environ
	cmd.Stdin = strings.NewReader(string(stdin))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if *perPlugin {
		verb := ""
		for _, kv := range environ {
			if strings.HasPrefix(kv, "CNI_COMMAND=") {
				verb = kv[len("CNI_COMMAND="):]
			}
		}
		e.mu.Lock()
		if e.plugins == nil {
			e.plugins = map[string][]time.Duration{}
		}
		k := filepath.Base(path) + " " + verb
		e.plugins[k] = append(e.plugins[k], time.Since(start))
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && cmd.ProcessState != nil {
			if e.cpu == nil {
				e.cpu = map[string][]time.Duration{}
			}
			e.cpu[k] = append(e.cpu[k], time.Duration(syscall.TimevalToNsec(ru.Utime)+syscall.TimevalToNsec(ru.Stime)))
		}
		e.mu.Unlock()
	}
	if cmd.ProcessState != nil && e.measure {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			e.mu.Lock()
			if ru.Maxrss > e.maxRSS {
				e.maxRSS = ru.Maxrss
			}
			e.mu.Unlock()
		}
	}
	if err != nil {
		msg := strings.TrimSpace(stdout.String())
		if msg == "" {
			msg = strings.TrimSpace(stderr.String())
		}
		var cniErr struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if json.Unmarshal([]byte(stdout.String()), &cniErr) == nil && cniErr.Msg != "" {
			msg = fmt.Sprintf("code %d: %s", cniErr.Code, cniErr.Msg)
		}
		return nil, errors.New(filepath.Base(path) + ": " + msg)
	}
	return []byte(stdout.String()), nil
}

func (e *rssExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *rssExec) Decode(jsonBytes []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(jsonBytes)
}

// row is one line of the table: a figure for each side.
type row struct {
	scenario, what string
	cnibox, ref    string
	ratio          string
	cniboxP, refP  string
	floor          string // the floor side's median
	aboveFloor     string // cnibox / floor
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(q*float64(len(s)-1)+0.5)]
}

func ratio(ref, ours float64) string {
	if ref == 0 || ours == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f×", ref/ours)
}

func tabulate(sc scenario, res map[string]*sample) []row {
	c, r, f := res["cnibox"], res["reference"], res["floor"]
	na := func(s *sample, f func(*sample) string) string {
		if s == nil {
			return "n/a"
		}
		return f(s)
	}
	var rows []row
	if sc.parallel > 0 {
		for _, verb := range []string{"ADD", "DEL"} {
			rows = append(rows, row{
				scenario: sc.name, what: verb + " wall",
				cnibox:     na(c, func(s *sample) string { return fmt.Sprintf("%s, %d failed", ms(s.wall[verb]), s.failures) }),
				ref:        na(r, func(s *sample) string { return fmt.Sprintf("%s, %d failed", ms(s.wall[verb]), s.failures) }),
				ratio:      ratioOf(c, r, func(s *sample) float64 { return float64(s.wall[verb]) }),
				floor:      na(f, func(s *sample) string { return fmt.Sprintf("%s, %d failed", ms(s.wall[verb]), s.failures) }),
				aboveFloor: ratioOf(f, c, func(s *sample) float64 { return float64(s.wall[verb]) }),
			})
		}
		return rows
	}
	verbs := sc.verbs
	if verbs == nil {
		verbs = []string{"ADD", "CHECK", "DEL"}
	}
	for _, verb := range verbs {
		med := func(s *sample) float64 { return float64(quantile(s.durations[verb], 0.5)) }
		if (c == nil || len(c.durations[verb]) == 0) && (r == nil || len(r.durations[verb]) == 0) {
			continue
		}
		// figure is the median (or p95), or how often the verb failed when
		// it never succeeded (the reference's portmap CHECK without IPv6).
		figure := func(s *sample, q float64) string {
			if len(s.durations[verb]) == 0 {
				return fmt.Sprintf("failed %d×", s.count(verb))
			}
			if n := s.count(verb); n > 0 && q == 0.5 {
				return fmt.Sprintf("%s (%d failed)", ms(quantile(s.durations[verb], q)), n)
			}
			return ms(quantile(s.durations[verb], q))
		}
		rt := "–"
		if c != nil && r != nil && len(c.durations[verb]) > 0 && len(r.durations[verb]) > 0 {
			rt = ratioOf(c, r, med)
		}
		rows = append(rows, row{
			scenario: sc.name, what: verb,
			cnibox:  na(c, func(s *sample) string { return figure(s, 0.5) }),
			cniboxP: na(c, func(s *sample) string { return figure(s, 0.95) }),
			ref:     na(r, func(s *sample) string { return figure(s, 0.5) }),
			refP:    na(r, func(s *sample) string { return figure(s, 0.95) }),
			ratio:   rt,
			floor:   na(f, func(s *sample) string { return figure(s, 0.5) }),
		})
		if c != nil && f != nil && len(c.durations[verb]) > 0 && len(f.durations[verb]) > 0 {
			rows[len(rows)-1].aboveFloor = ratioOf(f, c, med)
		}
	}
	if sc.name == "bridge + host-local" {
		rows = append(rows, row{
			scenario: sc.name, what: "peak RSS of one ADD",
			cnibox: na(c, func(s *sample) string { return fmt.Sprintf("%.1f MiB", float64(s.maxRSS)/1024) }),
			ref:    na(r, func(s *sample) string { return fmt.Sprintf("%.1f MiB", float64(s.maxRSS)/1024) }),
			ratio:  ratioOf(c, r, func(s *sample) float64 { return float64(s.maxRSS) }),
		})
	}
	return rows
}

// count is how many times verb failed.
func (s *sample) count(verb string) int {
	n := 0
	for _, v := range s.failed {
		if v == verb {
			n++
		}
	}
	return n
}

func ratioOf(c, r *sample, f func(*sample) float64) string {
	if c == nil || r == nil {
		return "–"
	}
	return ratio(f(r), f(c))
}

// sizeRows compares the one cnibox binary with the reference binaries of
// the applets cnibox implements.
func sizeRows(cnibox, ref *side) []row {
	bin, err := os.Stat(filepath.Join(cnibox.dir, "cnibox"))
	if err != nil {
		return nil
	}
	var refTotal int64
	var n int
	for name := range cnibox.applets {
		if name == "cnibox" {
			continue
		}
		if fi, err := os.Stat(filepath.Join(ref.dir, name)); err == nil {
			refTotal += fi.Size()
			n++
		}
	}
	var all14 int64
	for _, name := range strings.Fields("bridge ptp macvlan ipvlan vlan host-device loopback host-local static dhcp tuning portmap bandwidth firewall") {
		if fi, err := os.Stat(filepath.Join(ref.dir, name)); err == nil {
			all14 += fi.Size()
		}
	}
	mb := func(b int64) string { return fmt.Sprintf("%.2f MB", float64(b)/1e6) }
	return []row{
		{scenario: "binary size on disk", what: fmt.Sprintf("the %d reference plugins cnibox has", n),
			cnibox: mb(bin.Size()), ref: mb(refTotal), ratio: ratio(float64(refTotal), float64(bin.Size()))},
		{scenario: "binary size on disk", what: "all 14 standard plugins",
			cnibox: mb(bin.Size()), ref: mb(all14), ratio: ratio(float64(all14), float64(bin.Size()))},
	}
}

// versionRows times VERSION, which podman runs for every plugin of every
// network it loads, and the floor's no-op: the exec itself.
func versionRows(sides ...*side) []row {
	// The sides take turns, so drift hits them alike.
	cmdOf := func(s *side) *exec.Cmd {
		cmd := exec.Command(filepath.Join(s.dir, "bridge"))
		if !s.applets["bridge"] {
			cmd = exec.Command(filepath.Join(s.dir, "loopback"))
		}
		cmd.Env = []string{"CNI_COMMAND=VERSION"}
		return cmd
	}
	times := make([][]time.Duration, len(sides))
	for i := 0; i < 400; i++ {
		for k, s := range sides {
			cmd := cmdOf(s)
			start := time.Now()
			if err := cmd.Run(); err != nil {
				continue
			}
			times[k] = append(times[k], time.Since(start))
		}
	}
	c, r, f := times[0], times[1], times[2]
	return []row{{
		scenario: "VERSION (bridge)", what: "exec",
		cnibox: ms(quantile(c, 0.5)), cniboxP: ms(quantile(c, 0.95)),
		ref: ms(quantile(r, 0.5)), refP: ms(quantile(r, 0.95)),
		ratio:      ratio(float64(quantile(r, 0.5)), float64(quantile(c, 0.5))),
		floor:      ms(quantile(f, 0.5)),
		aboveFloor: ratio(float64(quantile(c, 0.5)), float64(quantile(f, 0.5))),
	}}
}

func printTable(rows []row) {
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	var uname syscall.Utsname
	syscall.Uname(&uname)
	rel := utsString(uname.Release[:])
	fmt.Printf("\ncnibox vs reference (%s), %d iterations, %s, %s, kernel %s, %d CPUs\n\n",
		*refDir, *iterations, host, cpu, rel, numCPU())
	fmt.Println("| scenario | verb | cnibox median | cnibox p95 | reference median | reference p95 | floor median | reference/cnibox | cnibox/floor |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.scenario, r.what, r.cnibox, dash(r.cniboxP), r.ref, dash(r.refP), dash(r.floor), r.ratio, dash(r.aboveFloor))
	}
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("\nload average at the end of the run: %s\n", strings.Join(strings.Fields(string(load))[:3], " "))
	}
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func utsString(b []int8) string {
	var s strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		s.WriteByte(byte(c))
	}
	return s.String()
}

func numCPU() int {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(data), "processor\t:")
}
