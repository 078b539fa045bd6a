package hostlocal

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/logging"
	"github.com/cnibox/cnibox/shared/statefile"
)

// The reference's on-disk names.
const (
	lockName         = "lock"
	lastReservedName = "last_reserved_ip." // + range set index
	lineBreak        = "\r\n"
)

// indexDirName is the index's home under the data dir. Network names
// must start with a letter or digit, so no network can be called this.
const indexDirName = ".cnibox"

// stampVersion heads the stamp file; a stamp of another version is stale.
const stampVersion = "cnibox-host-local-index 2"

// owner is what a reservation file holds: "<id>\r\n<ifname>", or, in the
// files of old reference versions, only "<id>".
func owner(id, ifname string) string { return strings.TrimSpace(id) + lineBreak + ifname }

// store is one network's reservations, locked for the life of the value.
// See the package documentation for the layout and the index protocol.
type store struct {
	dir     string // <dataDir>/<network>: the reservations (the truth)
	idxDir  string // <dataDir>/.cnibox/<network>
	tab     *table // idxDir/index
	lock    *os.File
	log     *logging.Logger
	dirty   bool // dir or index changed: commit writes a new stamp
	broken  bool // the index may disagree with the files: drop the stamp
	rebuilt bool // this open rebuilt the index (for tests and logs)
	forDel  bool // openStoreForDel: never rebuild (it writes a file)
	// released: this call removed reservations; when none is left, the
	// index goes too (removeIndex).
	released bool
}

func (s *store) tablePath() string { return filepath.Join(s.idxDir, "index") }
func (s *store) stampPath() string { return filepath.Join(s.idxDir, "stamp") }

// openStore creates the network's directory if needed, takes its lock
// (bounded), and makes sure the index agrees with the files, rebuilding it
// from them when it does not.
func openStore(dataDir, network string, log *logging.Logger) (*store, error) {
	s, err := lockStore(dataDir, network, log, true)
	if err != nil {
		return nil, err
	}
	if err := mkdirAll(s.idxDir, 0o700); err != nil {
		s.unlock()
		return nil, fmt.Errorf("create index dir: %w", err)
	}
	if s.stampValid() {
		if s.tab, err = openTable(s.tablePath()); err != nil {
			s.log.Warnf("host-local: %v; rebuilding the index of %s", err, s.dir)
		}
	}
	if s.tab == nil {
		if err := s.rebuild(nil); err != nil {
			s.broken = true
			s.close()
			return nil, fmt.Errorf("rebuild index of %s: %w", s.dir, err)
		}
	}
	return s, nil
}

// openStoreForDel is openStore for DEL, which must work on a full disk:
// it needs to create nothing (no network directory, no index). When the
// index is current it is used (a release rewrites slots already on disk,
// in place). When it is not (a reservation the reference made, a network
// cnibox never indexed) DEL rebuilds it as other calls do, so that the
// DELs that follow stay cheap; but when that cannot be written (a full
// disk, a read-only or over-quota one) the store is in scan mode (tab is
// nil): DEL finds the attachment's files by reading the directory, as
// the reference does, unlinks them, and leaves the index marked stale
// for a later call to rebuild.
func openStoreForDel(dataDir, network string, log *logging.Logger) (*store, error) {
	s, err := lockStore(dataDir, network, log, false)
	if err != nil {
		return nil, err
	}
	s.forDel = true
	if s.stampValid() {
		if s.tab, err = openTable(s.tablePath()); err != nil {
			s.tab = nil
		}
	}
	if s.tab == nil {
		if err := mkdirAll(s.idxDir, 0o700); err == nil {
			err = s.rebuild(nil)
		}
		if err != nil {
			s.log.Infof("host-local: cannot rebuild the index of %s (%v): DEL reads the directory", s.dir, err)
			s.tab = nil
		}
	}
	if s.tab == nil {
		s.broken = true // whatever index there is, it is stale
	}
	return s, nil
}

// lockStore takes the network's lock, creating its directory first when
// create is set.
func lockStore(dataDir, network string, log *logging.Logger, create bool) (*store, error) {
	s := &store{
		dir:    filepath.Join(dataDir, network),
		idxDir: filepath.Join(dataDir, indexDirName, network),
		log:    log,
	}
	if create {
		if err := os.MkdirAll(s.dir, 0o755); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	}
	lock, err := lockFile(filepath.Join(s.dir, lockName), lockTimeout())
	if err != nil {
		return nil, err
	}
	s.lock = lock
	return s, nil
}

