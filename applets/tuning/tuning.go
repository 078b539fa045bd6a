// Package tuning is the tuning applet: chained after a plugin that made the
// pod's interface, it sets net.* sysctls in the pod's netns and the
// interface's MAC, MTU, promisc, allmulti and tx queue length. Unlike the
// reference plugin, DEL also puts back the sysctls it changed, and GC
// removes the backups of attachments that are gone.
//
// There is deliberately no option to rename the interface: CNI_IFNAME is
// the runtime's name for it, and every later plugin of the chain, CHECK and
// DEL all address the interface by that name. A rename would break them.
package tuning

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/statefile"
)

// Applet is tuning's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "tuning",
	Kind:    "meta",
	Summary: "set sysctls, MAC, MTU, promisc, allmulti, txqlen of the pod interface",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is tuning's configuration, key for key the reference's.
type Config struct {
	cni.NetConf
	// SysCtl sets sysctls in the pod's netns. Keys are dotted
	// ("net.ipv4.conf.IFNAME.arp_notify") or slashed (dots then stay part of
	// a name, as in sysctl(8)); the first IFNAME becomes CNI_IFNAME. Only
	// net.* is allowed, duplicate keys are rejected, and the allowlist file
	// (DefaultAllowlist) applies when it exists.
	SysCtl map[string]string `json:"sysctl,omitempty"`
	// Mac sets the interface's MAC (also from CNI_ARGS MAC=,
	// runtimeConfig.mac and args.cni.mac, later ones winning).
	Mac string `json:"mac,omitempty"`
	// Promisc true turns promiscuous mode on, false off; absent leaves it.
	Promisc *bool `json:"promisc,omitempty"`
	// Mtu sets the MTU; 0 leaves it.
	Mtu int `json:"mtu,omitempty"`
	// Allmulti sets or clears IFF_ALLMULTI; absent leaves it.
	Allmulti *bool `json:"allmulti,omitempty"`
	// TxQLen sets the transmit queue length; absent leaves it.
	TxQLen *int `json:"txQLen,omitempty"`
	// DataDir holds the backups DEL restores from; DefaultDataDir when empty.
	DataDir string `json:"dataDir,omitempty"`

	RuntimeConfig struct {
		Mac string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	// Args.CNI overrides any of the keys for one invocation; its sysctls
	// are merged into SysCtl.
	Args struct {
		CNI struct {
			SysCtl   map[string]string `json:"sysctl,omitempty"`
			Mac      *string           `json:"mac,omitempty"`
			Promisc  *bool             `json:"promisc,omitempty"`
			Mtu      *int              `json:"mtu,omitempty"`
			Allmulti *bool             `json:"allmulti,omitempty"`
			TxQLen   *int              `json:"txQLen,omitempty"`
		} `json:"cni"`
	} `json:"args"`
}

// settings is what one invocation asks for, after every override.
type settings struct {
	sysctls  []sysctl
	mac      net.HardwareAddr
	macField string // where the MAC came from, for messages
	promisc  *bool
	mtu      int
	allmulti *bool
	txQLen   *int
	dataDir  string
}

func (s *settings) touchesLink() bool {
	return s.mac != nil || s.promisc != nil || s.mtu != 0 || s.allmulti != nil || s.txQLen != nil
}

// Add applies the settings, keeping a backup of what it found first, and
// passes the previous result on with the interface's new MAC. If anything
// fails, what was already changed is put back.
func Add(req *cni.Request) (types.Result, error) {
	conf, s, err := load(req)
	if err != nil {
		return nil, err
	}
	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cni.ConfigError("prevResult: missing: tuning must be chained after the plugin that creates %s", req.IfName)
	}
	if err := checkAllowlist(s.sysctls); err != nil {
		return nil, err
	}
	file := backupPath(s.dataDir, req.ContainerID, req.IfName)
	podNS := netnsID(req.Netns)
	err = ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
		return apply(req, s, file, podNS)
	})
	if err != nil {
		return nil, netnsError(req.Netns, err)
	}
	updateResult(prev, req, s)
	req.Log.Note("tuning set %d sysctls%s in the pod, backup %s", len(s.sysctls), map[bool]string{true: " and link attributes", false: ""}[s.touchesLink()], file)
	return prev, nil
}

