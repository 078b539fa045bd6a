package runtimetest

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// PauseImage is the name of the image BuildImage makes. It is the pod
// sandbox image of the test containerd and the image of test containers.
const PauseImage = "cnibox.test/busybox-pause:1"

// Busybox is the static busybox the image and rootfs are made from
// (Debian's busybox-static).
const Busybox = "/bin/busybox"

// busyboxApplets get a link in the image's /bin, enough for a pause
// process, servers (httpd, nc) and clients (wget, ping) in a container.
var busyboxApplets = []string{"sh", "sleep", "httpd", "nc", "wget", "ping", "ip", "cat", "echo", "printf", "ls", "mkdir"}

// BuildImage writes a docker-archive tarball ("docker save" format, which
// "ctr images import" reads) of a one-layer image holding a static busybox,
// whose default command sleeps forever: a pause container. No registry is
// needed.
func BuildImage(t testing.TB, dir string) string {
	t.Helper()
	layerTar, err := busyboxLayer()
	if err != nil {
		t.Fatalf("build busybox layer: %v", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{
		Cmd:        []string{"/bin/sleep", "2147483647"},
		Env:        []string{"PATH=/bin"},
		WorkingDir: "/",
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(PauseImage)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "busybox-pause.tar")
	if err := tarball.WriteToFile(path, ref, img); err != nil {
		t.Fatalf("write image %s: %v", path, err)
	}
	return path
}

// busyboxLayer is a tar of /bin/busybox and its applet links, plus the
// directories a container runtime expects to mount over.
func busyboxLayer() ([]byte, error) {
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "www/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	files := map[string]string{"www/index.html": "cnibox\n", "etc/passwd": "root:x:0:0:root:/:/bin/sh\n", "etc/group": "root:x:0:\n"}
	for _, f := range []string{"www/index.html", "etc/passwd", "etc/group"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f, Mode: 0o644, Size: int64(len(files[f]))}); err != nil {
			return nil, err
		}
		tw.Write([]byte(files[f]))
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bb); err != nil {
		return nil, err
	}
	for _, a := range busyboxApplets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Rootfs makes a directory tree with the same content as the image, for
// "ctr run --rootfs".
func Rootfs(t testing.TB, dir string) string {
	t.Helper()
	layer, err := busyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "rootfs")
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		default:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, b, os.FileMode(h.Mode))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}
