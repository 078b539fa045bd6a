// Package cnirun is "cnibox cni": a small runtime built on libcni, so that a
// person can ADD, CHECK, DEL, GC and STATUS a network by hand without
// installing anything else. It reads the same environment as cnitool
// (NETCONFPATH, CNI_PATH, CNI_IFNAME, CNI_ARGS, CAP_ARGS) and derives the
// same container ID from the netns path, so the two can be mixed.
package cnirun

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// Main runs "cnibox cni VERB NETWORK NETNS".
func Main(args []string) int {
	if err := run(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // asked for: the usage went to stdout
		}
		fmt.Fprintf(os.Stderr, "cnibox cni: %v\n", err)
		return 1
	}
	return 0
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" }

func defaultPath() string {
	if p := os.Getenv("CNI_PATH"); p != "" {
		return p
	}
	exe, err := os.Executable()
	if err != nil {
		return "/opt/cni/bin"
	}
	return filepath.Dir(exe)
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func run(args []string) error {
	fs := flag.NewFlagSet("cnibox cni", flag.ContinueOnError)
	confDir := fs.String("conf-dir", envOr("NETCONFPATH", "/etc/cni/net.d"), "network configuration directory (NETCONFPATH)")
	path := fs.String("path", defaultPath(), "plugin directories, ':'-separated (CNI_PATH; default: this binary's directory)")
	ifName := fs.String("ifname", envOr("CNI_IFNAME", "eth0"), "interface name in the pod (CNI_IFNAME)")
	cniArgs := fs.String("args", os.Getenv("CNI_ARGS"), "CNI_ARGS, K=V;K2=V2")
	capArgs := fs.String("cap-args", os.Getenv("CAP_ARGS"), "capability arguments as a JSON object (CAP_ARGS), e.g. {\"portMappings\":[...]}")
	cacheDir := fs.String("cache-dir", "", "libcni result cache directory (default /var/lib/cni)")
	containerID := fs.String("container-id", "", "container ID (default: derived from the netns path, as cnitool does)")
	valid := fs.String("valid", "", "gc: attachments still in use, CONTAINERID/IFNAME,...")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: cnibox cni add|check|del|gc|status NETWORK [NETNS] [flags]\n"+
			"NETNS is a path or a name under /var/run/netns.\n")
		fs.PrintDefaults()
	}
	if slices.ContainsFunc(args, isHelp) {
		fs.SetOutput(os.Stdout)
	}
	// Accept flags before and after the positional arguments.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) < 2 {
		fs.Usage()
		return fmt.Errorf("need a verb and a network name")
	}
	verb, network := strings.ToLower(pos[0]), pos[1]
	netns := ""
	if len(pos) > 2 {
		netns = pos[2]
		if !strings.Contains(netns, "/") {
			netns = filepath.Join("/var/run/netns", netns)
		}
		if abs, err := filepath.Abs(netns); err == nil {
			netns = abs
		}
	}
	needsNetns := verb == "add" || verb == "check" || verb == "del"
	if needsNetns && netns == "" {
		return fmt.Errorf("%s needs a netns", verb)
	}

	list, err := libcni.LoadNetworkConf(*confDir, network)
	if err != nil {
		return fmt.Errorf("load network %q from %s: %w", network, *confDir, err)
	}
	cninet := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(*path), *cacheDir, nil)

	rt := &libcni.RuntimeConf{ContainerID: *containerID, NetNS: netns, IfName: *ifName}
	if rt.ContainerID == "" && netns != "" {
		sum := sha512.Sum512([]byte(netns))
		rt.ContainerID = "cnitool-" + hex.EncodeToString(sum[:10])
	}
	if *capArgs != "" {
		if err := json.Unmarshal([]byte(*capArgs), &rt.CapabilityArgs); err != nil {
			return fmt.Errorf("CAP_ARGS: %w", err)
		}
	}
	if *cniArgs != "" {
		for _, kv := range strings.Split(*cniArgs, ";") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" || v == "" {
				return fmt.Errorf("CNI_ARGS: invalid pair %q", kv)
			}
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}

	ctx := context.Background()
	switch verb {
	case "add":
		res, err := cninet.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		if res != nil {
			return res.Print()
		}
		return nil
	case "check":
		return cninet.CheckNetworkList(ctx, list, rt)
	case "del":
		return cninet.DelNetworkList(ctx, list, rt)
	case "status":
		return cninet.GetStatusNetworkList(ctx, list)
	case "gc":
		gc := &libcni.GCArgs{}
		if *valid != "" {
			for _, a := range strings.Split(*valid, ",") {
				id, ifn, ok := strings.Cut(a, "/")
				if !ok {
					return fmt.Errorf("-valid: %q is not CONTAINERID/IFNAME", a)
				}
				gc.ValidAttachments = append(gc.ValidAttachments, types.GCAttachment{ContainerID: id, IfName: ifn})
			}
		}
		return cninet.GCNetworkList(ctx, list, gc)
	default:
		return fmt.Errorf("unknown verb %q: want add, check, del, gc or status", verb)
	}
}
