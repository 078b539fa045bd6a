package dhcp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/cnibox/cnibox/shared/statefile"
)

// Releases asked for while the daemon was down. A DEL that cannot reach
// the daemon still succeeds (the runtime must be able to tear the pod
// down), but the release is not lost: DEL records its arguments in a file
// beside the daemon's socket, and the daemon carries it out when it starts
// (after resuming its recorded leases, before it serves) and on every GC.
// Without that, the restarted daemon resumed the lease and renewed it for
// a pod that was gone. The release reaches the server when the pod's
// interface is still there to send it from; otherwise the daemon stops
// renewing and forgets the lease, which the server then lets expire.

// pendingDir is where releases wait, beside the daemon's socket.
func pendingDir(socket string) string {
	return filepath.Join(filepath.Dir(socket), "dhcp-release")
}

func pendingFile(socket string, a *callArgs, network string) string {
	sum := sha256.Sum256([]byte(clientID(a.ContainerID, network, a.IfName)))
	return filepath.Join(pendingDir(socket), hex.EncodeToString(sum[:16]))
}

// recordRelease saves a DEL's arguments for the daemon.
func recordRelease(socket string, a *callArgs, network string) (string, error) {
	data, err := json.Marshal(a)
	if err != nil {
		return "", err
	}
	path := pendingFile(socket, a, network)
	return path, statefile.Write(path, data, 0o600)
}

// releasePending carries out the recorded releases and removes their
// files (and the directory with the last one).
func (d *daemon) releasePending() {
	if d.pending == "" {
		return
	}
	entries, err := os.ReadDir(d.pending)
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(d.pending, e.Name())
		data, err := statefile.Read(path)
		a := &callArgs{}
		if err == nil {
			err = json.Unmarshal(data, a)
		}
		if err == nil {
			d.logf("%s: carrying out the release a DEL asked for while the daemon was down", a.ContainerID)
			err = d.release(a)
		}
		if err != nil {
			d.logf("recorded release %s: %v (dropped)", path, err)
		}
		statefile.Remove(path, 1)
	}
}
