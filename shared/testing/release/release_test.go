package release_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cnibox/cnibox/shared/install"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// The release the tests share: amd64 and arm64 (the other architectures
// only cost build time: make release builds them), and the image, with a
// fixed commit and time so that a second run anywhere must match.
const (
	testCommit = "0123456789ab"
	testEpoch  = "1700000000"
)

var testArches = []string{"amd64", "arm64"}

var (
	relOnce sync.Once
	relDir  string
	relErr  error
)

// runRelease runs scripts/release in the tree at root into out, with
// extra environment and flags.
func runRelease(root, out string, env []string, flags ...string) ([]byte, error) {
	args := append([]string{"run", "./scripts/release", "-out", out, "-arch", strings.Join(testArches, ","), "-commit", testCommit}, flags...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(append(os.Environ(), "SOURCE_DATE_EPOCH="+testEpoch, "CGO_ENABLED=0"), env...)
	return cmd.CombinedOutput()
}

// released returns the directory of the shared release, made once.
func released(t *testing.T) string {
	t.Helper()
	relOnce.Do(func() {
		relDir, relErr = os.MkdirTemp("", "cnibox-release-test-")
		if relErr != nil {
			return
		}
		var out []byte
		if out, relErr = runRelease(testnet.RepoRoot(), relDir, nil); relErr != nil {
			relErr = &runError{relErr, out}
		}
	})
	if relErr != nil {
		t.Fatalf("make release: %v", relErr)
	}
	return relDir
}

type runError struct {
	err error
	out []byte
}

func (e *runError) Error() string { return e.err.Error() + "\n" + string(e.out) }

func version(t *testing.T) string {
	t.Helper()
	v, err := os.ReadFile(filepath.Join(testnet.RepoRoot(), "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// TestArtefacts: one tarball per architecture and the image, both checksum
// files, which sha256sum -c and sha512sum -c accept, and the tarball's
// entries: the binary, one symlink per applet, README.md and LICENSE.
func TestArtefacts(t *testing.T) {
	dir, v := released(t), version(t)
	want := []string{"SHA256SUMS", "SHA512SUMS", "cnibox-image-v" + v + ".oci.tar"}
	for _, a := range testArches {
		want = append(want, "cnibox-linux-"+a+"-v"+v+".tgz")
	}
	for _, f := range want {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	for _, sum := range []string{"sha256sum", "sha512sum"} {
		file := strings.ToUpper(strings.TrimSuffix(sum, "sum")) + "SUMS"
		cmd := exec.Command(sum, "-c", file)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil || strings.Count(string(out), ": OK") != len(want)-2 {
			t.Errorf("%s -c %s: %v\n%s", sum, file, err, out)
		}
	}
	out, err := exec.Command("tar", "-tvzf", filepath.Join(dir, "cnibox-linux-amd64-v"+v+".tgz")).Output()
	if err != nil {
		t.Fatal(err)
	}
	listing := string(out)
	for _, a := range testnet.Applets(t) {
		if !strings.Contains(listing, "./"+a+" -> cnibox\n") {
			t.Errorf("the tarball has no link %s -> cnibox:\n%s", a, listing)
		}
	}
	for _, f := range []string{" ./cnibox\n", " ./README.md\n", " ./LICENSE\n"} {
		if !strings.Contains(listing, f) {
			t.Errorf("the tarball lacks %q", f)
		}
	}
	if strings.Contains(listing, "2023-11-14") == false || strings.Contains(listing, "root/root") == false {
		t.Errorf("entries are not root-owned at SOURCE_DATE_EPOCH:\n%s", listing)
	}
}

// TestReproducible runs the release a second time from a copy of the tree
// at another path and compares every artefact byte for byte: the archives'
// order, owners, times and compression, and the binaries' independence of
// the tree's path. The Go build cache serves both runs (with -trimpath its
// keys do not depend on the path); TestReproducibleColdCache compiles
// everything again.
func TestReproducible(t *testing.T) {
	first := released(t)
	copyDir := filepath.Join(t.TempDir(), "elsewhere", "cnibox")
	copyTree(t, testnet.RepoRoot(), copyDir)
	second := t.TempDir()
	if out, err := runRelease(copyDir, second, nil); err != nil {
		t.Fatalf("second release: %v\n%s", err, out)
	}
	compareDirs(t, first, second)
}

// TestReproducibleColdCache builds the amd64 tarball from a copy of the
// tree with an empty Go build cache (every package compiled again, the
// standard library included) and compares it with the shared release's.
func TestReproducibleColdCache(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles everything again (minutes): not with -short")
	}
	first := released(t)
	copyDir := filepath.Join(t.TempDir(), "cold", "cnibox")
	copyTree(t, testnet.RepoRoot(), copyDir)
	second := t.TempDir()
	if out, err := runRelease(copyDir, second, []string{"GOCACHE=" + t.TempDir()}, "-arch", "amd64", "-image=false"); err != nil {
		t.Fatalf("cold release: %v\n%s", err, out)
	}
	name := "cnibox-linux-amd64-v" + version(t) + ".tgz"
	x, _ := os.ReadFile(filepath.Join(first, name))
	y, err := os.ReadFile(filepath.Join(second, name))
	if err != nil || !bytes.Equal(x, y) {
		t.Errorf("%s differs with a cold build cache (%s / %s)", name, digest(x), digest(y))
	}
}

func compareDirs(t *testing.T, first, second string) {
	t.Helper()
	a, _ := os.ReadDir(first)
	b, _ := os.ReadDir(second)
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d artefacts, then %d", len(a), len(b))
	}
	for _, e := range a {
		x, _ := os.ReadFile(filepath.Join(first, e.Name()))
		y, err := os.ReadFile(filepath.Join(second, e.Name()))
		if err != nil || !bytes.Equal(x, y) {
			t.Errorf("%s differs between two runs (%s / %s)", e.Name(), digest(x), digest(y))
		}
	}
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

// copyTree copies the source tree (not .git, not bin) to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == ".git" || rel == "bin" {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil // a worktree's .git is a file
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// whoAnswers runs plugin without CNI_COMMAND: "cnibox VERSION" for ours
// (with the version it says), "reference" for a reference plugin.
func whoAnswers(plugin string) string {
	out, err := exec.Command(plugin).CombinedOutput()
	s := string(out)
	switch {
	case err != nil:
		return "failed: " + err.Error() + ": " + s
	case strings.Contains(s, "(cnibox "):
		return "cnibox " + strings.TrimSuffix(strings.SplitN(strings.SplitN(s, "(cnibox ", 2)[1], ")", 2)[0], ")")
	case strings.Contains(s, " plugin version"):
		return "reference"
	}
	return "unknown: " + s
}

// TestTarballOverInstalls extracts the release tarball with tar -xzf, as
// the README says, into an empty directory, over a reference install (a
// copy of Debian's /usr/lib/cni) and over older cnibox installs (entries,
// symlinks): every applet name then runs the release's cnibox, every
// other reference plugin is untouched, and "cnibox install --dir" then
// turns the links into copy-proof entries.
func TestTarballOverInstalls(t *testing.T) {
	v := version(t)
	tgz := filepath.Join(released(t), "cnibox-linux-amd64-v"+v+".tgz")
	refDir := "/usr/lib/cni"
	refs, _ := os.ReadDir(refDir)
	applets := testnet.Applets(t)
	isApplet := map[string]bool{}
	for _, a := range applets {
		isApplet[a] = true
	}
	for _, base := range []string{"empty", "reference", "cnibox-entries", "cnibox-symlinks", "cnibox-hardlinks"} {
		t.Run(base, func(t *testing.T) {
			dir := t.TempDir()
			switch base {
			case "reference":
				if len(refs) == 0 {
					t.Skip("no reference plugins in /usr/lib/cni")
				}
				if out, err := exec.Command("sh", "-c", "cp /usr/lib/cni/* "+dir+"/").CombinedOutput(); err != nil {
					t.Fatalf("%v %s", err, out)
				}
			case "cnibox-entries", "cnibox-symlinks", "cnibox-hardlinks":
				args := []string{"install", "--dir", dir}
				if base != "cnibox-entries" {
					args = append(args, "--"+strings.TrimSuffix(strings.TrimPrefix(base, "cnibox-"), "s"))
				}
				if out, err := exec.Command(testnet.Binary(t), args...).CombinedOutput(); err != nil {
					t.Fatalf("%v %s", err, out)
				}
			}
			if out, err := exec.Command("tar", "-xzf", tgz, "-C", dir).CombinedOutput(); err != nil {
				t.Fatalf("tar -xzf: %v %s", err, out)
			}
			for _, a := range applets {
				if who := whoAnswers(filepath.Join(dir, a)); who != "cnibox "+v {
					t.Errorf("after tar -x over %s, %s answers %q", base, a, who)
				}
			}
			if base == "reference" {
				for _, r := range refs {
					if !isApplet[r.Name()] {
						if who := whoAnswers(filepath.Join(dir, r.Name())); who != "reference" {
							t.Errorf("%s (not a cnibox applet) answers %q", r.Name(), who)
						}
					}
				}
			}
			out, err := exec.Command(filepath.Join(dir, "cnibox"), "version").Output()
			if err != nil || !strings.Contains(string(out), "cnibox "+v+" (commit "+testCommit+")") {
				t.Errorf("cnibox version: %v %q", err, out)
			}
			if out, err := exec.Command(filepath.Join(dir, "cnibox"), "install", "--dir", dir).CombinedOutput(); err != nil {
				t.Fatalf("install over the extracted tarball: %v %s", err, out)
			}
			for _, a := range applets {
				if k := install.Inspect(dir, a); k != install.Script {
					t.Errorf("%s is %v after install", a, k)
				}
			}
		})
	}
}

// TestSourceTarball: a source tarball (git archive, as make dist and
// GitHub make them: no .git) builds with make build and says the VERSION
// file's version and the commit it was made from.
func TestSourceTarball(t *testing.T) {
	root := testnet.RepoRoot()
	head, err := exec.Command("git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", `git -C "$0" archive --format=tar HEAD | tar -x -C "$1"`, root, dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git archive: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
		t.Fatal("the source tarball has a .git")
	}
	build := exec.Command("make", "build")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make build in the source tarball: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(dir, "bin", "cnibox"), "version").Output()
	// The committed VERSION file, which the tarball holds.
	committed, _ := exec.Command("git", "-C", root, "show", "HEAD:VERSION").Output()
	want := "cnibox " + strings.TrimSpace(string(committed)) + " (commit " + strings.TrimSpace(string(head)) + ")"
	if err != nil || !strings.HasPrefix(string(out), want+"\n") {
		t.Errorf("version of the source tarball's build: %v %q, want %q", err, out, want)
	}
}