// apply runs in the pod's netns.
func apply(req *cni.Request, s *settings, file, podNS string) error {
	b := &backup{Network: req.Name, Netns: podNS}
	var link netlink.Link
	if s.touchesLink() {
		var err error
		if link, err = podLink(req.IfName); err != nil {
			return err
		}
		a := link.Attrs()
		if s.mac != nil {
			b.Mac = a.HardwareAddr.String()
		}
		if s.promisc != nil {
			b.Promisc = ptr(a.Promisc != 0)
		}
		if s.mtu != 0 {
			b.Mtu = a.MTU
		}
		if s.allmulti != nil {
			b.Allmulti = ptr(a.RawFlags&unix.IFF_ALLMULTI != 0)
		}
		if s.txQLen != nil {
			b.TxQLen = ptr(a.TxQLen)
		}
	}
	for _, sc := range s.sysctls {
		was, err := readSysctl(sc.Path)
		if errors.Is(err, fs.ErrNotExist) {
			return cni.ConfigError("sysctl[%q]: %s does not exist in the pod's network namespace", sc.Key, sc.Path)
		}
		if err != nil {
			return fmt.Errorf("sysctl[%q]: read: %w", sc.Key, err)
		}
		// Set is what the sysctl will read back as once written, which
		// is the value written nearly always: then the backup is written
		// once, before the change (a crash before the write leaves Was
		// in place, and DEL sees nothing it set), not again after it.
		b.Sysctls = append(b.Sysctls, sysctlBackup{Path: sc.Path, Was: was, Set: sc.Value})
	}
	// What this invocation found, before keepOlder puts in what an
	// earlier ADD of the attachment found: a failure puts back only this
	// invocation's own changes, so that a repeated ADD that fails leaves
	// the first one's settings, and its backup, as they were.
	found := *b
	found.Sysctls = slices.Clone(b.Sysctls)
	oldData, old, err := readBackup(file)
	if err != nil {
		req.Log.Warnf("ignoring unreadable backup of an earlier ADD: %v", err)
	}
	b.keepOlder(old)
	if b.empty() {
		return nil
	}
	if err := saveBackup(file, b); err != nil {
		return err
	}
	if err := change(req, s, link, b); err != nil {
		for i := range found.Sysctls {
			found.Sysctls[i].Set = b.Sysctls[i].Set // keepOlder only appends
		}
		for _, rerr := range restore(req.IfName, &found) {
			req.Log.Warnf("undo after failed ADD: %v", rerr)
		}
		if oldData != nil {
			if rerr := statefile.WriteAtomic(file, oldData); rerr != nil {
				req.Log.Warnf("put back the earlier ADD's backup: %v", rerr)
			}
		} else if rerr := removeBackup(file); rerr != nil {
			req.Log.Warnf("remove backup: %v", rerr)
		}
		return err
	}
	// The backup records what each sysctl read back as, so DEL only puts
	// back values nobody changed since: written again when one reads
	// back otherwise than written.
	for i, sc := range s.sysctls {
		if !sameSysctlValue(b.Sysctls[i].Set, sc.Value) {
			return saveBackup(file, b)
		}
	}
	return nil
}

// change makes the changes; b.Sysctls[i].Set records what sysctl i reads
// back as once written.
func change(req *cni.Request, s *settings, link netlink.Link, b *backup) error {
	for i, sc := range s.sysctls {
		if err := writeSysctl(sc.Path, sc.Value); err != nil {
			if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ERANGE) {
				return cni.ConfigError("sysctl[%q]: the kernel refused %q: %v", sc.Key, sc.Value, err)
			}
			return fmt.Errorf("sysctl[%q]: write %q: %w", sc.Key, sc.Value, err)
		}
		set, err := readSysctl(sc.Path)
		if err != nil {
			return fmt.Errorf("sysctl[%q]: read back: %w", sc.Key, err)
		}
		b.Sysctls[i].Set = set
	}
	if link == nil {
		return nil
	}
	name := req.IfName
	if s.mac != nil {
		if err := netlink.LinkSetHardwareAddr(link, s.mac); err != nil {
			return linkError(s.macField, name, s.mac.String(), err)
		}
	}
	if s.promisc != nil {
		if err := setPromisc(link, *s.promisc); err != nil {
			return linkError("promisc", name, *s.promisc, err)
		}
	}
	if s.mtu != 0 {
		if err := netlink.LinkSetMTU(link, s.mtu); err != nil {
			return linkError("mtu", name, s.mtu, err)
		}
	}
	if s.allmulti != nil {
		if err := setAllmulti(link, *s.allmulti); err != nil {
			return linkError("allmulti", name, *s.allmulti, err)
		}
	}
	if s.txQLen != nil {
		if err := netlink.LinkSetTxQLen(link, *s.txQLen); err != nil {
			return linkError("txQLen", name, *s.txQLen, err)
		}
	}
	return nil
}

