package control_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/control"
)

// chanSource is a ConfigSource fed by the test: the seam itself, as
// internal/kube's source uses it (informers cannot run here without an API
// server; internal/kube's TestControlPlaneOnKubernetes runs the real one).
type chanSource struct {
	initial []any
	batches chan batch
}

type batch struct {
	objs []any
	err  error
}

func (s *chanSource) Name() string         { return "test-source" }
func (s *chanSource) Load() ([]any, error) { return s.initial, nil }
func (s *chanSource) Watch(ctx context.Context, update func([]any, error)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-s.batches:
			update(b.objs, b.err)
		}
	}
}

func parseObjs(t *testing.T, name, doc string) []any {
	t.Helper()
	objs, errs := config.Parse(name, []byte(doc))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return objs
}

// TestConfigSourceSeam: the plane installs what a ConfigSource hands it,
// rejects a batch that does not validate with the rest (here a trust domain
// other than the CA's) or an error from the source, keeps the last good
// config meanwhile and says so in GetState under the source's name.
func TestConfigSourceSeam(t *testing.T) {
	src := &chanSource{initial: parseObjs(t, "initial", settleMeshDoc), batches: make(chan batch)}
	e := start(t, func(c *control.Config) { c.Plane = control.PlaneConfig{Source: src} })
	t.Cleanup(e.srv.Plane().Close)
	st := getState(t, e)
	if st.ConfigVersion != 1 || st.Config.AuthPolicy() != "MUTUAL_TLS" {
		t.Fatalf("at start: version %d authPolicy %s; want 1 MUTUAL_TLS (Load's objects)", st.ConfigVersion, st.Config.AuthPolicy())
	}

	src.batches <- batch{objs: parseObjs(t, "b2", settleMeshDoc+"---\n"+ratingsDoc)}
	waitUntil(t, "second batch in force", func() bool { return getState(t, e).ConfigVersion == 2 })
	if n := len(getState(t, e).Config.Services); n != 1 {
		t.Fatalf("second batch: %d services, want 1", n)
	}

	src.batches <- batch{objs: parseObjs(t, "b3", strings.Replace(settleMeshDoc, "authPolicy: MUTUAL_TLS", "authPolicy: NONE, trustDomain: other.org", 1))}
	waitUntil(t, "bad batch rejected", func() bool { return getState(t, e).ConfigRejected != nil })
	st = getState(t, e)
	if st.ConfigVersion != 2 || st.Config.AuthPolicy() != "MUTUAL_TLS" || len(st.Config.Services) != 1 {
		t.Fatalf("after a bad batch: version %d authPolicy %s services %d; want the last good (2 MUTUAL_TLS 1)", st.ConfigVersion, st.Config.AuthPolicy(), len(st.Config.Services))
	}
	if r := st.ConfigRejected; r.Dir != "test-source" || len(r.Errors) != 1 || !strings.Contains(r.Errors[0], "differs from the CA's") {
		t.Fatalf("rejection = %+v", r)
	}

	src.batches <- batch{objs: parseObjs(t, "b4", settleMeshDoc)}
	waitUntil(t, "good batch after a bad one", func() bool { st := getState(t, e); return st.ConfigRejected == nil && st.ConfigVersion == 3 })

	src.batches <- batch{err: errors.New("source broke")}
	waitUntil(t, "source error recorded", func() bool { return getState(t, e).ConfigRejected != nil })
	if st := getState(t, e); st.ConfigVersion != 3 || st.ConfigRejected.Errors[0] != "source broke" {
		t.Fatalf("after a source error: version %d rejection %+v", st.ConfigVersion, st.ConfigRejected)
	}
}

const settleMeshDoc = `apiVersion: meshauth.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {authPolicy: MUTUAL_TLS}
`

const ratingsDoc = `apiVersion: meshauth.io/v1alpha1
kind: Service
metadata: {name: ratings}
spec: {ports: [{number: 9080}]}
`
