// cnibox is every standard CNI plugin in one binary. It picks the applet
// from the name it was invoked as (argv[0]), as busybox does; "cnibox
// APPLET" works too, and "cnibox" alone offers install, cni, version,
// --list and --help.
package main

import (
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cnibox/cnibox/applets/bandwidth"
	"github.com/cnibox/cnibox/applets/bridge"
	"github.com/cnibox/cnibox/applets/chain"
	"github.com/cnibox/cnibox/applets/dhcp"
	"github.com/cnibox/cnibox/applets/dummy"
	"github.com/cnibox/cnibox/applets/firewall"
	"github.com/cnibox/cnibox/applets/flannel"
	"github.com/cnibox/cnibox/applets/hostdevice"
	"github.com/cnibox/cnibox/applets/hostlocal"
	"github.com/cnibox/cnibox/applets/ipvlan"
	"github.com/cnibox/cnibox/applets/loopback"
	"github.com/cnibox/cnibox/applets/macvlan"
	"github.com/cnibox/cnibox/applets/portmap"
	"github.com/cnibox/cnibox/applets/ptp"
	"github.com/cnibox/cnibox/applets/sbr"
	"github.com/cnibox/cnibox/applets/static"
	"github.com/cnibox/cnibox/applets/tap"
	"github.com/cnibox/cnibox/applets/tuning"
	"github.com/cnibox/cnibox/applets/vlan"
	"github.com/cnibox/cnibox/applets/vrf"
	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/cnirun"
	"github.com/cnibox/cnibox/shared/install"
)

// applets is the applet table, sorted by name. Every applet listed here
// really works; nothing registers itself anywhere else.
var applets = []*cni.Applet{
	bandwidth.Applet,
	bridge.Applet,
	dhcp.Applet,
	dummy.Applet,
	firewall.Applet,
	flannel.Applet,
	hostdevice.Applet,
	hostlocal.Applet,
	ipvlan.Applet,
	loopback.Applet,
	macvlan.Applet,
	portmap.Applet,
	ptp.Applet,
	sbr.Applet,
	static.Applet,
	tap.Applet,
	tuning.Applet,
	vlan.Applet,
	vrf.Applet,
}

// versionFile is the release version (semver), built in so that any build
// of the tree, a source tarball's included, knows it; make build stamps
// the commit (cni.BuildCommit) beside it.
//
//go:embed VERSION
var versionFile string

func init() { cni.BuildVersion = strings.TrimSpace(versionFile) }

func lookup(name string) *cni.Applet {
	name = strings.TrimSuffix(name, ".exe")
	i := sort.Search(len(applets), func(i int) bool { return applets[i].Name >= name })
	if i < len(applets) && applets[i].Name == name {
		return applets[i]
	}
	return nil
}

func main() {
	os.Exit(dispatch(os.Args))
}

func dispatch(args []string) int {
	cni.Lookup = lookup
	name := filepath.Base(args[0])
	if a := lookup(name); a != nil {
		return runApplet(a, args[1:])
	}
	if name != "cnibox" && !strings.HasPrefix(name, "cnibox") {
		return unknownApplet(name, args[0])
	}
	if len(args) < 2 {
		if os.Getenv("CNI_COMMAND") != "" {
			// A runtime exec'ing "type": "cnibox": the one-exec chain.
			return cni.Main(chain.Applet)
		}
		usage(os.Stderr)
		return 2
	}
	switch cmd := args[1]; cmd {
	case "--help", "-h", "help":
		usage(os.Stdout)
		return 0
	case "--list", "list":
		for _, a := range applets {
			fmt.Println(a.Name)
		}
		return 0
	case "version", "--version":
		fmt.Printf("cnibox %s (commit %s)\nCNI spec versions: %s\n",
			cni.BuildVersion, cni.BuildCommit, strings.Join(cni.AllVersions, ", "))
		return 0
	case "install":
		return install.Main(args[2:], names())
	case "uninstall":
		return install.MainUninstall(args[2:])
	case "cni":
		return cnirun.Main(args[2:])
	default:
		// An applet entry (shared/install) runs as "cnibox /path/to/APPLET".
		if a := lookup(filepath.Base(cmd)); a != nil {
			return runApplet(a, args[2:])
		}
		return unknownApplet(filepath.Base(cmd), cmd)
	}
}

// runApplet runs a as a CNI plugin, or in one of its argv modes (such as
// "dhcp daemon") when it has any and arguments were given.
func runApplet(a *cni.Applet, args []string) int {
	if len(args) > 0 && a.Main != nil {
		return a.Main(args)
	}
	return cni.Main(a)
}

// unknownApplet answers as a plugin must, so that a runtime that execs a
// name we do not implement sees an error instead of an empty result.
func unknownApplet(name, invokedAs string) int {
	e := cni.ConfigError("cnibox has no applet %q (invoked as %q); 'cnibox --list' shows the applets", name, invokedAs)
	fmt.Printf("{\"code\":%d,\"msg\":%q}\n", e.Code, e.Msg)
	fmt.Fprintf(os.Stderr, "cnibox: %s\n", e.Msg)
	return 1
}

func names() []string {
	out := make([]string, len(applets))
	for i, a := range applets {
		out[i] = a.Name
	}
	return out
}

func usage(w *os.File) {
	fmt.Fprintf(w, `cnibox %s: every standard CNI plugin in one binary.

Installed once with an entry per plugin name, it runs the applet named by
the entry it is invoked through, exactly as the reference plugin of that name
would run (CNI_COMMAND and friends in the environment, config on stdin).

Usage:
  cnibox APPLET                 run APPLET as a CNI plugin (same as invoking the link)
  cnibox install --dir DIR [--symlink|--hardlink] [--conflist FILE]
                                install the binary and one entry per applet into DIR
                                (default /opt/cni/bin), atomically and idempotently;
                                entries survive a cp of other plugins over DIR
                                ('cnibox install --help' for flags)
  cnibox uninstall --dir DIR [--purge]
                                remove exactly cnibox's binary and entries from DIR;
                                --purge also cnibox's node state
  cnibox cni add|check|del|gc|status NETWORK NETNS [flags]
                                run a network from a config dir, like cnitool
                                ('cnibox cni --help' for flags)
  cnibox version                version, commit and supported CNI spec versions
  cnibox --list                 applet names, one a line
  cnibox --help                 this text

As a plugin of "type": "cnibox" with "plugins": [...], it runs that whole
plugin list in one process, as libcni would run it as a conflist.

Applets:
`, cni.BuildVersion)
	for _, a := range applets {
		fmt.Fprintf(w, "  %-12s %-5s %s\n", a.Name, a.Kind, a.Summary)
	}
	fmt.Fprintf(w, `
Logging: CNIBOX_LOG_LEVEL (error, warn, info, debug) and CNIBOX_LOG_FILE, or
"cnibox": {"logLevel": ..., "logFile": ...} in a network config. Logs go to
stderr, never stdout.
`)
}
