package hostlocal

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// table is the index: an on-disk open-addressing hash table in one file,
// from an attachment's key to the addresses it holds. A lookup or an update
// reads or writes one or two 128-byte slots (pread/pwrite), so ADD and DEL
// cost the same at 250 or 65k reservations, and a rebuild writes one file
// instead of one per attachment.
//
// Layout: a 64-byte header (magic, version, slot count, live and deleted
// slot counts) and then the slots:
//
//	state(1) count(1) flags(1) pad(5) key(16) addrs(6 × [family(1) addr(16)]) pad(2)
//
// An attachment with more than six addresses (six range sets, or an old
// id-only owner of many files) is marked overflow and looked up by a scan.
type table struct {
	f      *os.File
	slots  uint32
	used   uint32 // live slots
	tombs  uint32 // deleted slots
	broken bool
}

const (
	tableMagic   = "CNIBOXHL"
	tableVersion = 1
	headerSize   = 64
	slotSize     = 128
	slotAddrs    = 6
	minSlots     = 1024

	slotEmpty = 0
	slotLive  = 1
	slotTomb  = 2

	flagOverflow = 1
)

// key identifies an attachment ("a", id, ifname) or an old id-only owner
// ("l", id) in the table.
type key [16]byte

func attachmentKey(id, ifname string) key {
	return hashKey("a\x00" + strings.TrimSpace(id) + "\x00" + ifname)
}
func legacyKey(id string) key { return hashKey("l\x00" + strings.TrimSpace(id)) }

func hashKey(s string) key {
	sum := sha256.Sum256([]byte(s))
	var k key
	copy(k[:], sum[:16])
	return k
}

// keyOf returns the key of a reservation file's content; false for
// content that names no attachment (empty, or more than two lines).
func keyOf(content string) (key, bool) {
	c := strings.TrimSpace(content)
	if c == "" {
		return key{}, false
	}
	parts := strings.Split(c, lineBreak)
	switch len(parts) {
	case 1:
		return legacyKey(parts[0]), true
	case 2:
		return attachmentKey(parts[0], parts[1]), true
	}
	return key{}, false
}

// openTable opens an existing table file and checks its header.
func openTable(path string) (*table, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	t := &table{f: f}
	var h [headerSize]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("read index header: %w", err)
	}
	if string(h[:8]) != tableMagic || binary.LittleEndian.Uint32(h[8:]) != tableVersion {
		f.Close()
		return nil, errors.New("index header: not a cnibox host-local index of this version")
	}
	t.slots = binary.LittleEndian.Uint32(h[12:])
	t.used = binary.LittleEndian.Uint32(h[16:])
	t.tombs = binary.LittleEndian.Uint32(h[20:])
	if st, err := f.Stat(); err != nil || t.slots < minSlots || st.Size() != headerSize+int64(t.slots)*slotSize {
		f.Close()
		return nil, errors.New("index header: size does not match")
	}
	return t, nil
}

