package tuning

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cnibox/cnibox/shared/statefile"
)

// DefaultDataDir is where backups live unless the config says dataDir.
const DefaultDataDir = "/run/cni/tuning"

// backup is what ADD found before changing anything, saved as
// <dataDir>/<containerID>_<ifname>.json. The first five fields are the
// reference plugin's file format, so either implementation can DEL what the
// other added; the reference ignores the rest.
type backup struct {
	Mac      string `json:"mac,omitempty"`
	Promisc  *bool  `json:"promisc,omitempty"`
	Mtu      int    `json:"mtu,omitempty"`
	Allmulti *bool  `json:"allmulti,omitempty"`
	TxQLen   *int   `json:"txQLen,omitempty"`

	// Network lets GC tell this network's backups from another's in a
	// shared dataDir.
	Network string `json:"network,omitempty"`
	// Netns identifies the pod's netns (device:inode): DEL restores only
	// there, never into another pod a runtime names by mistake.
	Netns string `json:"netns,omitempty"`
	// Sysctls are restored on DEL when they still hold the value ADD set.
	Sysctls []sysctlBackup `json:"sysctl,omitempty"`
}

type sysctlBackup struct {
	Path string `json:"path"`
	Was  string `json:"was"`
	Set  string `json:"set"`
}

func (b *backup) empty() bool {
	return b.Mac == "" && b.Promisc == nil && b.Mtu == 0 && b.Allmulti == nil && b.TxQLen == nil && len(b.Sysctls) == 0
}

// backupPath is the reference's <dataDir>/<containerID>_<ifname>.json; a
// name too long for a file name (with room for saveBackup's temporary
// name) is hashed: the reference could not write it at all.
func backupPath(dir, containerID, ifName string) string {
	return filepath.Join(dir, backupName(containerID, ifName))
}

func backupName(containerID, ifName string) string {
	return statefile.Name(containerID+"_"+ifName, 200) + ".json"
}

// loadBackup reads a backup; a missing file is (nil, nil).
func loadBackup(path string) (*backup, error) {
	_, b, err := readBackup(path)
	return b, err
}

// readBackup is loadBackup that also returns the file's bytes.
func readBackup(path string) ([]byte, *backup, error) {
	data, err := statefile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	b := &backup{}
	if err := json.Unmarshal(data, b); err != nil {
		return data, nil, fmt.Errorf("backup %s: %w", path, err)
	}
	return data, b, nil
}

// saveBackup writes b atomically (0600) so a crash never leaves a torn
// file that DEL could not read (statefile.WriteAtomic: never through a
// symlink, the directory made when missing).
func saveBackup(path string, b *backup) error {
	data, err := json.MarshalIndent(b, "", " ")
	if err != nil {
		return err
	}
	if err := statefile.WriteAtomic(path, data); err != nil {
		return fmt.Errorf("write backup %s: %w", path, err)
	}
	return nil
}

// removeBackup deletes a backup, and the temporary files of saveBackup a
// killed ADD left beside it; a missing one is fine.
func removeBackup(path string) error {
	stray, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".*"))
	for _, f := range stray {
		_ = os.Remove(f)
	}
	// The dataDir goes with its last backup (it is made again on ADD).
	return statefile.Remove(path, 1)
}

// keepOlder makes a backup taken by a repeated ADD keep what the first ADD
// found: the second one sees our own settings, not the originals.
func (b *backup) keepOlder(old *backup) {
	if old == nil {
		return
	}
	if old.Mac != "" {
		b.Mac = old.Mac
	}
	if old.Promisc != nil {
		b.Promisc = old.Promisc
	}
	if old.Mtu != 0 {
		b.Mtu = old.Mtu
	}
	if old.Allmulti != nil {
		b.Allmulti = old.Allmulti
	}
	if old.TxQLen != nil {
		b.TxQLen = old.TxQLen
	}
	index := map[string]int{}
	for i, s := range b.Sysctls {
		index[s.Path] = i
	}
	for _, s := range old.Sysctls {
		if i, ok := index[s.Path]; ok {
			b.Sysctls[i].Was = s.Was
		} else {
			b.Sysctls = append(b.Sysctls, s)
		}
	}
}

// isBackupName reports whether a dataDir entry is a backup
// ("<cid>_<ifname>.json") rather than a temporary file.
func isBackupName(name string) bool {
	return strings.HasSuffix(name, ".json") && !strings.HasPrefix(name, ".")
}