// mkdirAll is os.MkdirAll that tries again when a parent it made was
// removed before it could make the child (a DEL of another network's last
// attachment removes an empty .cnibox).
func mkdirAll(dir string, perm fs.FileMode) error {
	var err error
	for try := 0; try < 3; try++ {
		if err = os.MkdirAll(dir, perm); !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return err
}

// close commits the index (a new stamp when something changed, none when
// the index may be wrong) and releases the lock.
func (s *store) close() {
	if s.lock == nil {
		return
	}
	if s.tab != nil && s.tab.broken {
		s.broken = true
	}
	switch {
	case s.broken:
		os.Remove(s.stampPath())
	case s.released && s.tab != nil && s.tab.used == 0:
		// The last attachment is gone: so is the index (the next ADD
		// starts a new one from an empty directory, at no cost).
		s.removeIndex()
	case s.dirty:
		if err := s.writeStamp(); err != nil {
			s.log.Warnf("host-local: write index stamp (the next call rebuilds the index): %v", err)
			os.Remove(s.stampPath())
		}
	}
	s.tab.close()
	s.unlock()
}

// removeIndex deletes the network's index, its directory, and .cnibox
// when no other network has one: what a network with no attachment left
// keeps is only the reference's own files. Unlinking needs no free space.
func (s *store) removeIndex() {
	os.Remove(s.stampPath()) // first: a stampless index is never trusted
	os.Remove(s.tablePath())
	os.Remove(s.tablePath() + ".new")
	os.Remove(s.idxDir)
	os.Remove(filepath.Dir(s.idxDir))
}

func (s *store) unlock() {
	s.lock.Close() // closing the last descriptor drops the flock
	s.lock = nil
}

// stamp describes the identity and last change of the network directory
// and of the index file.
func (s *store) stamp() (string, []unix.Timespec, error) {
	var b strings.Builder
	var times []unix.Timespec
	b.WriteString(stampVersion + "\n")
	for _, d := range []string{s.dir, s.tablePath()} {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			return "", nil, &fs.PathError{Op: "stat", Path: d, Err: err}
		}
		fmt.Fprintf(&b, "%d %d %d %d.%09d\n", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		times = append(times, st.Mtim)
	}
	return b.String(), times, nil
}

func (s *store) stampValid() bool {
	want, err := statefile.Read(s.stampPath())
	if err != nil {
		return false
	}
	got, _, err := s.stamp()
	return err == nil && got == string(want)
}

// writeStamp records the directories' current state as the one the index
// matches. On a filesystem whose mtimes tick with the kernel's coarse clock
// (tmpfs, kernels without multigrain timestamps), a change made by another
// process later in the same tick as our last one would leave the mtime as
// it is, and the stamp would hide it. So when a directory's mtime is the
// current coarse time, we set it one nanosecond back: a value no later
// change can be given (those get the current time or later), at the cost
// of one syscall instead of waiting out the tick with the lock held.
func (s *store) writeStamp() error {
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &now); err != nil {
		return err
	}
	_, times, err := s.stamp()
	if err != nil {
		return err
	}
	for i, d := range []string{s.dir, s.tablePath()} {
		// An mtime with no nanoseconds may come from a filesystem that
		// keeps whole seconds (some NFS): then any change later in this
		// second would look the same. Stepping it back works there too
		// (the filesystem rounds the step down a whole second).
		if times[i].Nano() < now.Nano() && times[i].Nsec != 0 {
			continue
		}
		back := unix.NsecToTimespec(times[i].Nano() - 1)
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, back}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, d, ts, 0); err != nil {
			return &fs.PathError{Op: "utimensat", Path: d, Err: err}
		}
	}
	st, _, err := s.stamp()
	if err != nil {
		return err
	}
	// Written in place: no directory operation, no truncation (which on
	// some filesystems discards blocks, with the lock held, and on a full
	// one frees the page the write then cannot get back), and a stamp torn
	// by a crash matches no state of the directories, so it only costs a
	// rebuild.
	return writeInPlace(s.stampPath(), []byte(st))
}