// createTable writes a new table holding records to path (through a
// temporary file renamed over it), sized for growth.
func createTable(path string, records map[key][]netip.Addr) (*table, error) {
	slots := uint32(minSlots)
	for slots < uint32(len(records))*4 {
		slots *= 2
	}
	tmp := path + ".new"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	t := &table{f: f, slots: slots}
	fail := func(err error) (*table, error) {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	// Empty slots are zeros: a sparse file costs nothing to create.
	if err := f.Truncate(headerSize + int64(slots)*slotSize); err != nil {
		return fail(err)
	}
	for k, ips := range records {
		if err := t.put(k, ips); err != nil {
			return fail(err)
		}
	}
	if err := t.writeHeader(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return t, nil
}

func (t *table) close() {
	if t != nil && t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

func (t *table) writeHeader() error {
	var h [headerSize]byte
	copy(h[:], tableMagic)
	binary.LittleEndian.PutUint32(h[8:], tableVersion)
	binary.LittleEndian.PutUint32(h[12:], t.slots)
	binary.LittleEndian.PutUint32(h[16:], t.used)
	binary.LittleEndian.PutUint32(h[20:], t.tombs)
	_, err := t.f.WriteAt(h[:], 0)
	return err
}

type slot struct {
	state, count, flags byte
	key                 key
	addrs               []netip.Addr
}

func (t *table) readSlot(i uint32) (slot, error) {
	var b [slotSize]byte
	if _, err := t.f.ReadAt(b[:], headerSize+int64(i)*slotSize); err != nil {
		return slot{}, err
	}
	return decodeSlot(b[:], i)
}

func decodeSlot(b []byte, i uint32) (slot, error) {
	s := slot{state: b[0], count: b[1], flags: b[2]}
	copy(s.key[:], b[8:24])
	if s.state > slotTomb || s.count > slotAddrs {
		return s, fmt.Errorf("index slot %d is corrupt", i)
	}
	for j := 0; j < int(s.count); j++ {
		off := 24 + j*17
		a := netip.AddrFrom16([16]byte(b[off+1 : off+17]))
		switch b[off] {
		case 4:
			a = a.Unmap()
		case 6:
		default:
			return s, fmt.Errorf("index slot %d is corrupt", i)
		}
		s.addrs = append(s.addrs, a)
	}
	return s, nil
}

func (t *table) writeSlot(i uint32, s slot) error {
	var b [slotSize]byte
	b[0], b[1], b[2] = s.state, byte(len(s.addrs)), s.flags
	copy(b[8:24], s.key[:])
	for j, a := range s.addrs {
		off := 24 + j*17
		b[off] = 6
		if a.Is4() {
			b[off] = 4
		}
		a16 := a.As16()
		copy(b[off+1:off+17], a16[:])
	}
	_, err := t.f.WriteAt(b[:], headerSize+int64(i)*slotSize)
	return err
}

// find returns the slot index holding k (live true), or the first free
// slot of k's probe sequence (live false) with its state (empty or tomb).
func (t *table) find(k key) (uint32, slot, bool, error) {
	start := uint32(binary.LittleEndian.Uint64(k[:8]) % uint64(t.slots))
	free, freeState := int64(-1), byte(slotEmpty)
	for n := uint32(0); n < t.slots; n++ {
		i := (start + n) % t.slots
		s, err := t.readSlot(i)
		if err != nil {
			return 0, s, false, err
		}
		switch s.state {
		case slotLive:
			if bytes.Equal(s.key[:], k[:]) {
				return i, s, true, nil
			}
		case slotTomb:
			if free < 0 {
				free, freeState = int64(i), slotTomb
			}
		case slotEmpty:
			if free < 0 {
				free, freeState = int64(i), slotEmpty
			}
			return uint32(free), slot{state: freeState}, false, nil
		}
	}
	if free < 0 {
		return 0, slot{}, false, errors.New("index is full")
	}
	return uint32(free), slot{state: freeState}, false, nil
}

// get returns k's addresses; complete is false when the attachment has
// more addresses than a slot holds (the caller scans).
func (t *table) get(k key) (addrs []netip.Addr, complete bool, err error) {
	_, s, live, err := t.find(k)
	if err != nil || !live {
		return nil, true, err
	}
	return s.addrs, s.flags&flagOverflow == 0, nil
}

// put sets k's addresses; none removes k.
func (t *table) put(k key, addrs []netip.Addr) error {
	i, s, live, err := t.find(k)
	if err != nil {
		return err
	}
	if len(addrs) == 0 {
		if !live {
			return nil
		}
		t.used--
		t.tombs++
		return t.writeSlot(i, slot{state: slotTomb})
	}
	if !live {
		if s.state == slotTomb {
			t.tombs--
		}
		t.used++
	}
	ns := slot{state: slotLive, key: k, addrs: addrs}
	if len(addrs) > slotAddrs {
		ns.addrs, ns.flags = addrs[:slotAddrs], flagOverflow
	}
	return t.writeSlot(i, ns)
}

// needsGrowth reports whether the table is more than half full (deleted
// slots count: they lengthen probes too).
func (t *table) needsGrowth() bool {
	return (t.used+t.tombs+1)*2 > t.slots
}

// all returns every live record, for a resize. It reads the file in
// large chunks: this runs once per doubling.
func (t *table) all() (map[key][]netip.Addr, error) {
	out := make(map[key][]netip.Addr, t.used)
	const chunk = 512
	buf := make([]byte, chunk*slotSize)
	for i := uint32(0); i < t.slots; i += chunk {
		n := min(chunk, t.slots-i)
		if _, err := t.f.ReadAt(buf[:n*slotSize], headerSize+int64(i)*slotSize); err != nil {
			return nil, err
		}
		for j := uint32(0); j < n; j++ {
			b := buf[j*slotSize : (j+1)*slotSize]
			if b[0] != slotLive {
				continue
			}
			s, err := decodeSlot(b, i+j)
			if err != nil {
				return nil, err
			}
			if s.flags&flagOverflow != 0 {
				return nil, errors.New("index holds an overflow record")
			}
			out[s.key] = s.addrs
		}
	}
	return out, nil
}