// linkError gives a value the kernel refuses the config error code, naming
// the field; other failures stay internal errors.
func linkError(field, ifName string, value any, err error) error {
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ERANGE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
		return cni.ConfigError("%s: %s refuses %v: %v", field, ifName, value, err)
	}
	return fmt.Errorf("%s: set %v on %s: %w", field, value, ifName, err)
}

// restore puts back what b recorded, in the pod's netns: sysctls first
// (only those still holding the value we set; someone else owns the others
// now), then the link's MTU, MAC, promisc, allmulti and txqlen as the
// reference does. Things that no longer exist are skipped.
func restore(ifName string, b *backup) []error {
	var errs []error
	for i := len(b.Sysctls) - 1; i >= 0; i-- {
		sc := b.Sysctls[i]
		cur, err := readSysctl(sc.Path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", sc.Path, err))
			continue
		}
		if sc.Set != "" && !sameSysctlValue(cur, sc.Set) {
			continue
		}
		if !sameSysctlValue(cur, sc.Was) {
			if err := writeSysctl(sc.Path, sc.Was); err != nil {
				errs = append(errs, fmt.Errorf("restore sysctl %s to %q: %w", sc.Path, sc.Was, err))
			}
		}
	}
	if b.Mac == "" && b.Promisc == nil && b.Mtu == 0 && b.Allmulti == nil && b.TxQLen == nil {
		return errs
	}
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			errs = append(errs, fmt.Errorf("find %s: %w", ifName, err))
		}
		return errs
	}
	if b.Mtu != 0 {
		if err := netlink.LinkSetMTU(link, b.Mtu); err != nil {
			errs = append(errs, fmt.Errorf("restore mtu %d: %w", b.Mtu, err))
		}
	}
	if b.Mac != "" {
		mac, err := net.ParseMAC(b.Mac)
		if err == nil {
			err = netlink.LinkSetHardwareAddr(link, mac)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore mac %s: %w", b.Mac, err))
		}
	}
	if b.Promisc != nil {
		if err := setPromisc(link, *b.Promisc); err != nil {
			errs = append(errs, fmt.Errorf("restore promisc %v: %w", *b.Promisc, err))
		}
	}
	if b.Allmulti != nil {
		if err := setAllmulti(link, *b.Allmulti); err != nil {
			errs = append(errs, fmt.Errorf("restore allmulti %v: %w", *b.Allmulti, err))
		}
	}
	if b.TxQLen != nil {
		if err := netlink.LinkSetTxQLen(link, *b.TxQLen); err != nil {
			errs = append(errs, fmt.Errorf("restore txQLen %d: %w", *b.TxQLen, err))
		}
	}
	return errs
}

// Del restores what ADD changed and removes the backup. It succeeds when
// there is nothing to restore (no backup, netns or interface gone); a value
// the kernel refuses to take back is logged, not fatal, so a pod is never
// stuck in deletion because of tuning.
func Del(req *cni.Request) error {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return err
	}
	file := backupPath(dataDir(conf), req.ContainerID, req.IfName)
	b, err := loadBackup(file)
	if err != nil {
		req.Log.Warnf("unreadable backup, nothing restored: %v", err)
	}
	if b != nil && b.Netns != "" && req.Netns != "" && netnsID(req.Netns) != b.Netns {
		// Not the netns ADD changed (a runtime that passed another
		// pod's): its interface is left as it is.
		req.Log.Warnf("CNI_NETNS %s is not the network namespace ADD tuned: nothing restored there", req.Netns)
		b = nil
	}
	if b != nil && req.Netns != "" {
		err := ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
			for _, rerr := range restore(req.IfName, b) {
				req.Log.Warnf("%s: %v", req.IfName, rerr)
			}
			return nil
		})
		var missing ns.NSPathNotExistErr
		if err != nil && !errors.As(err, &missing) {
			req.Log.Warnf("netns %q: %v", req.Netns, err)
		}
	}
	return removeBackup(file)
}

