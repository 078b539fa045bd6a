package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The node installer's command: cnibox itself, installing into the host's
// plugin directory mounted at /host/opt/cni/bin, its entries naming the
// binary by the host's path. A DaemonSet runs it as an init container (it
// exits) and adds --sleep in a main container, or --conflist to install a
// network (scripts/kubernetes/cnibox.yaml).
var (
	ImageEntrypoint = []string{"/cnibox", "install"}
	ImageCmd        = []string{"--dir", "/host/opt/cni/bin", "--host-dir", "/opt/cni/bin"}
)

// image writes the multi-arch node-installer image as an OCI layout
// archive ("ctr images import" reads it; "skopeo copy oci-archive:"
// pushes it), built without a container daemon. Each architecture's image
// has one layer: /cnibox, /LICENSE and /conflists/*.conflist.
func (b *Build) image(path, ref string, bins map[string][]byte, license []byte) error {
	conflists, _ := filepath.Glob("conflists/*.conflist")
	slices.Sort(conflists)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range Arches {
		bin, ok := bins[arch]
		if !ok {
			continue
		}
		entries := []entry{{name: "cnibox", mode: 0o755, data: bin}, {name: "LICENSE", mode: 0o644, data: license},
			{name: "conflists/", mode: 0o755}}
		for _, c := range conflists {
			data, err := os.ReadFile(c)
			if err != nil {
				return err
			}
			entries = append(entries, entry{name: "conflists/" + filepath.Base(c), mode: 0o644, data: data})
		}
		var layerTar bytes.Buffer
		if err := writeTar(&layerTar, entries, b.Time); err != nil {
			return err
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(layerTar.Bytes())), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return err
		}
		img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
		img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
			Created: v1.Time{Time: b.Time}, CreatedBy: "scripts/release", Comment: "cnibox " + b.Version}})
		if err != nil {
			return err
		}
		platform := v1.Platform{OS: "linux", Architecture: arch}
		if arch == "arm" {
			platform.Variant = "v7"
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return err
		}
		cf = cf.DeepCopy()
		cf.Created = v1.Time{Time: b.Time}
		cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
		cf.Config.Entrypoint = ImageEntrypoint
		cf.Config.Cmd = ImageCmd
		cf.Config.WorkingDir = "/"
		cf.Config.Labels = b.labels()
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &platform}})
	}
	idx = mutate.Annotations(idx, b.labels()).(v1.ImageIndex)
	return writeLayout(path, ref, idx, b)
}

func (b *Build) labels() map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":    "cnibox node installer",
		"org.opencontainers.image.version":  b.Version,
		"org.opencontainers.image.revision": b.Commit,
		"org.opencontainers.image.source":   "https://github.com/cnibox/cnibox",
		"org.opencontainers.image.licenses": "Apache-2.0",
	}
}

// writeLayout writes idx and every blob it references as an OCI image
// layout in a tar archive, the index named ref, blobs in digest order.
func writeLayout(path, ref string, idx v1.ImageIndex, b *Build) error {
	blobs := map[string][]byte{}
	add := func(d v1.Hash, data []byte) { blobs["blobs/"+d.Algorithm+"/"+d.Hex] = data }
	raw, err := idx.RawManifest()
	if err != nil {
		return err
	}
	idxDigest, _ := idx.Digest()
	add(idxDigest, raw)
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			return err
		}
		raw, err := img.RawManifest()
		if err != nil {
			return err
		}
		add(m.Digest, raw)
		cfgName, _ := img.ConfigName()
		cfg, err := img.RawConfigFile()
		if err != nil {
			return err
		}
		add(cfgName, cfg)
		layers, err := img.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			data, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			add(d, data)
		}
	}
	top := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{{
		MediaType: types.OCIImageIndex, Digest: idxDigest, Size: int64(len(raw)),
		Annotations: map[string]string{"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref},
	}}}
	topJSON, err := json.Marshal(top)
	if err != nil {
		return err
	}
	entries := []entry{{name: "oci-layout", mode: 0o644, data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{name: "index.json", mode: 0o644, data: topJSON}, {name: "blobs/", mode: 0o755}, {name: "blobs/sha256/", mode: 0o755}}
	names := make([]string, 0, len(blobs))
	for n := range blobs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		entries = append(entries, entry{name: n, mode: 0o644, data: blobs[n]})
	}
	var buf bytes.Buffer
	if err := writeTar(&buf, entries, b.Time); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
