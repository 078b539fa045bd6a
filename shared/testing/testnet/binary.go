package testnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Main is the TestMain of integration test packages: it runs the tests and
// then removes the per-process build and install directory.
func Main(m interface{ Run() int }) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// RepoRoot is the module root, found from this source file's location
// (shared/testing/testnet), so tests of any package can read conflists/
// and testdata/ wherever they run from.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// BinDir returns a CNI plugin directory made by "cnibox install": the
// binary and one relative symlink per applet. It is built once per test
// process; CNIBOX_BINARY names an already built binary to use instead
// (make test and the VM runner set it).
func BinDir(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "cnibox-test-bin-")
		if buildErr != nil {
			return
		}
		src := os.Getenv("CNIBOX_BINARY")
		if src == "" {
			src = filepath.Join(buildDir, "build", "cnibox")
			cmd := exec.Command("go", "build", "-o", src, ".")
			cmd.Dir = RepoRoot()
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = &buildError{err: err, out: string(out)}
				return
			}
		}
		bin := filepath.Join(buildDir, "bin")
		if out, err := exec.Command(src, "install", "--dir", bin).CombinedOutput(); err != nil {
			buildErr = &buildError{err: err, out: string(out)}
			return
		}
	})
	if buildErr != nil {
		t.Fatalf("build and install cnibox: %v", buildErr)
	}
	return filepath.Join(buildDir, "bin")
}

// Binary returns the installed cnibox binary.
func Binary(t testing.TB) string {
	return filepath.Join(BinDir(t), "cnibox")
}

// Applets returns the applet names the binary lists.
func Applets(t testing.TB) []string {
	t.Helper()
	out, err := exec.Command(Binary(t), "--list").Output()
	if err != nil {
		t.Fatalf("cnibox --list: %v", err)
	}
	return strings.Fields(string(out))
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// ReferenceDir is where Debian's containernetworking-plugins package puts
// the reference plugins; REF_CNI_PATH overrides it.
func ReferenceDir() string {
	if d := os.Getenv("REF_CNI_PATH"); d != "" {
		return d
	}
	return "/usr/lib/cni"
}

// RequireReference skips unless the reference plugin exists.
func RequireReference(t testing.TB, plugin string) string {
	t.Helper()
	p := filepath.Join(ReferenceDir(), plugin)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("reference plugin %s not installed (apt-get install containernetworking-plugins): %v", p, err)
	}
	return p
}

// Cnitool returns the path of the reference runtime tool, cnitool v1.3.0.
// make test installs it; as a fallback the test installs it with go install.
func Cnitool(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("cnitool"); err == nil {
		return p
	}
	gobin := os.Getenv("GOBIN")
	if gobin == "" {
		out, err := exec.Command("go", "env", "GOPATH").Output()
		if err != nil {
			t.Fatalf("go env GOPATH: %v", err)
		}
		gobin = filepath.Join(strings.TrimSpace(string(out)), "bin")
	}
	p := filepath.Join(gobin, "cnitool")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	cmd := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@v1.3.0")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install cnitool: %v: %s", err, out)
	}
	return p
}