// Check verifies every value the config sets.
func Check(req *cni.Request) error {
	conf, s, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return err
	}
	if prev == nil {
		return cni.ConfigError("prevResult: missing: tuning must be chained after the plugin that creates %s", req.IfName)
	}
	err = ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
		for _, sc := range s.sysctls {
			cur, err := readSysctl(sc.Path)
			if err != nil {
				return fmt.Errorf("sysctl[%q]: %w", sc.Key, err)
			}
			if !sameSysctlValue(cur, sc.Value) {
				return fmt.Errorf("sysctl[%q] is %q, want %q", sc.Key, cur, sc.Value)
			}
		}
		if !s.touchesLink() {
			return nil
		}
		link, err := podLink(req.IfName)
		if err != nil {
			return err
		}
		a := link.Attrs()
		switch {
		case s.mac != nil && a.HardwareAddr.String() != s.mac.String():
			return fmt.Errorf("%s: %s has MAC %s, want %s", s.macField, req.IfName, a.HardwareAddr, s.mac)
		case s.promisc != nil && (a.Promisc != 0) != *s.promisc:
			return fmt.Errorf("promisc: %s has promisc %v, want %v", req.IfName, a.Promisc != 0, *s.promisc)
		case s.mtu != 0 && a.MTU != s.mtu:
			return fmt.Errorf("mtu: %s has MTU %d, want %d", req.IfName, a.MTU, s.mtu)
		case s.allmulti != nil && (a.RawFlags&unix.IFF_ALLMULTI != 0) != *s.allmulti:
			return fmt.Errorf("allmulti: %s has allmulti %v, want %v", req.IfName, a.RawFlags&unix.IFF_ALLMULTI != 0, *s.allmulti)
		case s.txQLen != nil && a.TxQLen != *s.txQLen:
			return fmt.Errorf("txQLen: %s has txqueuelen %d, want %d", req.IfName, a.TxQLen, *s.txQLen)
		}
		return nil
	})
	if err != nil {
		return netnsError(req.Netns, err)
	}
	return nil
}

// GC removes this network's backups whose attachment is not valid any more.
// Backups written by the reference plugin do not say their network, so they
// are left alone: in a shared dataDir they may belong to another network.
func GC(req *cni.Request) error {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return err
	}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	dir := dataDir(conf)
	keep := map[string]bool{}
	for a := range valid {
		keep[backupName(a.ContainerID, a.IfName)] = true
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dataDir: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !isBackupName(e.Name()) || keep[e.Name()] {
			continue
		}
		file := dir + "/" + e.Name()
		b, err := loadBackup(file)
		if err != nil || b == nil || b.Network != req.Name {
			continue
		}
		if err := removeBackup(file); err != nil {
			errs = append(errs, err)
		} else {
			req.Log.Infof("removed stale backup %s", file)
		}
	}
	return errors.Join(errs...)
}

// Status reports whether ADD can use the allowlist: a file that exists but
// cannot be read or compiled fails every ADD that sets sysctls.
func Status(req *cni.Request) error {
	if _, err := readAllowlist(allowlistPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return cni.NotAvailable("%v", err)
	}
	return nil
}

