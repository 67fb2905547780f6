package kcluster

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/meshauth/meshauth/test/cluster/ociimage"
)

// The image names. The meshauth images keep the names the install manifests,
// kube-inject and the samples use (ghcr.io/meshauth/...:latest with
// imagePullPolicy IfNotPresent): imported into containerd beforehand, they
// are never pulled, so the seed's manifests run unchanged.
const (
	PauseImage   = "meshauth.test/pause:1"
	DNSImage     = "meshauth.test/clusterdns:1"
	ControlImage = "ghcr.io/meshauth/meshd:latest"
	ProxyImage   = "ghcr.io/meshauth/proxy:latest"
	HttpbinImage = "ghcr.io/meshauth/httpbin:latest"
	SleepImage   = "ghcr.io/meshauth/sleep:latest"
)

// goBinary is a static binary the images need, built as the Dockerfiles
// under install/docker and samples/ build it.
type goBinary struct {
	name, pkg, tags string
}

var goBinaries = []goBinary{
	{"meshd-control", "./cmd/meshd", "kube"},                  // install/docker/meshd.Dockerfile
	{"meshd-proxy", "./cmd/meshd", "sidecaronly,grpcnotrace"}, // install/docker/proxy.Dockerfile
	{"httpbin", "./samples/httpbin/cmd/httpbin", ""},          // samples/httpbin/Dockerfile
	{"sleep-forever", "./samples/sleep", ""},                  // samples/sleep/Dockerfile
	{"pause", "./test/cluster/cmd/pause", ""},                 // the pod sandbox
	{"clusterdns", "./test/cluster/cmd/clusterdns", ""},       // the cluster DNS
}

// Debian binaries (with their ldd libraries) in the images: curl in sleep
// and istio-proxy because the seed runs curl in both; iptables for
// istio-init; ls/cat/sh for the seed's `kubectl exec ... -- ls /etc/certs`.
var (
	shellTools = []string{"/bin/sh", "/bin/dash", "/bin/ls", "/bin/cat", "/bin/sleep", "/usr/bin/id"}
	curlTools  = []string{"/usr/bin/curl", "/usr/bin/openssl"}
	xtables    = []string{"/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi"}
)

// BuildImages builds the Go binaries (CGO_ENABLED=0, from the repository at
// repo, into repo/bin/cluster-images) and writes every image as an OCI tar
// into dir; it returns the tar paths.
func BuildImages(repo, dir string) ([]string, error) {
	// The binaries stay in bin/cluster-images between runs: `go build -o`
	// leaves an up-to-date binary alone, so a warm run links nothing.
	bin := filepath.Join(repo, "bin", "cluster-images")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return nil, err
	}
	// The builds run at once: each is mostly a link (the compile is in Go's
	// cache after the first run), and links do not share work.
	if err := inParallel(len(goBinaries), func(i int) error {
		b := goBinaries[i]
		args := []string{"build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(bin, b.name)}
		if b.tags != "" {
			args = append(args, "-tags", b.tags)
		}
		cmd := exec.Command("go", append(args, b.pkg)...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("kcluster: go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, out)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	shell, err := ociimage.HostBinaries(shellTools...)
	if err != nil {
		return nil, err
	}
	curl, err := ociimage.HostBinaries(curlTools...)
	if err != nil {
		return nil, err
	}
	ipt, err := iptablesEntries()
	if err != nil {
		return nil, err
	}
	etc := []ociimage.Entry{
		{Path: "/tmp", Dir: true, Mode: fs.ModeSticky | 0o777},
		{Path: "/etc/passwd", Src: writeFileOnce(bin, "passwd", "root:x:0:0:root:/root:/bin/sh\nistio-proxy:x:1337:1337::/tmp:/bin/sh\n")},
		{Path: "/etc/group", Src: writeFileOnce(bin, "group", "root:x:0:\nistio-proxy:x:1337:\n")},
	}
	env := []string{ociimage.DefaultPath}
	images := []ociimage.Image{
		{Name: PauseImage, Entrypoint: []string{"/pause"}, Entries: []ociimage.Entry{{Path: "/pause", Src: filepath.Join(bin, "pause")}}},
		{Name: DNSImage, Entrypoint: []string{"/clusterdns"}, Entries: []ociimage.Entry{{Path: "/clusterdns", Src: filepath.Join(bin, "clusterdns")}}},
		{Name: ControlImage, Entrypoint: []string{"/usr/local/bin/meshd"}, Env: env, User: "1337",
			Entries: append([]ociimage.Entry{{Path: "/usr/local/bin/meshd", Src: filepath.Join(bin, "meshd-control")}}, etc...)},
		{Name: ProxyImage, Entrypoint: []string{"meshd"}, Env: env, User: "1337",
			Entries: concat([]ociimage.Entry{{Path: "/usr/local/bin/meshd", Src: filepath.Join(bin, "meshd-proxy")}}, ipt, curl, shell, etc)},
		{Name: HttpbinImage, Entrypoint: []string{"/httpbin"}, Env: env,
			Entries: []ociimage.Entry{{Path: "/httpbin", Src: filepath.Join(bin, "httpbin")}}},
		{Name: SleepImage, Entrypoint: []string{"/bin/sleep-forever"}, Env: env,
			Entries: concat([]ociimage.Entry{{Path: "/bin/sleep-forever", Src: filepath.Join(bin, "sleep-forever")}}, curl, shell, etc)},
	}
	var tars []string
	for _, img := range images {
		name := img.Name[strings.LastIndex(img.Name, "/")+1:]
		out := filepath.Join(dir, strings.ReplaceAll(name, ":", "_")+".tar")
		if err := img.WriteFile(out); err != nil {
			return nil, err
		}
		tars = append(tars, out)
	}
	return tars, nil
}

// iptablesEntries is Debian's iptables for istio-init: the nft and legacy
// multi-call binaries, their libraries, the dlopen()ed extensions (which
// ldd cannot see) and the names meshd init-net runs.
func iptablesEntries() ([]ociimage.Entry, error) {
	e, err := ociimage.HostBinaries(xtables...)
	if err != nil {
		return nil, err
	}
	ext, err := ociimage.HostDir("/usr/lib/x86_64-linux-gnu/xtables")
	if err != nil {
		return nil, fmt.Errorf("kcluster: iptables extensions: %w", err)
	}
	e = append(e, ext...)
	for _, f := range []string{"/etc/protocols", "/etc/ethertypes"} {
		if _, err := os.Stat(f); err == nil {
			e = append(e, ociimage.Entry{Path: f, Src: f})
		}
	}
	for _, v := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		e = append(e,
			ociimage.Entry{Path: "/usr/sbin/" + v, Link: "xtables-nft-multi"},
			ociimage.Entry{Path: "/usr/sbin/" + strings.Replace(v, "tables", "tables-legacy", 1), Link: "xtables-legacy-multi"},
			ociimage.Entry{Path: "/usr/sbin/" + strings.Replace(v, "tables", "tables-nft", 1), Link: "xtables-nft-multi"})
	}
	return e, nil
}

func concat(parts ...[]ociimage.Entry) []ociimage.Entry {
	var all []ociimage.Entry
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

// writeFileOnce writes content to dir/name and returns the path (a source
// for an image entry). Errors surface when the image is written.
func writeFileOnce(dir, name, content string) string {
	p := filepath.Join(dir, name)
	_ = os.WriteFile(p, []byte(content), 0o644)
	return p
}
