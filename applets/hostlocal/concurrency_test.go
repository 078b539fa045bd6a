package hostlocal_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestConcurrentAddDel: 200 ADDs at once, each its own process, on one
// network: 200 distinct addresses, every one on disk; then 200 DELs at
// once leave an empty store.
func TestConcurrentAddDel(t *testing.T) {
	const n = 200
	bin := filepath.Join(testnet.BinDir(t), "host-local")
	netns := testnet.NewNS(t, "pod").Path
	nw := newNetwork(t, "1.1.0")
	conf := nw.conf(`"ranges":[[{"subnet":"10.100.0.0/23"}],[{"subnet":"fd00:100::/64"}]]`)
	run := func(cmd string, i int) (string, error) {
		env := []string{"CNI_COMMAND=" + cmd, fmt.Sprintf("CNI_CONTAINERID=c%03d", i), "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(bin)}
		return execPlugin(t, bin, env, conf)
	}
	results := make([][]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := run("ADD", i)
			if err != nil {
				errs[i] = err
				return
			}
			results[i] = resultIPs(t, out)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i, r := range results {
		if len(r) != 2 {
			t.Fatalf("ADD %d: %v", i, r)
		}
		for _, a := range r {
			if j, dup := seen[a]; dup {
				t.Fatalf("%s handed out to c%03d and c%03d", a, j, i)
			}
			seen[a] = i
		}
	}
	files := nw.files(t)
	if len(files) != 2*n {
		t.Fatalf("%d reservation files, want %d", len(files), 2*n)
	}
	for a, i := range seen {
		ip := strings.Split(a, "/")[0]
		if files[ip] != fmt.Sprintf("c%03d\r\neth0", i) {
			t.Fatalf("file %s = %q, want c%03d's", ip, files[ip], i)
		}
	}

	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = run("DEL", i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, nw, nil)
	// The index agrees: CHECK of a deleted attachment fails, STATUS is fine.
	if _, err := run("CHECK", 7); err == nil {
		t.Error("CHECK found a deleted attachment")
	}
	if _, err := run("STATUS", 0); err != nil {
		t.Error(err)
	}
}

// TestLockTimeout: a lock held by a wedged process makes ADD answer "try
// again" (11) within the bound instead of hanging.
func TestLockTimeout(t *testing.T) {
	bin := filepath.Join(testnet.BinDir(t), "host-local")
	netns := testnet.NewNS(t, "pod").Path
	nw := newNetwork(t, "1.0.0")
	os.MkdirAll(nw.dir(), 0o755)
	f, err := os.OpenFile(filepath.Join(nw.dir(), "lock"), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, cmd := range []string{"ADD", "DEL"} {
		env := []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(bin), "CNIBOX_HOSTLOCAL_LOCK_TIMEOUT=300ms"}
		out, err := execPlugin(t, bin, env, nw.conf(`"subnet":"10.101.0.0/24"`))
		if err == nil {
			t.Fatalf("%s succeeded with the lock held: %s", cmd, out)
		}
		if e := testnet.ParseError(t, []byte(out)); e.Code != 11 || !strings.Contains(e.Msg, "lock") {
			t.Fatalf("%s: error %d %q, want 11 about the lock", cmd, e.Code, e.Msg)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
}

// crashBinary builds cnibox with the cniboxtesthooks tag: it stops at a
// named point of ADD or DEL so that the test can SIGKILL it there. The
// production binary has no such hook.
func crashBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "cnibox")
	cmd := exec.Command("go", "build", "-tags", "cniboxtesthooks", "-o", bin, ".")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build with test hooks: %v: %s", err, out)
	}
	link := filepath.Join(dir, "host-local")
	if err := os.Symlink("cnibox", link); err != nil {
		t.Fatal(err)
	}
	return link
}

// TestCrashSafety kills ADD and DEL with SIGKILL at each point where a
// process can die with work half done, and checks that later calls repair
// everything: the victim's DEL releases what it got, an empty file left
// behind is removed, other attachments are untouched, GC cleans the rest,
// and the index agrees with the files afterwards.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a second binary")
	}
	hooked := crashBinary(t)
	our := filepath.Join(testnet.BinDir(t), "host-local")
	netns := testnet.NewNS(t, "pod").Path
	for _, point := range []string{"reserve-created", "add-recorded", "del-done"} {
		t.Run(point, func(t *testing.T) {
			nw := newNetwork(t, "1.1.0")
			conf := nw.conf(`"ranges":[[{"subnet":"10.102.0.0/24"}],[{"subnet":"fd00:102::/64"}]]`)
			env := func(cmd, id string) []string {
				return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(our)}
			}
			mustRun := func(cmd, id string) string {
				t.Helper()
				out, err := execPlugin(t, our, env(cmd, id), conf)
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			mustRun("ADD", "keep")
			kept := nw.files(t)
			victimCmd := "ADD"
			if point == "del-done" {
				mustRun("ADD", "victim")
				victimCmd = "DEL"
			}
			ready := filepath.Join(t.TempDir(), "ready")
			cmd := exec.Command(hooked)
			cmd.Env = append(env(victimCmd, "victim"), "CNIBOX_TEST_HOOK="+point, "CNIBOX_TEST_HOOK_READY="+ready)
			cmd.Stdin = strings.NewReader(string(conf))
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				if _, err := os.Stat(ready); err == nil {
					break
				}
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("the hooked %s never reached %s", victimCmd, point)
				}
				time.Sleep(5 * time.Millisecond)
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()

			// A later ADD works and does not get the victim's addresses.
			other := resultIPs(t, mustRun("ADD", "later"))
			for _, a := range other {
				if f := nw.files(t)[strings.Split(a, "/")[0]]; f != "later\r\neth0" {
					t.Fatalf("later ADD got %s, file says %q", a, f)
				}
			}
			// The victim's DEL releases whatever it got; no empty file is left.
			mustRun("DEL", "victim")
			for ip, owner := range nw.files(t) {
				if owner != "keep\r\neth0" && owner != "later\r\neth0" {
					t.Fatalf("after the victim's DEL, %s is held by %q", ip, owner)
				}
			}
			for ip, owner := range kept {
				if nw.files(t)[ip] != owner {
					t.Fatalf("the crash changed keep's %s", ip)
				}
			}
			// GC with keep valid releases later, and the index agrees.
			gc := strings.Replace(string(conf), `"type":"host-local","ipam"`, `"type":"host-local","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}],"ipam"`, 1)
			if out, err := execPlugin(t, our, []string{"CNI_COMMAND=GC", "CNI_PATH=" + filepath.Dir(our)}, []byte(gc)); err != nil {
				t.Fatal(out, err)
			}
			wantFiles(t, nw, kept)
			if _, err := execPlugin(t, our, env("CHECK", "later"), conf); err == nil {
				t.Fatal("CHECK found later after GC")
			}
			mustRun("CHECK", "keep")
			mustRun("DEL", "keep")
			wantFiles(t, nw, nil)
		})
	}
}

