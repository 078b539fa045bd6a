// Package cni is cnibox's CNI protocol core: it turns one plugin invocation
// (environment + stdin) into a Request, runs the applet's verb, and writes the
// result or the spec's error JSON. Every applet goes through Run, so version
// negotiation, environment validation and result conversion live here once.
package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/logging"
	"github.com/cnibox/cnibox/shared/nft"
)

// The verbs of the CNI protocol.
const (
	CmdAdd     = "ADD"
	CmdDel     = "DEL"
	CmdCheck   = "CHECK"
	CmdGC      = "GC"
	CmdStatus  = "STATUS"
	CmdVersion = "VERSION"
)

// Applet is one CNI plugin of the multi-call binary. A nil verb function
// succeeds without doing anything, as the spec allows for GC and STATUS of a
// plugin that keeps no state.
type Applet struct {
	Name string
	// Kind is "main", "ipam" or "meta"; it is only informational.
	Kind string
	// Versions lists the spec versions the applet accepts; nil means AllVersions.
	Versions []string
	// Summary is a one-line description for --help and --list.
	Summary string

	// Main, when set, handles invocations with arguments (such as
	// "dhcp daemon"); without arguments the applet runs as a plugin.
	Main func(args []string) int

	Add    func(*Request) (types.Result, error)
	Del    func(*Request) error
	Check  func(*Request) error
	GC     func(*Request) error
	Status func(*Request) error

	// DelRules, when set, is the part of Del that touches no link (the
	// netfilter rules of a main plugin's ipMasq or spoof check). The
	// one-exec chain runs it while it deletes the attachment's links, so
	// that the kernel's grace period for the deleted rules overlaps the
	// links' instead of following it; Del then finds the rules gone.
	DelRules func(*Request) error
}

// SupportedVersions returns the spec versions the applet accepts.
func (a *Applet) SupportedVersions() []string {
	if a.Versions != nil {
		return a.Versions
	}
	return AllVersions
}

// Request is one invocation of an applet: the CNI_* environment and the
// network configuration read from stdin.
type Request struct {
	Command     string
	ContainerID string
	Netns       string
	IfName      string
	Args        string // CNI_ARGS, "K=V;K2=V2"
	Path        string // CNI_PATH, ':'-separated
	// Config is the network configuration exactly as received on stdin.
	Config []byte
	// Version is the config's cniVersion ("0.1.0" when absent, as libcni decodes it).
	Version string
	// Name is the network name from the config.
	Name string

	// Log writes to stderr (and the optional log file); never to stdout.
	Log *logging.Logger
}

// Lookup finds an applet of this binary by name; main sets it. Delegation
// uses it to run an IPAM applet in-process when CNI_PATH resolves to us.
var Lookup func(name string) *Applet

// Env is how Run reads the environment; os.Getenv in production.
type Env func(string) string

// Main runs the applet as the process's CNI plugin and returns the exit code.
func Main(a *Applet) int {
	if name := DuplicateEnv(os.Environ()); name != "" {
		// os.Getenv would pick one of the values silently (the first,
		// where Go's os/exec and libcni make the last win): refuse (4).
		e := Errorf(types.ErrInvalidEnvironmentVariables, "%s: set more than once with different values", name)
		log := logging.New(a.Name, os.Stderr)
		log.Errorf("%v", e)
		log.Close()
		writeError(os.Stdout, e, "")
		return 1
	}
	return runWithDeadline(a, os.Getenv, os.Stdin, os.Stdout, os.Stderr, os.Exit)
}

// DuplicateEnv returns the first CNI_* variable environ sets more than once
// with different values, or "".
func DuplicateEnv(environ []string) string {
	seen := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "CNI_") {
			continue
		}
		if old, ok := seen[k]; ok && old != v {
			return k
		}
		seen[k] = v
	}
	return ""
}

