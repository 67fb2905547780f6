// Package ociimage writes container images as OCI image-layout tar files
// with only the standard library, so that the test cluster (test/cluster)
// needs no Docker daemon and no registry: `ctr images import` reads the tar,
// and pods name the image with imagePullPolicy IfNotPresent or Never.
//
// An image is one uncompressed layer made of files copied from the host
// (a Go binary built for the image, or a Debian binary with the shared
// libraries ldd lists for it), directories and symbolic links.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Entry is one path in the image's filesystem.
type Entry struct {
	// Path in the image, absolute.
	Path string
	// Src is a host file whose content is copied (symbolic links followed).
	// Empty for a directory or a link.
	Src string
	// Link makes Path a symbolic link to Link.
	Link string
	// Dir makes Path an empty directory.
	Dir bool
	// Mode overrides the permission bits (default: Src's, or 0755); for a
	// directory fs.ModeSticky sets the sticky bit.
	Mode fs.FileMode
}

// Image is the image's configuration and content.
type Image struct {
	// Name is the reference containerd gives the image, e.g.
	// "ghcr.io/meshauth/proxy:latest" (annotation io.containerd.image.name).
	Name       string
	Entrypoint []string
	Cmd        []string
	Env        []string
	User       string
	Entries    []Entry
}

// DefaultPath is the PATH a Debian image sets.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// epoch is the fixed modification time of every entry: the same inputs give
// the same layer digest.
var epoch = time.Unix(0, 0).UTC()

// Layer writes the image's filesystem as an uncompressed tar. Parent
// directories are added as needed; a later entry for the same path wins.
func (img Image) Layer(w io.Writer) error {
	byPath := map[string]Entry{}
	for _, e := range img.Entries {
		p := path.Clean("/" + e.Path)
		e.Path = p
		byPath[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = Entry{Path: d, Dir: true}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		if err := writeEntry(tw, byPath[p]); err != nil {
			return fmt.Errorf("ociimage %s: %s: %w", img.Name, p, err)
		}
	}
	return tw.Close()
}

func writeEntry(tw *tar.Writer, e Entry) error {
	h := &tar.Header{Name: strings.TrimPrefix(e.Path, "/"), ModTime: epoch, Format: tar.FormatPAX}
	switch {
	case e.Link != "":
		h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.Link, 0o777
		return tw.WriteHeader(h)
	case e.Dir || e.Src == "":
		h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
		if e.Mode != 0 {
			h.Mode = int64(e.Mode.Perm())
		}
		if e.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000 // /tmp
		}
		return tw.WriteHeader(h)
	}
	data, err := os.ReadFile(e.Src)
	if err != nil {
		return err
	}
	st, err := os.Stat(e.Src)
	if err != nil {
		return err
	}
	h.Typeflag, h.Size, h.Mode = tar.TypeReg, int64(len(data)), int64(st.Mode().Perm())
	if e.Mode != 0 {
		h.Mode = int64(e.Mode.Perm())
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err = tw.Write(data)
	return err
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// WriteFile writes the image as an OCI image layout in a tar file at out
// (oci-layout, index.json, blobs/sha256/...), the format `ctr images import`
// reads.
func (img Image) WriteFile(out string) error {
	var layer bytes.Buffer
	if err := img.Layer(&layer); err != nil {
		return err
	}
	layerDesc, layerBlob := blob("application/vnd.oci.image.layer.v1.tar", layer.Bytes())
	cfg := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Env": img.Env, "Entrypoint": img.Entrypoint, "Cmd": img.Cmd, "User": img.User,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	cfgDesc, cfgBlob := blob("application/vnd.oci.image.config.v1+json", cfgJSON)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        cfgDesc,
		"layers":        []descriptor{layerDesc},
	})
	if err != nil {
		return err
	}
	manDesc, manBlob := blob("application/vnd.oci.image.manifest.v1+json", manifest)
	tag := img.Name[strings.LastIndex(img.Name, ":")+1:]
	manDesc.Annotations = map[string]string{
		"io.containerd.image.name":          img.Name,
		"org.opencontainers.image.ref.name": tag,
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{manDesc}})
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + layerBlob, layer.Bytes()},
		{"blobs/sha256/" + cfgBlob, cfgJSON},
		{"blobs/sha256/" + manBlob, manifest},
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
			f.Close()
			return err
		}
	}
	for _, fl := range files {
		h := &tar.Header{Name: fl.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(fl.data)), ModTime: epoch}
		if err := tw.WriteHeader(h); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(fl.data); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func blob(mediaType string, data []byte) (descriptor, string) {
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hexSum, Size: int64(len(data))}, hexSum
}

// HostBinary returns entries for a dynamically linked host binary at the
// same path in the image, plus every shared library `ldd` lists for it (at
// the path ldd prints, content copied through symbolic links), so that
// Debian's curl or iptables runs in an image with no distribution.
func HostBinary(bin string) ([]Entry, error) {
	out, err := exec.Command("ldd", bin).Output()
	entries := []Entry{{Path: bin, Src: bin}}
	if err != nil {
		// "not a dynamic executable": a static binary needs nothing else.
		return entries, nil
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0] // the dynamic loader, e.g. /lib64/ld-linux-x86-64.so.2
		default:
			continue
		}
		entries = append(entries, Entry{Path: lib, Src: lib})
	}
	return entries, nil
}

// HostBinaries is HostBinary for several binaries.
func HostBinaries(bins ...string) ([]Entry, error) {
	var all []Entry
	for _, b := range bins {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("ociimage: host binary %s: %w (install the Debian package that has it)", b, err)
		}
		e, err := HostBinary(b)
		if err != nil {
			return nil, err
		}
		all = append(all, e...)
	}
	return all, nil
}

// HostDir returns entries copying the host directory dir (files, following
// symbolic links to files; subdirectories) to the same path in the image.
func HostDir(dir string) ([]Entry, error) {
	var entries []Entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			entries = append(entries, Entry{Path: p, Dir: true})
			return nil
		}
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			entries = append(entries, Entry{Path: p, Src: p})
		}
		return nil
	})
	return entries, err
}
