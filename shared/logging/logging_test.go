package logging

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultLevelIsWarn(t *testing.T) {
	t.Setenv("CNIBOX_LOG_LEVEL", "")
	t.Setenv("CNIBOX_LOG_FILE", "")
	var stderr bytes.Buffer
	l := New("bridge", &stderr)
	l.Configure([]byte(`{"name":"n"}`), "0123456789abcdef0123")
	l.Infof("created veth %s", "veth1")
	l.Warnf("bridge %s has no address", "cni0")
	l.Errorf("boom")
	out := stderr.String()
	if strings.Contains(out, "veth1") {
		t.Errorf("info logged at the default level: %q", out)
	}
	for _, w := range []string{" warn bridge[", "0123456789ab: bridge cni0 has no address", " error bridge["} {
		if !strings.Contains(out, w) {
			t.Errorf("log %q lacks %q", out, w)
		}
	}
}

func TestConfigSetsLevelAndFile(t *testing.T) {
	t.Setenv("CNIBOX_LOG_LEVEL", "error")
	file := filepath.Join(t.TempDir(), "cnibox.log")
	var stderr bytes.Buffer
	l := New("tuning", &stderr)
	l.Configure([]byte(`{"name":"n","cnibox":{"logLevel":"debug","logFile":"`+file+`"}}`), "c1")
	l.Debugf("sysctl %s=%s", "net.ipv4.conf.eth0.rp_filter", "1")
	l.Close()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "debug tuning[") || !strings.Contains(stderr.String(), "rp_filter") {
		t.Errorf("file %q stderr %q", data, stderr.String())
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("log file mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("CNIBOX_LOG_LEVEL", "info")
	var stderr bytes.Buffer
	l := New("ptp", &stderr)
	l.Infof("hello")
	if !strings.Contains(stderr.String(), "info ptp[") {
		t.Errorf("stderr %q", stderr.String())
	}
	if _, ok := ParseLevel("loud"); ok {
		t.Error("unknown level accepted")
	}
}