// TestCrashAtRandom kills ADDs of the production binary at random moments
// while other ADDs run; afterwards GC with the survivors valid and DELs of
// everyone leave an empty store and an index that agrees with it.
func TestCrashAtRandom(t *testing.T) {
	our := filepath.Join(testnet.BinDir(t), "host-local")
	netns := testnet.NewNS(t, "pod").Path
	nw := newNetwork(t, "1.1.0")
	conf := nw.conf(`"ranges":[[{"subnet":"10.103.0.0/24"}],[{"subnet":"fd00:103::/64"}]]`)
	env := func(cmd, id string) []string {
		return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(our)}
	}
	var valid []string
	for i := 0; i < 30; i++ {
		victim := exec.Command(our)
		victim.Env = env("ADD", fmt.Sprintf("victim%d", i))
		victim.Stdin = strings.NewReader(string(conf))
		if err := victim.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i%6) * 500 * time.Microsecond)
		victim.Process.Signal(syscall.SIGKILL)
		victim.Wait()
		id := fmt.Sprintf("ok%d", i)
		if out, err := execPlugin(t, our, env("ADD", id), conf); err != nil {
			t.Fatal(out, err)
		}
		valid = append(valid, fmt.Sprintf(`{"containerID":%q,"ifname":"eth0"}`, id))
	}
	for ip, owner := range nw.files(t) {
		if owner == "" {
			t.Errorf("empty reservation %s survived later ADDs", ip)
		}
	}
	gc := strings.Replace(string(conf), `"type":"host-local","ipam"`, `"type":"host-local","cni.dev/valid-attachments":[`+strings.Join(valid, ",")+`],"ipam"`, 1)
	if out, err := execPlugin(t, our, []string{"CNI_COMMAND=GC", "CNI_PATH=" + filepath.Dir(our)}, []byte(gc)); err != nil {
		t.Fatal(out, err)
	}
	if got := len(nw.files(t)); got != 2*len(valid) {
		t.Fatalf("after GC %d reservations, want %d", got, 2*len(valid))
	}
	for i := range valid {
		if out, err := execPlugin(t, our, env("DEL", fmt.Sprintf("ok%d", i)), conf); err != nil {
			t.Fatal(out, err)
		}
	}
	wantFiles(t, nw, nil)
}