func load(req *cni.Request) (*Config, *settings, error) {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return nil, nil, err
	}
	var raw struct {
		SysCtl json.RawMessage `json:"sysctl"`
		Args   struct {
			CNI struct {
				SysCtl json.RawMessage `json:"sysctl"`
			} `json:"cni"`
		} `json:"args"`
	}
	_ = json.Unmarshal(req.Config, &raw) // already decoded once; shapes are right
	if err := duplicateKeys(raw.SysCtl, "sysctl"); err != nil {
		return nil, nil, err
	}
	if err := duplicateKeys(raw.Args.CNI.SysCtl, "args.cni.sysctl"); err != nil {
		return nil, nil, err
	}

	s := &settings{
		promisc:  conf.Promisc,
		mtu:      conf.Mtu,
		allmulti: conf.Allmulti,
		txQLen:   conf.TxQLen,
		dataDir:  dataDir(conf),
	}
	mac, macField := conf.Mac, "mac"
	var env struct {
		cni.CommonArgs
		MAC types.UnmarshallableString
	}
	if err := req.LoadArgs(&env); err != nil {
		return nil, nil, err
	}
	if env.MAC != "" {
		mac, macField = string(env.MAC), "CNI_ARGS MAC"
	}
	if conf.RuntimeConfig.Mac != "" {
		mac, macField = conf.RuntimeConfig.Mac, "runtimeConfig.mac"
	}
	sysctls := map[string]string{}
	for k, v := range conf.SysCtl {
		sysctls[k] = v
	}
	o := conf.Args.CNI
	for k, v := range o.SysCtl {
		sysctls[k] = v
	}
	mtuField, txField := "mtu", "txQLen"
	if o.Mac != nil {
		mac, macField = *o.Mac, "args.cni.mac"
	}
	if o.Promisc != nil {
		s.promisc = o.Promisc
	}
	if o.Mtu != nil {
		s.mtu, mtuField = *o.Mtu, "args.cni.mtu"
	}
	if o.Allmulti != nil {
		s.allmulti = o.Allmulti
	}
	if o.TxQLen != nil {
		s.txQLen, txField = o.TxQLen, "args.cni.txQLen"
	}

	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return nil, nil, cni.ConfigError("%s: %v", macField, err)
		}
		if len(hw) == 6 && (hw[0]&1 == 1 || string(hw) == "\x00\x00\x00\x00\x00\x00") {
			return nil, nil, cni.ConfigError("%s: %s is not a unicast address", macField, hw)
		}
		s.mac, s.macField = hw, macField
	}
	if s.mtu < 0 || s.mtu > 65535 {
		return nil, nil, cni.ConfigError("%s: %d is not between 0 and 65535", mtuField, s.mtu)
	}
	if s.txQLen != nil && *s.txQLen < 0 {
		return nil, nil, cni.ConfigError("%s: %d is negative", txField, *s.txQLen)
	}
	var err error
	if s.sysctls, err = resolveSysctls(sysctls, req.IfName); err != nil {
		return nil, nil, err
	}
	return conf, s, nil
}

func dataDir(conf *Config) string {
	if conf.DataDir != "" {
		return conf.DataDir
	}
	return DefaultDataDir
}

// updateResult reports the new MAC (and MTU, when the result carries one)
// of the pod's interface.
func updateResult(res *current.Result, req *cni.Request, s *settings) {
	var match []*current.Interface
	for _, i := range res.Interfaces {
		if i.Name == req.IfName && i.Sandbox != "" {
			match = append(match, i)
		}
	}
	if len(match) == 0 {
		for _, i := range res.Interfaces {
			if i.Name == req.IfName {
				match = append(match, i)
			}
		}
	}
	for _, i := range match {
		if s.mac != nil {
			i.Mac = s.mac.String()
		}
		if s.mtu != 0 && i.Mtu != 0 {
			i.Mtu = s.mtu
		}
	}
}

func podLink(name string) (netlink.Link, error) {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s in the pod: %w", name, err)
	}
	return link, nil
}

func setPromisc(link netlink.Link, on bool) error {
	if on {
		return netlink.SetPromiscOn(link)
	}
	return netlink.SetPromiscOff(link)
}

func setAllmulti(link netlink.Link, on bool) error {
	if on {
		return netlink.LinkSetAllmulticastOn(link)
	}
	return netlink.LinkSetAllmulticastOff(link)
}

func ptr[T any](v T) *T { return &v }

// netnsError gives a namespace that does not exist the spec's "unknown
// container" code.
func netnsError(path string, err error) error {
	var missing ns.NSPathNotExistErr
	if errors.As(err, &missing) {
		return cni.Errorf(cni.ErrUnknownContainer, "tuning: netns %q: %v", path, err)
	}
	return fmt.Errorf("tuning: %w", err)
}

// netnsID identifies the network namespace at path (device and inode;
// "" when it cannot be read): what ties a backup to the pod ADD tuned.
func netnsID(path string) string {
	var st unix.Stat_t
	if path == "" || unix.Stat(path, &st) != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}