// writeInPlace overwrites path's contents with data without truncating
// it first: one pwrite over the blocks the file has, then a truncate only
// when the old contents were longer. A symlink at path is replaced, never
// written through. Readers of these files (the stamp, last_reserved_ip)
// survive a torn write: a stamp that matches nothing costs a rebuild, an
// address that does not parse a fresh start of the round-robin.
func writeInPlace(path string, data []byte) error {
	for try := 0; ; try++ {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == unix.ELOOP && try == 0 {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "open", Path: path, Err: err}
		}
		f := os.NewFile(uintptr(fd), path)
		_, err = f.WriteAt(data, 0)
		if err == nil {
			var st os.FileInfo
			if st, err = f.Stat(); err == nil && st.Size() > int64(len(data)) {
				err = f.Truncate(int64(len(data)))
			}
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
}

// entry is one reservation file.
type entry struct {
	ip      netip.Addr
	content string // trimmed
}

// scan reads every reservation file. Names that are not canonical IP
// addresses (lock, last_reserved_ip.*, anything else someone put there)
// are not reservations and are left alone.
func (s *store) scan() ([]entry, error) {
	d, err := os.Open(s.dir)
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	out := make([]entry, 0, len(names))
	for _, name := range names {
		ip, ok := reservationName(name)
		if !ok {
			continue
		}
		data, err := statefile.Read(filepath.Join(s.dir, name))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ELOOP) {
				continue // gone, or a symlink: no reservation of anybody's
			}
			return nil, err
		}
		out = append(out, entry{ip: ip, content: strings.TrimSpace(string(data))})
	}
	return out, nil
}

// reservationName parses a file name as the reference writes reservation
// names (net.IP.String(), which netip prints the same way).
func reservationName(name string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(name)
	if err != nil || ip.Zone() != "" || ip.String() != name {
		return netip.Addr{}, false
	}
	return ip, true
}

