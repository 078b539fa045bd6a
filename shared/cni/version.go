package cni

import (
	"fmt"
	"strconv"
	"strings"
)

// CurrentVersion is the newest spec version cnibox implements.
const CurrentVersion = "1.1.0"

// AllVersions are the spec versions libcni knows, oldest first.
var AllVersions = []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// VersionsFrom returns the spec versions from min on, for applets that need
// a feature of a later version (chaining needs 0.3.0, CHECK 0.4.0).
func VersionsFrom(min string) []string {
	for i, v := range AllVersions {
		if v == min {
			return AllVersions[i:]
		}
	}
	panic("cni: unknown version " + min)
}

// BuildVersion is stamped by the linker (-X) from git.
var (
	BuildVersion = "dev"
	BuildCommit  = "unknown"
)

// ParseVersion parses "major.minor.patch"; "major.minor" and "major" are
// accepted with zeros, as libcni accepts them.
func ParseVersion(v string) (major, minor, patch int, err error) {
	parts := strings.Split(v, ".")
	if v == "" || len(parts) > 3 {
		return 0, 0, 0, fmt.Errorf("invalid version %q", v)
	}
	nums := [3]int{}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return 0, 0, 0, fmt.Errorf("invalid version %q", v)
		}
		nums[i] = n
	}
	return nums[0], nums[1], nums[2], nil
}

// VersionAtLeast reports whether v >= min. Unparseable versions compare low.
func VersionAtLeast(v, min string) bool {
	a1, a2, a3, err := ParseVersion(v)
	if err != nil {
		return false
	}
	b1, b2, b3, err := ParseVersion(min)
	if err != nil {
		return false
	}
	if a1 != b1 {
		return a1 > b1
	}
	if a2 != b2 {
		return a2 > b2
	}
	return a3 >= b3
}
