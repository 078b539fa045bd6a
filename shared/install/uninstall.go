package install

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/nftables"
)

// Uninstall removes from dir exactly what Install made there: every applet
// entry, symlink and hard link that runs dir's cnibox binary, then the
// binary, then temporary files an interrupted install left. Anything else
// (a reference plugin, a name a cp replaced) stays. It returns the names
// it removed.
func Uninstall(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	var removed, temps []string
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, ".cnibox-tmp-") && strings.HasPrefix(name, ".") {
			temps = append(temps, name)
			continue
		}
		if name == BinaryName {
			continue // last: while entries remain they keep working
		}
		if k := Inspect(dir, name); Ours(k) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return removed, err
			}
			removed = append(removed, name)
		}
	}
	if Inspect(dir, BinaryName) == Binary {
		if err := os.Remove(filepath.Join(dir, BinaryName)); err != nil {
			return removed, err
		}
		removed = append(removed, BinaryName)
	}
	for _, name := range temps {
		os.Remove(filepath.Join(dir, name))
	}
	return removed, syncDir(dir)
}

// The state cnibox's applets add to a node beyond what the reference keeps
// (SECURITY.md): per-attachment records of portmap and firewall, which let
// their DEL work without prevResult, host-local's index beside the
// reference's reservation files, the lock directory of older versions, and
// portmap's localhost guard. None of it is needed once the reference
// plugins serve the node again; Purge removes it.
var stateDirs = []string{"cnibox-portmap", "cnibox-firewall", "networks/.cnibox"}

const (
	guardChain    = "CNI-HOSTPORT-GUARD" // applets/portmap's filter chain
	nftGuardTable = "cni_hostport"       // and its nftables base chain "guard"
	nftGuardChain = "guard"
)

// Purge removes cnibox's node state: the directories above under stateDir
// (normally /var/lib/cni), runDir (/run/cnibox), and portmap's guard (the rule
// "-A INPUT -j CNI-HOSTPORT-GUARD" and its chain, for iptables and
// ip6tables; the guard base chain of nftables' ip cni_hostport) in the
// calling process's network namespace. It reports what it did, one line
// each, through say.
func Purge(stateDir, runDir string, say func(string)) error {
	var errs []error
	for _, d := range append(stateDirs, runDir) {
		p := d
		if d != runDir {
			p = filepath.Join(stateDir, d)
		}
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if n := records(p); n > 0 && strings.HasPrefix(d, "cnibox-") {
			say(fmt.Sprintf("%s held %d attachment records: the reference's DEL of those attachments does not need them", p, n))
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
			continue
		}
		say("removed " + p)
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(cmd); err != nil {
			continue
		}
		removedJump := false
		for exec.Command(cmd, "-w", "-t", "filter", "-D", "INPUT", "-j", guardChain).Run() == nil {
			removedJump = true
		}
		if exec.Command(cmd, "-w", "-t", "filter", "-S", guardChain).Run() == nil {
			if out, err := exec.Command(cmd, "-w", "-t", "filter", "-F", guardChain).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s -F %s: %v: %s", cmd, guardChain, err, out))
			} else if out, err := exec.Command(cmd, "-w", "-t", "filter", "-X", guardChain).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s -X %s: %v: %s (another rule still jumps to it)", cmd, guardChain, err, out))
			} else {
				removedJump = true
			}
		}
		if removedJump {
			say(fmt.Sprintf("removed %s's %s and the INPUT rule that jumps to it", cmd, guardChain))
		}
	}
	if removed, err := purgeNftGuard(); err != nil {
		errs = append(errs, err)
	} else if removed {
		say("removed nftables chain ip " + nftGuardTable + " " + nftGuardChain)
	}
	return errors.Join(errs...)
}

// purgeNftGuard deletes portmap's guard base chain from table ip
// cni_hostport; the table and its other chains are the reference's too.
func purgeNftGuard() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, nil // no netlink: nothing of ours can be there either
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: nftGuardTable}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, nil // no nf_tables in this kernel or netns
	}
	for _, ch := range chains {
		if ch.Table.Name == nftGuardTable && ch.Name == nftGuardChain {
			c.FlushChain(ch)
			c.DelChain(&nftables.Chain{Table: t, Name: nftGuardChain})
			if err := c.Flush(); err != nil {
				return false, fmt.Errorf("delete nftables chain ip %s %s: %w", nftGuardTable, nftGuardChain, err)
			}
			return true, nil
		}
	}
	return false, nil
}

// records counts the files under dir (one per attachment).
func records(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// MainUninstall is "cnibox uninstall".
func MainUninstall(args []string) int {
	fs := flag.NewFlagSet("cnibox uninstall", flag.ContinueOnError)
	dir := fs.String("dir", "/opt/cni/bin", "CNI plugin directory to remove cnibox from")
	purge := fs.Bool("purge", false, "also remove cnibox's node state: its records under --state-dir, /run/cnibox and portmap's CNI-HOSTPORT-GUARD (iptables, ip6tables, nftables)")
	stateDir := fs.String("state-dir", "/var/lib/cni", "the CNI state directory, for --purge")
	runDir := fs.String("run-dir", "/run/cnibox", "the lock directory of cnibox before 0.1.0, for --purge")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: cnibox uninstall [--dir DIR] [--purge [--state-dir DIR]]\n\n"+
			"Removes exactly the cnibox binary of DIR and the entries and links that run it;\n"+
			"every other file (the reference plugins, names a cp replaced) stays.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	removed, err := Uninstall(*dir)
	sort.Strings(removed)
	if len(removed) > 0 {
		fmt.Printf("removed from %s: %s\n", *dir, strings.Join(removed, " "))
	} else if err == nil {
		fmt.Printf("no cnibox install in %s\n", *dir)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cnibox uninstall: %v\n", err)
		return 1
	}
	if *purge {
		if err := Purge(*stateDir, *runDir, func(s string) { fmt.Println(s) }); err != nil {
			fmt.Fprintf(os.Stderr, "cnibox uninstall --purge: %v\n", err)
			return 1
		}
	}
	return 0
}