// rebuild makes the index from the files. entries are the reservation
// files when the caller has just scanned them (GC), else rebuild scans.
// Empty reservation files are repaired: every writer (the reference too)
// creates and fills a reservation under the lock we hold, so an empty one
// is what a writer killed in between left behind, and it names nobody.
func (s *store) rebuild(entries []entry) error {
	if entries == nil {
		var err error
		if entries, err = s.scan(); err != nil {
			return err
		}
	}
	records := map[key][]netip.Addr{}
	for _, e := range entries {
		if e.content == "" {
			s.log.Warnf("host-local: removing empty reservation %s left by an interrupted ADD", filepath.Join(s.dir, e.ip.String()))
			if err := os.Remove(filepath.Join(s.dir, e.ip.String())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		if k, ok := keyOf(e.content); ok {
			records[k] = append(records[k], e.ip)
		}
	}
	return s.replaceTable(records, len(entries))
}

// replaceTable swaps in a new index file holding records.
func (s *store) replaceTable(records map[key][]netip.Addr, scanned int) error {
	os.RemoveAll(filepath.Join(s.idxDir, "att")) // the previous layout
	t, err := createTable(s.tablePath(), records)
	if err != nil {
		return err
	}
	s.tab.close()
	s.tab = t
	s.dirty, s.rebuilt = true, true
	s.log.Debugf("host-local: rebuilt the index of %s: %d records from %d reservations", s.dir, len(records), scanned)
	return nil
}

// record returns the addresses the index lists under k; complete is false
// when the attachment holds more than the index keeps for one record.
func (s *store) record(k key) ([]netip.Addr, bool, error) {
	ips, complete, err := s.tab.get(k)
	if err != nil {
		s.broken = true
	}
	return ips, complete, err
}

// setRecord replaces the record under k; no addresses removes it. The
// index file doubles (from its own records) when it gets half full.
func (s *store) setRecord(k key, ips []netip.Addr) error {
	s.dirty = true
	if len(ips) > 0 && s.tab.needsGrowth() {
		records, err := s.tab.all()
		if err != nil {
			s.log.Warnf("host-local: %v; rebuilding the index of %s from the files", err, s.dir)
			if err := s.rebuild(nil); err != nil {
				s.broken = true
				return err
			}
		} else if err := s.replaceTable(records, 0); err != nil {
			s.broken = true
			return err
		}
	}
	if err := s.tab.put(k, ips); err != nil {
		s.broken = true
		return err
	}
	if err := s.tab.writeHeader(); err != nil {
		s.broken = true
		return err
	}
	return nil
}

// holds returns ips if every one of their reservation files names want
// as owner: the index says where to look, the files say what is true. A
// file that names someone else, or is gone, means that the index
// disagrees with the files (nothing we do leaves it so while the stamp
// matches): that is an error, and the caller rebuilds.
func (s *store) holds(ips []netip.Addr, want string) ([]netip.Addr, error) {
	for _, ip := range ips {
		data, err := statefile.Read(filepath.Join(s.dir, ip.String()))
		if err != nil || strings.TrimSpace(string(data)) != want {
			return nil, fmt.Errorf("index record of %q lists %s, which the files do not give it", want, ip)
		}
	}
	return ips, nil
}

// owned returns the addresses the attachment holds, and whether they are
// held through legacy id-only files (used, as by the reference, only when
// the attachment holds none of its own).
func (s *store) owned(id, ifname string) (ips []netip.Addr, legacy bool, err error) {
	if s.tab == nil {
		return s.scanLookup(id, ifname)
	}
	ips, legacy, err = s.lookup(id, ifname)
	if err != nil && s.forDel {
		// DEL does not rebuild: it reads the directory and leaves the
		// index stale for the next ADD.
		s.log.Warnf("host-local: %v; reading %s instead", err, s.dir)
		s.broken = true
		return s.scanLookup(id, ifname)
	}
	if err != nil {
		// The index disagrees with the files even though the stamp
		// matched. Rebuild it from the files and ask again.
		s.log.Warnf("host-local: %v; rebuilding the index of %s", err, s.dir)
		if err := s.rebuild(nil); err != nil {
			return nil, false, err
		}
		s.broken = false
		return s.lookup(id, ifname)
	}
	return ips, legacy, nil
}

// scanLookup is lookup without the index (openStoreForDel's scan mode).
func (s *store) scanLookup(id, ifname string) (ips []netip.Addr, legacy bool, err error) {
	ips, err = s.scanOwned(owner(id, ifname))
	if err != nil || len(ips) > 0 {
		return ips, false, err
	}
	ips, err = s.scanOwned(strings.TrimSpace(id))
	return ips, true, err
}

func (s *store) lookup(id, ifname string) (ips []netip.Addr, legacy bool, err error) {
	ips, err = s.lookupKey(attachmentKey(id, ifname), owner(id, ifname))
	if err != nil || len(ips) > 0 {
		return ips, false, err
	}
	ips, err = s.lookupKey(legacyKey(id), strings.TrimSpace(id))
	return ips, true, err
}

func (s *store) lookupKey(k key, want string) ([]netip.Addr, error) {
	rec, complete, err := s.record(k)
	if err != nil {
		return nil, err
	}
	if !complete {
		return s.scanOwned(want)
	}
	return s.holds(rec, want)
}

// scanOwned finds want's reservations the slow way, for the rare owner of
// more addresses than an index record keeps.
func (s *store) scanOwned(want string) ([]netip.Addr, error) {
	entries, err := s.scan()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, e := range entries {
		if e.content == want {
			out = append(out, e.ip)
		}
	}
	return out, nil
}

// reserve creates ip's reservation file for the attachment; false when
// the address is taken. The file is written as the reference writes it.
func (s *store) reserve(ip netip.Addr, id, ifname string) (bool, error) {
	path := filepath.Join(s.dir, ip.String())
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.dirty = true
	testHook("reserve-created")
	_, err = f.WriteString(owner(id, ifname))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return false, err
	}
	return true, nil
}

// unreserve removes reservation files.
func (s *store) unreserve(ips []netip.Addr) error {
	var errs []error
	for _, ip := range ips {
		s.dirty, s.released = true, true
		if err := os.Remove(filepath.Join(s.dir, ip.String())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// lastReserved reads last_reserved_ip.<idx>; invalid or missing is zero.
func (s *store) lastReserved(idx int) netip.Addr {
	data, err := statefile.Read(filepath.Join(s.dir, lastReservedName+strconv.Itoa(idx)))
	if err != nil {
		return netip.Addr{} // missing, or a symlink (not followed)
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

func (s *store) setLastReserved(idx int, ip netip.Addr) error {
	path := filepath.Join(s.dir, lastReservedName+strconv.Itoa(idx))
	if _, err := os.Lstat(path); err != nil {
		s.dirty = true // creating it changes the directory
	}
	// In place, not truncated: this runs on every ADD with the lock held.
	return writeInPlace(path, []byte(ip.String()))
}
