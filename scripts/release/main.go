// Command release builds cnibox's release artefacts (make release) into
// one directory:
//
//	cnibox-linux-ARCH-vX.Y.Z.tgz   per architecture: ./cnibox, one symlink
//	                               per applet name (bridge -> cnibox), README.md, LICENSE
//	cnibox-image-vX.Y.Z.oci.tar    the node-installer image, a multi-arch OCI
//	                               index in an OCI layout archive (-image)
//	SHA256SUMS, SHA512SUMS         of the above, sha256sum -c format
//
// Every file is byte-for-byte reproducible from the same tree and Go
// toolchain: binaries are built with -trimpath and an empty build ID,
// archive entries are in a fixed order with fixed owners, modes and times
// (SOURCE_DATE_EPOCH, or the commit's time), and gzip writes no name or
// timestamp. The tarball's entries are symlinks, which work wherever it is
// extracted and which tar -x puts in place of what is there (it unlinks
// first), over the reference's files or an older cnibox alike;
// "cnibox install --dir" then makes them copy-proof applet entries.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Arches are the release architectures: the reference's list. mips64le is
// built when the toolchain and the code allow it, and skipped with a word
// otherwise.
var Arches = []string{"amd64", "arm64", "arm", "ppc64le", "s390x", "riscv64", "mips64le"}

func main() {
	out := flag.String("out", "bin/release", "directory to write the artefacts into")
	arches := flag.String("arch", strings.Join(Arches, ","), "architectures, comma-separated")
	image := flag.Bool("image", true, "also build the node-installer image (cnibox-image-vX.Y.Z.oci.tar)")
	repo := flag.String("image-repo", "ghcr.io/cnibox/cnibox", "the image's repository; its tag is vX.Y.Z")
	commit := flag.String("commit", "", "the commit to stamp (default: git's, or the COMMIT file's)")
	flag.Parse()
	if err := release(*out, strings.Split(*arches, ","), *image, *repo, *commit); err != nil {
		fmt.Fprintf(os.Stderr, "release: %v\n", err)
		os.Exit(1)
	}
}

// Build describes one release: what every artefact is made from.
type Build struct {
	Version string    // from VERSION
	Commit  string    // git's, or COMMIT's in a source tarball
	Time    time.Time // every archive entry's mtime
	Applets []string  // from the binary's --list
}

func release(out string, arches []string, image bool, repo, commit string) error {
	b, err := describe()
	if err != nil {
		return err
	}
	if commit != "" {
		b.Commit = commit
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "cnibox-release-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	// The applet names, from a binary for this machine.
	native := filepath.Join(work, "cnibox") // dispatch needs the name
	if err := b.build(runtime.GOARCH, native); err != nil {
		return err
	}
	list, err := exec.Command(native, "--list").Output()
	if err != nil {
		return fmt.Errorf("list the applets: %w", err)
	}
	b.Applets = strings.Fields(string(list))

	readme, err := os.ReadFile("README.md")
	if err != nil {
		return err
	}
	license, err := os.ReadFile("LICENSE")
	if err != nil {
		return err
	}
	var files []string
	bins := map[string][]byte{}
	for _, arch := range arches {
		bin := filepath.Join(work, "cnibox-"+arch)
		if err := b.build(arch, bin); err != nil {
			if arch == "mips64le" {
				fmt.Fprintf(os.Stderr, "release: skipping mips64le, which does not build: %v\n", err)
				continue
			}
			return err
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return err
		}
		bins[arch] = data
		name := fmt.Sprintf("cnibox-linux-%s-v%s.tgz", arch, b.Version)
		tgz, err := b.tarball(data, readme, license)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, name), tgz, 0o644); err != nil {
			return err
		}
		files = append(files, name)
		fmt.Printf("%s\t%d bytes (binary %d)\n", name, len(tgz), len(data))
	}
	if image {
		name := fmt.Sprintf("cnibox-image-v%s.oci.tar", b.Version)
		ref := repo + ":v" + b.Version
		if err := b.image(filepath.Join(out, name), ref, bins, license); err != nil {
			return fmt.Errorf("image: %w", err)
		}
		files = append(files, name)
		fi, _ := os.Stat(filepath.Join(out, name))
		fmt.Printf("%s\t%d bytes (%s)\n", name, fi.Size(), ref)
	}
	slices.Sort(files)
	for _, sums := range []struct {
		name string
		h    func() hash.Hash
	}{{"SHA256SUMS", sha256.New}, {"SHA512SUMS", sha512.New}} {
		var buf bytes.Buffer
		for _, f := range files {
			data, err := os.ReadFile(filepath.Join(out, f))
			if err != nil {
				return err
			}
			h := sums.h()
			h.Write(data)
			fmt.Fprintf(&buf, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), f)
		}
		if err := os.WriteFile(filepath.Join(out, sums.name), buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// describe reads the version, the commit and the archive time.
func describe() (*Build, error) {
	v, err := os.ReadFile("VERSION")
	if err != nil {
		return nil, fmt.Errorf("run from the repository's root: %w", err)
	}
	b := &Build{Version: strings.TrimSpace(string(v)), Commit: "unknown", Time: time.Unix(0, 0).UTC()}
	if c, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil && inGitRoot() {
		b.Commit = strings.TrimSpace(string(c))
		if exec.Command("git", "diff", "--quiet", "HEAD", "--").Run() != nil {
			b.Commit += "-dirty"
		}
		if t, err := exec.Command("git", "log", "-1", "--format=%ct").Output(); err == nil {
			if n, err := strconv.ParseInt(strings.TrimSpace(string(t)), 10, 64); err == nil {
				b.Time = time.Unix(n, 0).UTC()
			}
		}
	} else if c, err := os.ReadFile("COMMIT"); err == nil && !bytes.Contains(c, []byte("Format")) {
		b.Commit = strings.TrimSpace(string(c))[:min(12, len(strings.TrimSpace(string(c))))]
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
		}
		b.Time = time.Unix(n, 0).UTC()
	}
	return b, nil
}

func inGitRoot() bool {
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	wd, _ := os.Getwd()
	return err == nil && strings.TrimSpace(string(top)) == wd
}

// build compiles cnibox for linux/arch into out, as make build does.
func (b *Build) build(arch, out string) error {
	cmd := exec.Command(goCmd(), "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= -X github.com/cnibox/cnibox/shared/cni.BuildCommit="+b.Commit,
		"-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOARM=7", "GOFLAGS=-buildvcs=false")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build linux/%s: %w\n%s", arch, err, o)
	}
	return nil
}

func goCmd() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// entry is one file of an archive.
type entry struct {
	name string
	mode int64
	link string // a symlink's target
	data []byte
}

// tarball is the release tarball of one architecture, gzipped.
func (b *Build) tarball(bin, readme, license []byte) ([]byte, error) {
	entries := []entry{{name: "./", mode: 0o755}, {name: "./cnibox", mode: 0o755, data: bin}}
	for _, a := range b.Applets {
		entries = append(entries, entry{name: "./" + a, mode: 0o777, link: "cnibox"})
	}
	entries = append(entries, entry{name: "./LICENSE", mode: 0o644, data: license},
		entry{name: "./README.md", mode: 0o644, data: readme})
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression) // no name, no mtime
	if err := writeTar(gz, entries, b.Time); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeTar writes entries in their order with fixed owners and times.
func writeTar(w io.Writer, entries []entry, mtime time.Time) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: mtime, Uid: 0, Gid: 0,
			Uname: "root", Gname: "root", Format: tar.FormatGNU}
		switch {
		case strings.HasSuffix(e.name, "/"):
			h.Typeflag = tar.TypeDir
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}
