package tuning

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/cnibox/cnibox/shared/cni"
)

// DefaultAllowlist is the administrator's list of sysctl regexes, one a
// line, as the reference plugin reads it. When the file exists every sysctl
// key must match one of its lines; when it does not, every net.* sysctl is
// allowed.
const DefaultAllowlist = "/etc/cni/tuning/allowlist.conf"

// AllowlistEnv names a different allowlist file. It exists for tests (which
// must not touch /etc) and for nodes that keep CNI policy elsewhere. It is
// read from the plugin's environment, which only the runtime (root) sets;
// nothing in a network config or in CNI_ARGS can change it, so a tenant who
// writes network configs (Multus NetworkAttachmentDefinitions) cannot widen
// the administrator's list.
const AllowlistEnv = "CNIBOX_TUNING_ALLOWLIST"

// allowlistPath is where the allowlist is read from.
func allowlistPath() string {
	if p := os.Getenv(AllowlistEnv); p != "" {
		return p
	}
	return DefaultAllowlist
}

// sysctl is one sysctl the config asks for, resolved against the pod's
// interface name.
type sysctl struct {
	Key   string // as written in the config (what the allowlist matches)
	Path  string // /proc/sys/net/...
	Value string
}

// resolveSysctls turns the config's map into sorted, validated sysctls:
// keys are dotted ("net.ipv4.conf.IFNAME.arp_notify") or slashed
// ("net/ipv4/conf/eth0.100/arp_notify", where dots stay part of the names,
// as in sysctl(8)); the first IFNAME is replaced by ifName; the result must
// name something under /proc/sys/net with no empty, "." or ".." component.
func resolveSysctls(m map[string]string, ifName string) ([]sysctl, error) {
	out := make([]sysctl, 0, len(m))
	for key, value := range m {
		path, err := sysctlPath(key, ifName)
		if err != nil {
			return nil, cni.ConfigError("sysctl[%q]: %v", key, err)
		}
		out = append(out, sysctl{Key: key, Path: path, Value: value})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	for i := 1; i < len(out); i++ {
		if out[i].Path == out[i-1].Path {
			return nil, cni.ConfigError("sysctl: keys %q and %q name the same sysctl %s", out[i-1].Key, out[i].Key, out[i].Path)
		}
	}
	return out, nil
}

func sysctlPath(key, ifName string) (string, error) {
	k := strings.TrimPrefix(key, "/")
	if !strings.Contains(k, "/") {
		k = strings.ReplaceAll(k, ".", "/")
	}
	k = strings.Replace(k, "IFNAME", ifName, 1)
	parts := strings.Split(k, "/")
	if len(parts) < 2 || parts[0] != "net" {
		return "", errors.New("only net.* sysctls (under /proc/sys/net) may be set")
	}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return "", fmt.Errorf("invalid net sysctl key: component %q in %q", p, k)
		}
	}
	return "/proc/sys/" + k, nil
}

// checkAllowlist applies the allowlist file, if there is one, to every key.
// Like the reference, a line is an unanchored regex matched against the key
// as written in the config.
func checkAllowlist(sysctls []sysctl) error {
	if len(sysctls) == 0 {
		return nil
	}
	path := allowlistPath()
	allow, err := readAllowlist(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, s := range sysctls {
		if !allowed(s.Key, allow) {
			return cni.ConfigError("sysctl[%q]: not allowed by %s", s.Key, path)
		}
	}
	return nil
}

func allowed(key string, allow []*regexp.Regexp) bool {
	for _, re := range allow {
		if re.MatchString(key) {
			return true
		}
	}
	return false
}

// readAllowlist reads and compiles the allowlist; a line that is not a
// valid regex is an error (we fail closed rather than skip it).
func readAllowlist(path string) ([]*regexp.Regexp, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("sysctl allowlist: %w", err)
	}
	out, err := parseAllowlist(data)
	if err != nil {
		return nil, fmt.Errorf("sysctl allowlist %s: %w", path, err)
	}
	return out, nil
}

// parseAllowlist compiles an allowlist's lines; blank lines are skipped.
func parseAllowlist(data []byte) ([]*regexp.Regexp, error) {
	var out []*regexp.Regexp
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		re, err := regexp.Compile(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		out = append(out, re)
	}
	return out, sc.Err()
}

// readSysctl reads a sysctl of the current thread's netns.
func readSysctl(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(data), "\n"), nil
}

// writeSysctl writes a sysctl of the current thread's netns. It never
// creates files: a sysctl that does not exist is an error.
func writeSysctl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// sameSysctlValue compares values as the kernel prints them: vectors such
// as tcp_rmem read back tab-separated whatever separator was written.
func sameSysctlValue(a, b string) bool {
	return strings.Join(strings.Fields(a), " ") == strings.Join(strings.Fields(b), " ")
}

// duplicateKeys rejects an object with a key given twice, which
// encoding/json would silently collapse to the last value.
func duplicateKeys(raw json.RawMessage, field string) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil // not an object: the typed decode reports it
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		key, _ := tok.(string)
		if seen[key] {
			return cni.ConfigError("%s: duplicate key %q", field, key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}