// Run executes one invocation of a. It writes a result (ADD), version info
// (VERSION) or nothing to stdout on success and returns 0; on failure it
// writes the error JSON to stdout, logs it to stderr and returns 1.
func Run(a *Applet, getenv Env, stdin io.Reader, stdout, stderr io.Writer) int {
	log := logging.New(a.Name, stderr)
	start := time.Now()
	req, result, err := run(a, getenv, stdin, stdout, stderr, log)
	if req != nil {
		// At debug level every invocation says how long it took: what an
		// operator chasing slow pod starts needs first.
		log.Debugf("%s took %v", req.Command, time.Since(start).Round(time.Microsecond))
	}
	if err != nil {
		e := AsError(err)
		if req != nil {
			log.Errorf("%s failed: %v", req.Command, e)
		} else {
			log.Errorf("%v", e)
		}
		writeError(stdout, e, versionOf(req))
		log.Close()
		return 1
	}
	if result != nil {
		if err := printResult(stdout, result, req.Version); err != nil {
			e := AsError(err)
			log.Errorf("%s failed: %v", req.Command, e)
			writeError(stdout, e, req.Version)
			log.Close()
			return 1
		}
	}
	if req != nil && logged[req.Command] && log.Enabled(logging.LevelInfo) {
		if a.Kind != "meta" { // a meta plugin's result is the one before it, already logged
			summarize(log, result)
		}
		what := req.Command + " " + req.Name
		if req.ContainerID != "" {
			what += " " + req.IfName
		}
		log.Done(what, time.Since(start))
	}
	log.Close()
	return 0
}

// logged are the verbs that write one info line when they succeed: what an
// operator chasing a pod's network wants to find in the runtime's log.
var logged = map[string]bool{CmdAdd: true, CmdDel: true, CmdGC: true}

// summarize notes what an ADD's result says was made: the pod's interfaces
// and addresses, the host-side interfaces (a veth, a bridge).
func summarize(log *logging.Logger, result types.Result) {
	if result == nil {
		return
	}
	res, err := current.NewResultFromResult(result)
	if err != nil {
		return
	}
	for i, iface := range res.Interfaces {
		var addrs []string
		for _, ip := range res.IPs {
			if ip.Interface != nil && *ip.Interface == i {
				addrs = append(addrs, ip.Address.String())
			}
		}
		where := "host"
		if iface.Sandbox != "" {
			where = "pod"
		}
		log.Note("%s %s %s%s", where, iface.Name, iface.Mac, strings.TrimRight(" "+strings.Join(addrs, " "), " "))
	}
	var loose []string // addresses no interface claims (an IPAM's result)
	for _, ip := range res.IPs {
		if ip.Interface == nil || *ip.Interface < 0 || *ip.Interface >= len(res.Interfaces) {
			loose = append(loose, ip.Address.String())
		}
	}
	if len(loose) > 0 {
		log.Note("addresses %s", strings.Join(loose, " "))
	}
}

func versionOf(req *Request) string {
	if req == nil {
		return ""
	}
	return req.Version
}

func run(a *Applet, getenv Env, stdin io.Reader, stdout, stderr io.Writer, log *logging.Logger) (*Request, types.Result, error) {
	cmd := getenv("CNI_COMMAND")
	switch cmd {
	case "":
		// skel's behaviour, which people rely on to see what a binary is.
		fmt.Fprintf(stderr, "CNI %s plugin (cnibox %s)\nCNI protocol versions supported: %s\n",
			a.Name, BuildVersion, strings.Join(a.SupportedVersions(), ", "))
		return nil, nil, nil
	case CmdVersion:
		return nil, nil, writeVersion(stdout, a.SupportedVersions())
	case CmdAdd, CmdDel, CmdCheck, CmdGC, CmdStatus:
		// Closing a netfilter socket can wait for a grace period while
		// it holds the nftables commit lock, which the verb's next
		// commit then waits for: they close when the verb is done.
		defer nft.HoldSockets()()
	default:
		return nil, nil, Errorf(types.ErrInvalidEnvironmentVariables, "unknown CNI_COMMAND: %v", cmd)
	}

	req, err := newRequest(cmd, getenv, stdin)
	if err != nil {
		return req, nil, err
	}
	req.Log = log
	log.Configure(req.Config, req.ContainerID)

	if err := CheckVersion(a, req); err != nil {
		return req, nil, err
	}
	if err := checkNetns(req, getenv("CNI_NETNS_OVERRIDE")); err != nil {
		return req, nil, err
	}
	if locked[cmd] && req.ContainerID != "" && req.IfName != "" {
		// One ADD, CHECK or DEL of an attachment at a time: a runtime's
		// retried ADD waits for the first and then finds its attachment.
		lock, err := LockAttachment(a.Name, req.Name, req.ContainerID, req.IfName, LockWait)
		var unavailable *LockUnavailableError
		switch {
		case errors.As(err, &unavailable):
			log.Warnf("running %s without the attachment's lock: %v", cmd, err)
		case err != nil:
			return req, nil, err
		default:
			defer lock.Release()
		}
	}

	switch cmd {
	case CmdAdd:
		if a.Add == nil {
			return req, nil, Errorf(types.ErrInternal, "%s does not implement ADD", a.Name)
		}
		result, err := a.Add(req)
		if err != nil {
			return req, nil, err
		}
		if result == nil {
			return req, nil, Errorf(types.ErrInternal, "%s returned no result", a.Name)
		}
		return req, result, nil
	case CmdDel:
		return req, nil, call(a.Del, req)
	case CmdCheck:
		return req, nil, call(a.Check, req)
	case CmdGC:
		return req, nil, call(a.GC, req)
	case CmdStatus:
		return req, nil, call(a.Status, req)
	}
	return req, nil, nil
}

