package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cnibox/cnibox/shared/statefile"
)

// record is what the daemon keeps of one lease on disk, enough to resume
// renewing it after a restart: where the interface is, how the lease was
// asked for, and the server's last DHCPACK with the time it arrived.
type record struct {
	ClientID    string    `json:"clientID"`
	ContainerID string    `json:"containerID"`
	Network     string    `json:"network"`
	IfName      string    `json:"ifName"`
	Netns       string    `json:"netns"`
	Args        string    `json:"args,omitempty"`
	Config      []byte    `json:"config"`
	ACK         []byte    `json:"ack"`
	Bound       time.Time `json:"bound"`
}

// store is the daemon's lease file. Every change rewrites it whole and
// renames it into place (mode 0600), so a crash leaves either the old or
// the new file, never half of one. An empty path keeps nothing.
type store struct {
	path string
	mu   sync.Mutex
	recs map[string]record
}

type storeFile struct {
	Version int      `json:"version"`
	Leases  []record `json:"leases"`
}

// openStore loads the lease file; a missing file is an empty store. It
// runs once, when the daemon starts: temporary files a killed daemon left
// half-written beside the lease file are removed.
func openStore(path string) (*store, error) {
	s := &store{path: path, recs: map[string]record{}}
	if path == "" {
		return s, nil
	}
	stray, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".*"))
	for _, f := range stray {
		_ = os.Remove(f)
	}
	data, err := statefile.Read(path) // never through a symlink
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease file: %w", err)
	}
	var f storeFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("lease file %s: %w", path, err)
	}
	for _, r := range f.Leases {
		s.recs[r.ClientID] = r
	}
	return s, nil
}

func (s *store) all() []record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]record, 0, len(s.recs))
	for _, r := range s.recs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ClientID < out[j].ClientID })
	return out
}

func (s *store) put(r record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs[r.ClientID] = r
	return s.saveLocked()
}

func (s *store) remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.recs[id]; !ok {
		return nil
	}
	delete(s.recs, id)
	return s.saveLocked()
}

func (s *store) saveLocked() error {
	if s.path == "" {
		return nil
	}
	f := storeFile{Version: 1, Leases: make([]record, 0, len(s.recs))}
	for _, r := range s.recs {
		f.Leases = append(f.Leases, r)
	}
	sort.Slice(f.Leases, func(i, j int) bool { return f.Leases[i].ClientID < f.Leases[j].ClientID })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(s.path, data, 0o600)
}

// writeFileAtomic writes data to a temporary file beside path, syncs it
// and renames it over path.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
