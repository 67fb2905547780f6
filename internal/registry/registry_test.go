package registry

import (
	"errors"
	"testing"
)

func names(ws []*Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name)
	}
	return out
}

func TestEndpointsFollowChanges(t *testing.T) {
	r := New()
	r.PutWorkload(&Workload{Name: "h1", Namespace: "default", ServiceAccount: "httpbin", Labels: map[string]string{"app": "httpbin", "v": "1"}, Sidecar: true})
	r.PutWorkload(&Workload{Name: "h2", Namespace: "default", ServiceAccount: "httpbin", Labels: map[string]string{"app": "httpbin", "v": "2"}, Sidecar: true})
	r.PutWorkload(&Workload{Name: "h3", Namespace: "other", ServiceAccount: "httpbin", Labels: map[string]string{"app": "httpbin"}, Sidecar: true})
	r.PutService(&Service{Name: "httpbin", Namespace: "default", Selector: map[string]string{"app": "httpbin"}, Ports: []Port{{Number: 8000, TargetPort: 80}}})
	r.PutService(&Service{Name: "httpbin-v1", Namespace: "default", Selector: map[string]string{"app": "httpbin", "v": "1"}})
	r.PutService(&Service{Name: "none", Namespace: "default"})

	steps := []struct {
		name string
		do   func()
		svc  string
		want []string
	}{
		{"selector across labels", func() {}, "default/httpbin", []string{"h1", "h2"}},
		{"two-label selector", func() {}, "default/httpbin-v1", []string{"h1"}},
		{"empty selector selects nothing", func() {}, "default/none", nil},
		{"relabel moves workload", func() {
			r.PutWorkload(&Workload{Name: "h2", Namespace: "default", ServiceAccount: "httpbin", Labels: map[string]string{"app": "httpbin", "v": "1"}, Sidecar: true})
		}, "default/httpbin-v1", []string{"h1", "h2"}},
		{"delete workload", func() { r.DeleteWorkload("default", "h1") }, "default/httpbin", []string{"h2"}},
		{"replace service selector", func() {
			r.PutService(&Service{Name: "httpbin-v1", Namespace: "default", Selector: map[string]string{"v": "2"}})
		}, "default/httpbin-v1", nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := r.ServiceGen(st.svc)
			st.do()
			got := names(r.Endpoints(st.svc))
			if len(got) != len(st.want) {
				t.Fatalf("endpoints = %v, want %v", got, st.want)
			}
			for i := range got {
				if got[i] != st.want[i] {
					t.Fatalf("endpoints = %v, want %v", got, st.want)
				}
			}
			if st.name != "selector across labels" && st.name != "two-label selector" && st.name != "empty selector selects nothing" && r.ServiceGen(st.svc) == before {
				t.Error("service generation did not move on a change")
			}
		})
	}
	if got := r.ServicesOf("default", "h2"); len(got) != 1 || got[0].Name != "httpbin" {
		t.Errorf("ServicesOf(h2) = %v", got)
	}
}

func TestRegisterRespectsDeclaredIdentity(t *testing.T) {
	r := New()
	r.Sync(SourceConfig, nil, []*Workload{{Name: "httpbin-1", Namespace: "default", ServiceAccount: "httpbin", Address: "10.0.0.2", Sidecar: true}})
	if _, err := r.Register(&Workload{Name: "httpbin-1", Namespace: "default", ServiceAccount: "sleep", Address: "10.0.0.66"}); !errors.Is(err, ErrIdentityMismatch) {
		t.Fatalf("register as another service account: err = %v", err)
	}
	w, err := r.Register(&Workload{Name: "httpbin-1", Namespace: "default", ServiceAccount: "httpbin", Address: "10.0.0.66"})
	if err != nil || w.Address != "10.0.0.2" {
		t.Fatalf("register declared workload: %+v, %v; want the declared entry kept", w, err)
	}
	if _, err := r.Register(&Workload{Name: "dyn", Namespace: "default", ServiceAccount: "sleep", Address: "10.0.0.7"}); err != nil {
		t.Fatal(err)
	}
	r.Unregister("default", "httpbin-1") // declared: stays
	r.Unregister("default", "dyn")       // registered: goes
	if r.Workload("default", "httpbin-1") == nil || r.Workload("default", "dyn") != nil {
		t.Errorf("unregister removed the wrong entries: %v", names(r.Workloads()))
	}
}

func TestUnregisterIfKeepsANewerRegistration(t *testing.T) {
	r := New()
	old, _ := r.Register(&Workload{Name: "sleep-1", Namespace: "default", ServiceAccount: "sleep", Address: "10.0.0.3"})
	cur, _ := r.Register(&Workload{Name: "sleep-1", Namespace: "default", ServiceAccount: "sleep", Address: "10.0.0.4"})
	r.UnregisterIf(old) // the old stream ends after the sidecar reconnected
	if w := r.Workload("default", "sleep-1"); w != cur {
		t.Fatalf("after the old stream's cleanup: %+v, want the new registration", w)
	}
	r.UnregisterIf(cur)
	if r.Workload("default", "sleep-1") != nil {
		t.Fatal("UnregisterIf(current) kept the workload")
	}
}

func TestSyncReplacesOnlyItsSource(t *testing.T) {
	r := New()
	r.Register(&Workload{Name: "dyn", Namespace: "default", ServiceAccount: "sleep"})
	r.Sync(SourceConfig, []*Service{{Name: "a", Namespace: "default"}}, []*Workload{{Name: "w", Namespace: "default"}})
	r.Sync(SourceConfig, nil, nil)
	if len(r.Services()) != 0 || len(r.Workloads()) != 1 || r.Workload("default", "dyn") == nil {
		t.Errorf("after Sync(nil): services %d workloads %v", len(r.Services()), names(r.Workloads()))
	}
}
