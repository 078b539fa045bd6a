package release_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/cnibox/cnibox/shared/install"
	"github.com/cnibox/cnibox/shared/testing/runtimetest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// builtImage is what the release's OCI archive says: the name it is
// imported under and each platform's config.
type builtImage struct {
	archive string
	ref     string
	configs map[string]*v1.ConfigFile // by architecture
}

func readImage(t *testing.T) *builtImage {
	t.Helper()
	archive := filepath.Join(released(t), "cnibox-image-v"+version(t)+".oci.tar")
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xf", archive, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil || len(tm.Manifests) != 1 {
		t.Fatalf("index.json: %v %+v", err, tm)
	}
	img := &builtImage{archive: archive, ref: tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"], configs: map[string]*v1.ConfigFile{}}
	idx, err := top.ImageIndex(tm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range im.Manifests {
		i, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := i.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if m.Platform == nil || m.Platform.Architecture != cf.Architecture || cf.OS != "linux" {
			t.Errorf("manifest platform %+v, config %s/%s", m.Platform, cf.OS, cf.Architecture)
		}
		img.configs[cf.Architecture] = cf
	}
	return img
}

// TestImageIndex: one image per release architecture, each running
// "/cnibox install" into /host/opt/cni/bin by default, named
// ghcr.io/cnibox/cnibox:vVERSION.
func TestImageIndex(t *testing.T) {
	img := readImage(t)
	if want := "ghcr.io/cnibox/cnibox:v" + version(t); img.ref != want {
		t.Errorf("image name %q, want %q", img.ref, want)
	}
	for _, a := range testArches {
		cf := img.configs[a]
		if cf == nil {
			t.Errorf("no %s image in the index", a)
			continue
		}
		if got := strings.Join(append(cf.Config.Entrypoint, cf.Config.Cmd...), " "); got != "/cnibox install --dir /host/opt/cni/bin --host-dir /opt/cni/bin" {
			t.Errorf("%s image runs %q", a, got)
		}
		if cf.Config.Labels["org.opencontainers.image.revision"] != testCommit {
			t.Errorf("%s image labels %v", a, cf.Config.Labels)
		}
	}
}

// TestManifest parses scripts/kubernetes/cnibox.yaml with the Kubernetes
// API types (strictly: an unknown or misplaced field fails) and checks it
// against the image: the image reference, a command the image has and
// cnibox accepts, its --dir and --conf-dir being mounts of the host's
// /opt/cni/bin and /etc/cni/net.d, and the DaemonSet settings flannel's
// and Cilium's users expect.
func TestManifest(t *testing.T) {
	img := readImage(t)
	data, err := os.ReadFile(filepath.Join(testnet.RepoRoot(), "scripts", "kubernetes", "cnibox.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(data, &ds); err != nil {
		t.Fatalf("scripts/kubernetes/cnibox.yaml: %v", err)
	}
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" || ds.Namespace != "kube-system" {
		t.Errorf("%s %s in %q", ds.APIVersion, ds.Kind, ds.Namespace)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("the selector's %s=%s does not match the pod template", k, v)
		}
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("update strategy %q", ds.Spec.UpdateStrategy.Type)
	}
	pod := ds.Spec.Template.Spec
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool { return tl.Key == "" && tl.Operator == corev1.TolerationOpExists }) {
		t.Errorf("tolerations %+v: the installer must run on every node, tainted ones too", pod.Tolerations)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	hostPaths := map[string]string{} // volume name -> host path
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
			if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
				t.Errorf("volume %s: hostPath type %v", v.Name, v.HostPath.Type)
			}
		}
	}
	if len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("%d init containers, %d containers", len(pod.InitContainers), len(pod.Containers))
	}
	cf := img.configs["amd64"]
	for i, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		if c.Image != img.ref {
			t.Errorf("%s: image %q, the release's is %q", c.Name, c.Image, img.ref)
		}
		command := c.Command
		if len(command) == 0 {
			command = cf.Config.Entrypoint
		}
		if !slices.Equal(command, cf.Config.Entrypoint) {
			t.Errorf("%s: command %q, the image's entrypoint is %q", c.Name, command, cf.Config.Entrypoint)
		}
		mounts := map[string]string{} // mount path -> host path
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = hostPaths[m.Name]
		}
		flags := map[string]string{}
		for j := 0; j < len(c.Args); j++ {
			if j+1 < len(c.Args) && !strings.HasPrefix(c.Args[j+1], "--") {
				flags[c.Args[j]] = c.Args[j+1]
				j++
			} else {
				k, v, _ := strings.Cut(c.Args[j], "=")
				flags[k] = v
			}
		}
		if hp := mounts[flags["--dir"]]; hp != "/opt/cni/bin" || flags["--host-dir"] != hp {
			t.Errorf("%s: --dir %q is a mount of host %q, --host-dir %q; want the host's /opt/cni/bin", c.Name, flags["--dir"], hp, flags["--host-dir"])
		}
		if d, ok := flags["--conf-dir"]; ok && mounts[d] != "/etc/cni/net.d" {
			t.Errorf("%s: --conf-dir %q is a mount of host %q", c.Name, d, mounts[d])
		}
		_, sleeps := flags["--sleep"]
		if sleeps != (i == 1) {
			t.Errorf("%s: --sleep %v: the init container must exit, the main one sleep", c.Name, sleeps)
		}
		if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
			t.Errorf("%s: the root filesystem is not read-only", c.Name)
		}
		// The same command, with the mounts made temporary directories,
		// is one the binary accepts and carries out.
		args := slices.Clone(c.Args)
		for j, a := range args {
			if _, ok := mounts[a]; ok {
				args[j] = filepath.Join(t.TempDir(), "mnt")
			}
		}
		args = slices.DeleteFunc(args, func(a string) bool { return a == "--sleep" })
		if out, err := exec.Command(testnet.Binary(t), append(command[1:], args...)...).CombinedOutput(); err != nil {
			t.Errorf("%s: cnibox %s: %v %s", c.Name, strings.Join(args, " "), err, out)
		}
	}
}

