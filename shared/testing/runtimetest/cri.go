package runtimetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criTimeout bounds one CRI call, as kubelet's --runtime-request-timeout does.
const criTimeout = 2 * time.Minute

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), criTimeout)
}

// WaitNetworkReady waits until the CRI status reports NetworkReady, which
// containerd sets once it has loaded a network from conf_dir (it watches
// the directory) and, for 1.1.0 configs, STATUS of every plugin passed.
func (c *Containerd) WaitNetworkReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cx, cancel := ctx()
		st, err := c.Runtime.Status(cx, &cri.StatusRequest{})
		cancel()
		if err == nil {
			for _, cond := range st.Status.Conditions {
				if cond.Type == cri.NetworkReady && cond.Status {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd never reported NetworkReady: %v %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Pod is a CRI pod sandbox.
type Pod struct {
	ID    string
	Name  string
	IP    string
	IPs   []string // IP, then the additional ones (dual stack)
	PID   int      // the pause process, to enter the pod's netns
	NetNS string   // the netns path containerd gave the plugins
	c     *Containerd
}

// RunPod runs a pod sandbox (crictl runp): the CNI ADD happens here.
func (c *Containerd) RunPod(t testing.TB, name string, ports []*cri.PortMapping, annotations map[string]string) *Pod {
	t.Helper()
	cfg := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Namespace: "cnibox-test", Uid: name + "-uid"},
		Hostname:     name,
		LogDirectory: filepath.Join(c.Dir, "logs", name),
		PortMappings: ports,
		Annotations:  annotations,
		Linux:        &cri.LinuxPodSandboxConfig{},
	}
	cx, cancel := ctx()
	defer cancel()
	resp, err := c.Runtime.RunPodSandbox(cx, &cri.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	p := &Pod{ID: resp.PodSandboxId, Name: name, c: c}
	st, err := c.Runtime.PodSandboxStatus(cx, &cri.PodSandboxStatusRequest{PodSandboxId: p.ID, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", name, err)
	}
	if st.Status.Network != nil {
		p.IP = st.Status.Network.Ip
		p.IPs = append(p.IPs, p.IP)
		for _, ip := range st.Status.Network.AdditionalIps {
			p.IPs = append(p.IPs, ip.Ip)
		}
	}
	var info struct {
		Pid         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatalf("PodSandboxStatus %s: verbose info: %v", name, err)
	}
	p.PID = info.Pid
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			p.NetNS = ns.Path
		}
	}
	return p
}

// Stop and Remove the pod (crictl stopp, rmp): the CNI DEL happens in Stop.
func (p *Pod) Stop(t testing.TB) {
	t.Helper()
	cx, cancel := ctx()
	defer cancel()
	if _, err := p.c.Runtime.StopPodSandbox(cx, &cri.StopPodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		t.Fatalf("StopPodSandbox %s: %v", p.Name, err)
	}
	if _, err := p.c.Runtime.RemovePodSandbox(cx, &cri.RemovePodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		t.Fatalf("RemovePodSandbox %s: %v", p.Name, err)
	}
}

// Run creates and starts a container in the pod with the busybox image.
func (p *Pod) Run(t testing.TB, name string, command ...string) string {
	t.Helper()
	cx, cancel := ctx()
	defer cancel()
	sandbox := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: p.Name, Namespace: "cnibox-test", Uid: p.Name + "-uid"},
	}
	resp, err := p.c.Runtime.CreateContainer(cx, &cri.CreateContainerRequest{
		PodSandboxId: p.ID,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: name},
			Image:    &cri.ImageSpec{Image: PauseImage},
			Command:  command,
			LogPath:  name + ".log",
			Linux:    &cri.LinuxContainerConfig{},
		},
		SandboxConfig: sandbox,
	})
	if err != nil {
		t.Fatalf("CreateContainer %s in %s: %v", name, p.Name, err)
	}
	if _, err := p.c.Runtime.StartContainer(cx, &cri.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s in %s: %v", name, p.Name, err)
	}
	return resp.ContainerId
}

// Exec runs a command in a container (crictl exec) and returns stdout.
func (p *Pod) Exec(container string, command ...string) (string, error) {
	cx, cancel := ctx()
	defer cancel()
	resp, err := p.c.Runtime.ExecSync(cx, &cri.ExecSyncRequest{ContainerId: container, Cmd: command, Timeout: 30})
	if err != nil {
		return "", err
	}
	if resp.ExitCode != 0 {
		return string(resp.Stdout), fmt.Errorf("%s: exit %d: %s%s", strings.Join(command, " "), resp.ExitCode, resp.Stdout, resp.Stderr)
	}
	return string(resp.Stdout), nil
}

// PortMapping is a CRI TCP hostPort mapping.
func PortMapping(hostPort, containerPort int32) *cri.PortMapping {
	return &cri.PortMapping{Protocol: cri.Protocol_TCP, HostPort: hostPort, ContainerPort: containerPort}
}

// killLeftovers ends what a failed test left running under this
// containerd: its runc containers (through runc, with the test's root) and
// any process started with this containerd's directory on its command
// line (shims carry "-address <socket>").
func (c *Containerd) killLeftovers() {
	for _, ns := range []string{"k8s.io", "default"} {
		root := filepath.Join(c.Dir, "runc", ns)
		if _, err := os.Stat(root); err != nil {
			continue
		}
		ids, _ := os.ReadDir(root)
		for _, id := range ids {
			runcDelete(root, id.Name())
		}
	}
	killUnder(c.Dir)
}

// killUnder kills (by pid) every process with dir on its command line:
// the shims and conmons a runtime of this test started.
func killUnder(dir string) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Ports lists port mappings for RunPod.
func Ports(m ...*cri.PortMapping) []*cri.PortMapping { return m }

// Retry calls f until it succeeds, up to 20 times 500ms apart: the first
// packets after a pod starts may race its server's listen (slow on a
// loaded CI machine).
func Retry(f func() (string, error)) (string, error) {
	var out string
	var err error
	for i := 0; i < 20; i++ {
		if out, err = f(); err == nil {
			return out, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return out, err
}

// HTTPGet is the shell command a busybox container uses to fetch / from
// addr (host:port) over HTTP/1.0 with nc (busybox's wget crashes in a
// container without NSS libraries).
func HTTPGet(addr string) []string {
	host, port, _ := strings.Cut(addr, ":")
	if port == "" {
		port = "80"
	}
	return []string{"/bin/sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s %s`, host, port)}
}