// locked are the verbs that run under the attachment's lock: those that
// change or read one attachment. GC and STATUS concern the whole network.
var locked = map[string]bool{CmdAdd: true, CmdCheck: true, CmdDel: true}

func call(f func(*Request) error, req *Request) error {
	if f == nil {
		return nil
	}
	return f(req)
}

// verbEnv says which variables each verb requires. CNI_PATH is optional for
// every verb, as in the spec: libcni always sets it, and applets that
// delegate report its absence themselves.
var verbEnv = map[string][]string{
	CmdAdd:    {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	CmdCheck:  {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	CmdDel:    {"CNI_CONTAINERID", "CNI_IFNAME"},
	CmdGC:     nil,
	CmdStatus: nil,
}

func newRequest(cmd string, getenv Env, stdin io.Reader) (*Request, error) {
	req := &Request{
		Command:     cmd,
		ContainerID: getenv("CNI_CONTAINERID"),
		Netns:       getenv("CNI_NETNS"),
		IfName:      getenv("CNI_IFNAME"),
		Args:        getenv("CNI_ARGS"),
		Path:        getenv("CNI_PATH"),
	}
	var missing []string
	for _, name := range verbEnv[cmd] {
		if getenv(name) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return req, Errorf(types.ErrInvalidEnvironmentVariables, "required env variables [%s] missing", strings.Join(missing, ","))
	}
	if req.ContainerID != "" {
		if e := utils.ValidateContainerID(req.ContainerID); e != nil {
			return req, Errorf(types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID: %s", e.Msg)
		}
	}
	if req.IfName != "" {
		if e := utils.ValidateInterfaceName(req.IfName); e != nil {
			return req, Errorf(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: %s", e.Msg)
		}
	}

	limit := maxConfigSize
	if cmd == CmdDel || cmd == CmdGC {
		limit = maxTeardownConfigSize
	}
	data, err := io.ReadAll(io.LimitReader(stdin, int64(limit)+1))
	if err != nil {
		return req, Errorf(types.ErrIOFailure, "read network configuration from stdin: %v", err)
	}
	if len(data) > limit {
		return req, Errorf(types.ErrInvalidNetworkConfig, "network configuration on stdin is larger than %d bytes", limit)
	}
	req.Config = data

	var head struct {
		CNIVersion *string `json:"cniVersion"`
		Name       *string `json:"name"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return req, DecodeError("network configuration", err)
	}
	req.Version = "0.1.0"
	if head.CNIVersion != nil {
		req.Version = *head.CNIVersion
	}
	if head.Name == nil || *head.Name == "" {
		return req, Errorf(types.ErrInvalidNetworkConfig, "network configuration: missing field \"name\"")
	}
	if e := utils.ValidateNetworkName(*head.Name); e != nil {
		return req, Errorf(types.ErrInvalidNetworkConfig, "network configuration: field \"name\": %s", e.Msg)
	}
	req.Name = *head.Name
	return req, nil
}

// maxConfigSize bounds what we read from stdin: a runtime never sends more,
// and a hostile or broken caller must not make us allocate without limit.
const maxConfigSize = 16 << 20

// maxTeardownConfigSize bounds DEL's and GC's stdin. A DEL must be
// accepted for every attachment an ADD was: its configuration is the
// ADD's (up to maxConfigSize) plus the chain's whole result as
// prevResult, which may be as large again; GC's lists every valid
// attachment of the node. Refusing a DEL leaks the attachment.
const maxTeardownConfigSize = 4 * maxConfigSize

// CheckVersion applies the spec's version rules to req for applet a: the
// config version must be one a supports, and CHECK, GC and STATUS need the
// spec version that introduced them.
func CheckVersion(a *Applet, req *Request) error {
	if _, _, _, err := ParseVersion(req.Version); err != nil {
		return Errorf(types.ErrDecodingFailure, "network configuration: field \"cniVersion\": %v", err)
	}
	minimum := map[string]string{CmdCheck: "0.4.0", CmdGC: "1.1.0", CmdStatus: "1.1.0"}[req.Command]
	if minimum != "" && !VersionAtLeast(req.Version, minimum) {
		return &types.Error{
			Code:    types.ErrIncompatibleCNIVersion,
			Msg:     fmt.Sprintf("config version does not allow %s", req.Command),
			Details: fmt.Sprintf("%s needs cniVersion %s or later; config is %q", req.Command, minimum, req.Version),
		}
	}
	for _, v := range a.SupportedVersions() {
		if v == req.Version {
			return nil
		}
	}
	return &types.Error{
		Code:    types.ErrIncompatibleCNIVersion,
		Msg:     "incompatible CNI versions",
		Details: fmt.Sprintf("config is %q, plugin supports %q", req.Version, a.SupportedVersions()),
	}
}

// checkNetns refuses to act on our own network namespace, as skel does
// (code 8): configuring the runtime's namespace as if it were a pod's would
// break the node. Unlike skel, it refuses before doing anything.
func checkNetns(req *Request, override string) error {
	if req.Netns == "" || (req.Command != CmdAdd && req.Command != CmdDel) {
		return nil
	}
	if override == "1" || strings.EqualFold(override, "true") {
		return nil
	}
	var own, target unix.Stat_t
	if unix.Stat("/proc/self/ns/net", &own) != nil || unix.Stat(req.Netns, &target) != nil {
		return nil // the applet reports an unusable netns itself
	}
	if own.Dev == target.Dev && own.Ino == target.Ino {
		return Errorf(types.ErrInvalidNetNS, "CNI_NETNS %q is the plugin's own network namespace", req.Netns)
	}
	return nil
}

func writeVersion(w io.Writer, versions []string) error {
	out, err := json.Marshal(struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}{CurrentVersion, versions})
	if err != nil {
		return err
	}
	_, err = w.Write(append(out, '\n'))
	return err
}

func printResult(w io.Writer, result types.Result, version string) error {
	converted, err := result.GetAsVersion(version)
	if err != nil {
		return Errorf(types.ErrIncompatibleCNIVersion, "convert result to cniVersion %s: %v", version, err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "    ")
	if err := enc.Encode(converted); err != nil {
		return Errorf(types.ErrInternal, "encode result: %v", err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

func writeError(w io.Writer, e *types.Error, version string) {
	out := struct {
		CNIVersion string `json:"cniVersion,omitempty"`
		Code       uint   `json:"code"`
		Msg        string `json:"msg"`
		Details    string `json:"details,omitempty"`
	}{version, e.Code, e.Msg, e.Details}
	if version != "" {
		if _, _, _, err := ParseVersion(version); err != nil {
			out.CNIVersion = ""
		}
	}
	data, _ := json.MarshalIndent(out, "", "    ")
	_, _ = w.Write(append(data, '\n'))
}

// AsError returns err as a CNI error, keeping its code when it has one and
// using ErrInternal (999) otherwise, as skel does.
func AsError(err error) *types.Error {
	var e *types.Error
	if errors.As(err, &e) {
		if msg := err.Error(); msg != e.Error() {
			// Keep the context that wrapping added ("bridge: ...: <cni error>").
			return &types.Error{Code: e.Code, Msg: strings.TrimSuffix(msg, "; "+e.Details), Details: e.Details}
		}
		return e
	}
	return &types.Error{Code: types.ErrInternal, Msg: err.Error()}
}