// TestImageInContainerd imports the release's image into a private
// containerd and runs it as the DaemonSet does, with the "host" plugin
// directory bind-mounted at /host/opt/cni/bin: over an empty directory, a
// reference install and an older cnibox install, twice (the second run
// changes nothing), and once with --conflist. The installed entries then
// run, with the directory at /opt/cni/bin as on the host.
func TestImageInContainerd(t *testing.T) {
	runtimetest.RequireContainerd(t)
	img := readImage(t)
	node := testnet.NewNS(t, "node")
	c := runtimetest.StartContainerd(t, node, t.TempDir())
	if out, err := c.Ctr("-n", "cnibox", "images", "import", img.archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	if out, err := c.Ctr("-n", "cnibox", "images", "ls", "-q"); err != nil || !strings.Contains(out, img.ref) {
		t.Fatalf("imported images: %v %q, want %s", err, out, img.ref)
	}
	v := version(t)
	runs := 0
	run := func(t *testing.T, mounts map[string]string, args ...string) string {
		t.Helper()
		runs++
		ctr := []string{"-n", "cnibox", "run", "--rm"}
		for dst, src := range mounts {
			ctr = append(ctr, "--mount", "type=bind,src="+src+",dst="+dst+",options=rbind:rw")
		}
		ctr = append(ctr, img.ref, fmt.Sprintf("cnibox-install-%d", runs))
		out, err := c.Ctr(append(ctr, args...)...)
		if err != nil {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		return out
	}
	ino := func(p string) uint64 {
		fi, err := os.Lstat(p)
		if err != nil {
			return 0
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	applets := testnet.Applets(t)
	for _, base := range []string{"empty", "reference", "older-cnibox"} {
		t.Run(base, func(t *testing.T) {
			host := filepath.Join(t.TempDir(), "opt-cni-bin")
			os.MkdirAll(host, 0o755)
			var refs []string
			switch base {
			case "reference":
				if out, err := exec.Command("sh", "-c", "cp /usr/lib/cni/* "+host+"/").CombinedOutput(); err != nil {
					t.Skipf("no reference install to copy: %v %s", err, out)
				}
				es, _ := os.ReadDir(host)
				for _, e := range es {
					if !slices.Contains(applets, e.Name()) {
						refs = append(refs, e.Name())
					}
				}
			case "older-cnibox":
				if out, err := exec.Command(testnet.Binary(t), "install", "--dir", host, "--symlink").CombinedOutput(); err != nil {
					t.Fatalf("%v %s", err, out)
				}
			}
			out := run(t, map[string]string{"/host/opt/cni/bin": host})
			if !strings.Contains(out, fmt.Sprintf("installed cnibox and %d applets into /host/opt/cni/bin", len(applets))) {
				t.Errorf("the image said %q", out)
			}
			before := map[string]uint64{}
			for _, a := range append(applets, "cnibox") {
				before[a] = ino(filepath.Join(host, a))
			}
			for _, a := range applets {
				if k := install.Inspect(host, a); k != install.Script || install.EntryInterpreter(filepath.Join(host, a)) != "/opt/cni/bin/cnibox" {
					t.Errorf("%s is %v running %q", a, k, install.EntryInterpreter(filepath.Join(host, a)))
				}
			}
			for _, r := range refs {
				if k := install.Inspect(host, r); k != install.Foreign {
					t.Errorf("the reference's %s became %v", r, k)
				}
			}
			// The entries run where the host has the directory.
			for _, a := range []string{"bridge", "host-local", "portmap"} {
				cmd := runtimetest.NodeCommand(node, []runtimetest.Mount{{Target: "/opt"}, {Target: "/opt/cni/bin", Source: host}}, "/opt/cni/bin/"+a)
				cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
				cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
				var stdout bytes.Buffer
				cmd.Stdout = &stdout
				var vi struct{ SupportedVersions []string }
				if err := cmd.Run(); err != nil || json.Unmarshal(stdout.Bytes(), &vi) != nil || len(vi.SupportedVersions) == 0 {
					t.Errorf("/opt/cni/bin/%s VERSION from the installed set: %v %q", a, err, stdout.String())
				}
			}
			if out, err := exec.Command(filepath.Join(host, "cnibox"), "version").Output(); err != nil || !strings.Contains(string(out), "cnibox "+v+" (commit "+testCommit+")") {
				t.Errorf("installed cnibox version: %v %q", err, out)
			}
			// Idempotent: a second run rewrites nothing.
			run(t, map[string]string{"/host/opt/cni/bin": host})
			for a, i := range before {
				if ino(filepath.Join(host, a)) != i {
					t.Errorf("the second run rewrote %s", a)
				}
			}
		})
	}
	t.Run("conflist", func(t *testing.T) {
		host, netd := t.TempDir(), t.TempDir()
		run(t, map[string]string{"/host/opt/cni/bin": host, "/host/etc/cni/net.d": netd},
			"/cnibox", "install", "--dir", "/host/opt/cni/bin", "--host-dir", "/opt/cni/bin",
			"--conflist", "/conflists/kubernetes.conflist", "--conf-dir", "/host/etc/cni/net.d")
		want, _ := os.ReadFile(filepath.Join(testnet.RepoRoot(), "conflists", "kubernetes.conflist"))
		if got, err := os.ReadFile(filepath.Join(netd, "kubernetes.conflist")); err != nil || !bytes.Equal(got, want) {
			t.Errorf("the conflist was not installed into net.d: %v", err)
		}
		if install.Inspect(host, "bridge") != install.Script {
			t.Error("plugins not installed")
		}
	})
}
