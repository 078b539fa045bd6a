package hostlocal

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/logging"
)

// testDataDir prefers tmpfs, whose mtimes tick with the coarse clock:
// the case the stamp has to work hardest for.
func testDataDir(t testing.TB) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() && unix.Access("/dev/shm", unix.W_OK) == nil {
		d, err := os.MkdirTemp("/dev/shm", "cnibox-hl-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

func testConf(dataDir string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"idx","type":"host-local","ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.120.0.0/16"}]]}}`, dataDir)
}

// call runs one verb of the applet in-process, as delegation does.
func call(t testing.TB, conf, cmd, id string) (string, error) {
	t.Helper()
	env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": id, "CNI_IFNAME": "eth0", "CNI_NETNS": "/nonexistent", "CNI_PATH": "/nonexistent"}
	var out bytes.Buffer
	if code := cni.Run(Applet, func(k string) string { return env[k] }, strings.NewReader(conf), &out, io.Discard); code != 0 {
		return out.String(), fmt.Errorf("%s %s: %s", cmd, id, out.String())
	}
	return out.String(), nil
}

func mustCall(t testing.TB, conf, cmd, id string) string {
	t.Helper()
	out, err := call(t, conf, cmd, id)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// foreignReserve does what the reference does, under its lock.
func foreignReserve(t testing.TB, dir, ip, content string) {
	t.Helper()
	lock, err := lockFile(filepath.Join(dir, lockName), defaultLockTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := os.WriteFile(filepath.Join(dir, ip), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestIndexSeesForeignChangesInTheSameTick: right after each of our calls
// another process reserves an address behind the index; our DEL of that
// attachment must find it every time.
func TestIndexSeesForeignChangesInTheSameTick(t *testing.T) {
	data := testDataDir(t)
	conf := testConf(data)
	dir := filepath.Join(data, "idx")
	for i := 0; i < 100; i++ {
		mustCall(t, conf, "ADD", fmt.Sprintf("c%d", i))
		ip := fmt.Sprintf("10.120.200.%d", i)
		foreignReserve(t, dir, ip, fmt.Sprintf("f%d\r\neth0", i))
		mustCall(t, conf, "DEL", fmt.Sprintf("f%d", i))
		if _, err := os.Stat(filepath.Join(dir, ip)); err == nil {
			t.Fatalf("round %d: DEL missed a reservation made right after our ADD", i)
		}
	}
}

func openTest(t testing.TB, data string) *store {
	t.Helper()
	s, err := openStore(data, "idx", logging.New("host-local", io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestIndexFastPath: calls that follow our own calls do not rebuild.
func TestIndexFastPath(t *testing.T) {
	data := testDataDir(t)
	conf := testConf(data)
	for i := 0; i < 5; i++ {
		mustCall(t, conf, "ADD", fmt.Sprintf("c%d", i))
	}
	mustCall(t, conf, "DEL", "c2")
	s := openTest(t, data)
	defer s.close()
	if s.rebuilt {
		t.Fatal("the index was rebuilt although only cnibox changed the store")
	}
}

// TestIndexNeverTrustedBlindly: a record that names an address now held
// by someone else, and a record that cannot be parsed, with a stamp that
// claims all is well: DEL releases only what is the attachment's.
func TestIndexNeverTrustedBlindly(t *testing.T) {
	data := testDataDir(t)
	conf := testConf(data)
	dir := filepath.Join(data, "idx")
	mustCall(t, conf, "ADD", "a") // 10.120.0.2
	mustCall(t, conf, "ADD", "b") // 10.120.0.3

	// a's record now says .3 (b's), and the stamp is made to match.
	s := openTest(t, data)
	if err := s.setRecord(attachmentKey("a", "eth0"), []netipAddr{mustAddr("10.120.0.3")}); err != nil {
		t.Fatal(err)
	}
	s.close()
	mustCall(t, conf, "DEL", "a")
	if got, _ := os.ReadFile(filepath.Join(dir, "10.120.0.3")); string(got) != "b\r\neth0" {
		t.Fatalf("DEL of a released b's address: %q", got)
	}

	// The index file is garbage, the stamp matches: DEL rebuilds and releases.
	s = openTest(t, data)
	st, _ := s.tab.f.Stat()
	s.tab.f.WriteAt(bytes.Repeat([]byte{0xff}, int(st.Size())-headerSize), headerSize)
	s.dirty = true
	s.close()
	mustCall(t, conf, "DEL", "b")
	if _, err := os.Stat(filepath.Join(dir, "10.120.0.3")); err == nil {
		t.Fatal("DEL with a corrupt index did not release")
	}

	// The stamp gone, the index dir gone: rebuilt, still right.
	mustCall(t, conf, "ADD", "c")
	os.RemoveAll(filepath.Join(data, indexDirName))
	mustCall(t, conf, "DEL", "c")
	if ents, _ := os.ReadDir(dir); len(ents) != 2 { // lock, last_reserved_ip.0
		t.Fatalf("left %v", ents)
	}
}

type netipAddr = netip.Addr

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestStampStepsBackAmbiguousMtime: an mtime a later change could repeat
// (here: whole seconds, as a coarse filesystem keeps) is stepped back one
// nanosecond before the stamp records it.
func TestStampStepsBackAmbiguousMtime(t *testing.T) {
	data := t.TempDir()
	s := openTest(t, data)
	whole := unix.NsecToTimespec(1_700_000_000 * 1e9)
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, s.dir, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, whole}, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.writeStamp(); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Stat(s.dir, &st)
	if st.Mtim.Nano() != whole.Nano()-1 {
		t.Fatalf("mtime = %d, want %d", st.Mtim.Nano(), whole.Nano()-1)
	}
	s.close()
	if s2 := openTest(t, data); s2.rebuilt {
		t.Error("the stamp written after the step does not match")
	} else {
		s2.close()
	}
}
