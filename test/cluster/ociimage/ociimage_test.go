package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readTar returns the files of a tar by name.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, map[string]*tar.Header) {
	t.Helper()
	files, hdrs := map[string][]byte{}, map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, hdrs
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name], hdrs[h.Name] = b, h
	}
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestWriteFile checks the OCI layout ctr imports: index -> manifest ->
// config and layer, every blob under its own digest, the image name
// annotation, the config's diff_id, and the layer's files, parents and
// links. Two writes give the same bytes.
func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tool")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := Image{Name: "ghcr.io/meshauth/test:latest", Entrypoint: []string{"/usr/bin/tool"}, Env: []string{DefaultPath},
		Entries: []Entry{{Path: "/usr/bin/tool", Src: src}, {Path: "/usr/bin/alias", Link: "tool"}, {Path: "/tmp", Dir: true, Mode: fs.ModeSticky | 0o777}}}
	out := filepath.Join(dir, "img.tar")
	if err := img.WriteFile(out); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(out)
	files, _ := readTar(t, bytes.NewReader(raw))
	for name, b := range files {
		if d, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && d != "" && digestOf(b) != "sha256:"+d {
			t.Errorf("blob %s has digest %s", name, digestOf(b))
		}
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != img.Name {
		t.Errorf("image name annotation %q, want %q", got, img.Name)
	}
	var man struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(index.Manifests[0].Digest, "sha256:")], &man); err != nil || len(man.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var cfg struct {
		Config struct{ Entrypoint, Env []string }
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(man.Config.Digest, "sha256:")], &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != man.Layers[0].Digest || cfg.Config.Entrypoint[0] != "/usr/bin/tool" {
		t.Errorf("config %+v does not match layer %s", cfg, man.Layers[0].Digest)
	}
	layer, hdrs := readTar(t, bytes.NewReader(files["blobs/sha256/"+strings.TrimPrefix(man.Layers[0].Digest, "sha256:")]))
	if string(layer["usr/bin/tool"]) != "#!/bin/sh\necho hi\n" || hdrs["usr/bin/tool"].Mode != 0o755 {
		t.Errorf("usr/bin/tool: %q mode %o", layer["usr/bin/tool"], hdrs["usr/bin/tool"].Mode)
	}
	if h := hdrs["usr/bin/alias"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "tool" {
		t.Errorf("usr/bin/alias: %+v", h)
	}
	for _, d := range []string{"usr/", "usr/bin/", "tmp/"} {
		if h := hdrs[d]; h == nil || h.Typeflag != tar.TypeDir {
			t.Errorf("directory %s missing", d)
		}
	}
	if hdrs["tmp/"].Mode != 0o1777 {
		t.Errorf("tmp/ mode %o", hdrs["tmp/"].Mode)
	}
	out2 := filepath.Join(dir, "img2.tar")
	if err := img.WriteFile(out2); err != nil {
		t.Fatal(err)
	}
	if raw2, _ := os.ReadFile(out2); !bytes.Equal(raw, raw2) {
		t.Error("two writes of the same image differ")
	}
}

func TestHostBinaryListsLibraries(t *testing.T) {
	if _, err := os.Stat("/usr/bin/curl"); err != nil {
		t.Skip("no /usr/bin/curl")
	}
	e, err := HostBinary("/usr/bin/curl")
	if err != nil {
		t.Fatal(err)
	}
	var libcurl, loader bool
	for _, x := range e {
		libcurl = libcurl || strings.Contains(x.Path, "libcurl")
		loader = loader || strings.Contains(x.Path, "ld-linux")
	}
	if !libcurl || !loader {
		t.Errorf("curl's entries lack libcurl (%v) or the loader (%v): %+v", libcurl, loader, e)
	}
}
