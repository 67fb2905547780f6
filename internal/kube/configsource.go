package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/control"
)

// ReasonInvalidConfig is the reason of the Warning event an invalid config
// object gets (`kubectl get events --field-selector reason=InvalidConfig`).
const ReasonInvalidConfig = "InvalidConfig"

// ConfigSourceConfig configures the config source.
type ConfigSourceConfig struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// MeshNamespace and MeshConfigMap name the seed's mesh ConfigMap
	// (istio-system/istio) whose "mesh" key holds authPolicy (default
	// istio-system and istio).
	MeshNamespace, MeshConfigMap string
	// OnChange, if set, is called with each newly accepted config (tests).
	OnChange func(*config.Config)
	// Debounce collects bursts of changes into one rebuild (default 100ms).
	Debounce time.Duration
	Log      *slog.Logger
}

// ConfigSource turns the config CRDs (and the mesh ConfigMap) into meshauth
// config. Each object is validated on its own and then with the others, by
// the same code `meshctl validate` runs; an invalid object is reported with
// a Warning event on it and left out, never applied, while every valid
// object still is.
//
// It is the control plane's control.ConfigSource in Kubernetes mode: Watch
// hands each changed set of valid objects to the config plane, which
// combines it with the applied config, validates the whole and installs it
// (or keeps the last good config), as it does for a config directory.
type ConfigSource struct {
	cfg     ConfigSourceConfig
	log     *slog.Logger
	dyn     dynamicinformer.DynamicSharedInformerFactory
	kube    informers.SharedInformerFactory
	stores  map[string]cache.Store // by kind
	cmStore cache.Store
	synced  []cache.InformerSynced
	kick    chan struct{}
	update  func([]any, error)

	mu       sync.Mutex
	rejected map[string]string // "Kind/ns/name" -> message
	reported map[string]string // uid -> resourceVersion already reported
	last     []byte
}

var _ control.ConfigSource = (*ConfigSource)(nil)

// NewConfigSource fills cfg's defaults and sets up the informers.
func NewConfigSource(cfg ConfigSourceConfig) (*ConfigSource, error) {
	if cfg.Client == nil || cfg.Dynamic == nil {
		return nil, errors.New("kube: config source needs Client and Dynamic")
	}
	if cfg.MeshNamespace == "" {
		cfg.MeshNamespace = "istio-system"
	}
	if cfg.MeshConfigMap == "" {
		cfg.MeshConfigMap = "istio"
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &ConfigSource{
		cfg: cfg, log: cfg.Log.With("component", "kube-config"),
		dyn:    dynamicinformer.NewDynamicSharedInformerFactory(cfg.Dynamic, 10*time.Minute),
		stores: map[string]cache.Store{}, kick: make(chan struct{}, 1),
		rejected: map[string]string{}, reported: map[string]string{},
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.changed() },
		UpdateFunc: func(any, any) { s.changed() },
		DeleteFunc: func(any) { s.changed() },
	}
	for _, k := range ConfigKinds {
		inf := s.dyn.ForResource(k.GVR()).Informer()
		_, _ = inf.AddEventHandler(h)
		s.stores[k.Kind] = inf.GetStore()
		s.synced = append(s.synced, inf.HasSynced)
	}
	s.kube = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 10*time.Minute, informers.WithNamespace(cfg.MeshNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + cfg.MeshConfigMap }))
	cm := s.kube.Core().V1().ConfigMaps().Informer()
	_, _ = cm.AddEventHandler(h)
	s.cmStore = cm.GetStore()
	s.synced = append(s.synced, cm.HasSynced)
	return s, nil
}

func (s *ConfigSource) changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Name names the source in the control plane's logs.
func (s *ConfigSource) Name() string { return "kubernetes" }

// Load returns nothing: the cluster's objects arrive through Watch once
// the informers have synced, so the control plane serves CSRs meanwhile
// (even before the CRDs are installed).
func (s *ConfigSource) Load() ([]any, error) { return nil, nil }

// LoadsLate says the control plane must send no snapshot before the first
// content Watch hands over (control.LateSource).
func (s *ConfigSource) LoadsLate() bool { return true }

// Watch watches until ctx is done, calling update with the valid objects
// whenever they change. The CRDs must be installed: an informer for a
// resource the API server does not serve retries (and logs) until it
// appears.
func (s *ConfigSource) Watch(ctx context.Context, update func([]any, error)) error {
	s.update = update
	s.dyn.Start(ctx.Done())
	s.kube.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return fmt.Errorf("kube: config source: caches did not sync (are the CRDs installed? kubectl apply -f install/kubernetes/crds.yaml): %w", ctx.Err())
	}
	s.rebuild(ctx)
	for {
		select {
		case <-ctx.Done():
			s.dyn.Shutdown()
			s.kube.Shutdown()
			return nil
		case <-s.kick:
			// Debounce: one rebuild for a burst of kubectl applies.
			select {
			case <-ctx.Done():
				continue
			case <-time.After(s.cfg.Debounce):
			}
			s.rebuild(ctx)
		}
	}
}

// Rejected returns the objects left out and why, keyed Kind/namespace/name.
func (s *ConfigSource) Rejected() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.rejected))
	for k, v := range s.rejected {
		out[k] = v
	}
	return out
}

// candidate is one API object on its way into the config.
type candidate struct {
	key  string // Kind/ns/name as config.Object.Key prints it
	u    *unstructured.Unstructured
	doc  []byte
	objs []any
}

func (s *ConfigSource) rebuild(ctx context.Context) {
	objs := map[string][]*unstructured.Unstructured{}
	for _, k := range ConfigKinds {
		for _, item := range s.stores[k.Kind].List() {
			if u, ok := item.(*unstructured.Unstructured); ok {
				objs[k.Kind] = append(objs[k.Kind], u)
			}
		}
	}
	var mesh *corev1.ConfigMap
	if item, ok, _ := s.cmStore.GetByKey(s.cfg.MeshNamespace + "/" + s.cfg.MeshConfigMap); ok {
		mesh, _ = item.(*corev1.ConfigMap)
	}
	res := BuildConfig(objs, mesh)
	for _, r := range res.Invalid {
		if r.Object != nil {
			s.report(ctx, r.Object, r.Message)
		} else {
			s.log.Warn("mesh ConfigMap is invalid and not applied", "configmap", s.cfg.MeshNamespace+"/"+s.cfg.MeshConfigMap, "error", r.Message)
		}
	}
	if res.Err != nil {
		s.log.Error("config rejected; the last good config stays", "error", res.Err)
		return
	}
	s.mu.Lock()
	s.rejected = res.Rejected()
	same := bytes.Equal(res.YAML, s.last)
	s.last = append([]byte(nil), res.YAML...)
	s.mu.Unlock()
	if !same {
		s.log.Info("config from cluster", "objects", res.Objects, "rejected", len(res.Invalid))
		if s.update != nil {
			s.update(res.Objs, nil)
		}
	}
	if s.cfg.OnChange != nil {
		s.cfg.OnChange(res.Config)
	}
}

// Invalid is one object left out of the config, and why.
type Invalid struct {
	Key     string                     // Kind/namespace/name
	Object  *unstructured.Unstructured // nil for the mesh ConfigMap
	Message string
}

// BuildResult is what BuildConfig made of the cluster's objects.
type BuildResult struct {
	// Config holds every valid object (never nil unless Err is set).
	Config *config.Config
	// Objs are the valid objects, sorted by key.
	Objs []any
	// YAML is the valid objects as one stream, sorted by key (the source
	// compares it to tell a change).
	YAML    []byte
	Objects int
	Invalid []Invalid
	// Err is set when the valid objects could not be combined and no
	// object was to blame (nothing is applied then).
	Err error
}

// Rejected returns Invalid as a map from key to message.
func (r *BuildResult) Rejected() map[string]string {
	m := map[string]string{}
	for _, i := range r.Invalid {
		m[i.Key] = i.Message
	}
	return m
}

// BuildConfig validates the config objects (by kind) and the mesh ConfigMap
// and returns the valid ones as a config. Each object is checked alone, then
// all together; objects named by a combined error are dropped and the rest
// tried again, so one bad object never takes the good ones down.
func BuildConfig(objs map[string][]*unstructured.Unstructured, mesh *corev1.ConfigMap) *BuildResult {
	res := &BuildResult{}
	var cands []*candidate
	for _, k := range ConfigKinds {
		for _, u := range objs[k.Kind] {
			c := &candidate{key: objectKey(k.Kind, u.GetNamespace(), u.GetName()), u: u}
			doc, err := toConfigYAML(u)
			if err != nil {
				res.Invalid = append(res.Invalid, Invalid{c.key, u, err.Error()})
				continue
			}
			c.doc = doc
			parsed, errs := config.Parse(sourceName(k, u), doc)
			if len(errs) > 0 {
				res.Invalid = append(res.Invalid, Invalid{c.key, u, errs.Error()})
				continue
			}
			c.objs = parsed
			cands = append(cands, c)
		}
	}
	if mc := meshObject(mesh); mc != nil {
		parsed, errs := config.Parse(mc.key, mc.doc)
		if len(errs) > 0 {
			res.Invalid = append(res.Invalid, Invalid{mc.key, nil, errs.Error()})
		} else {
			mc.objs = parsed
			cands = append(cands, mc)
		}
	}
	cfg := &config.Config{}
	for len(cands) > 0 {
		var all []any
		for _, c := range cands {
			all = append(all, c.objs...)
		}
		var err error
		cfg, err = config.New(all)
		if err == nil {
			break
		}
		var list config.ErrorList
		if !errors.As(err, &list) {
			res.Err = err
			return res
		}
		bad := map[string][]string{}
		for _, e := range list {
			bad[e.Object] = append(bad[e.Object], e.Error())
		}
		kept := cands[:0]
		for _, c := range cands {
			if msgs, ok := bad[c.key]; ok {
				res.Invalid = append(res.Invalid, Invalid{c.key, c.u, strings.Join(msgs, "\n")})
				continue
			}
			kept = append(kept, c)
		}
		if len(kept) == len(cands) {
			// No error named an object we hold: refuse rather than loop.
			res.Err = err
			return res
		}
		cands = kept
		cfg = &config.Config{}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].key < cands[j].key })
	var out bytes.Buffer
	var all []any
	for _, c := range cands {
		out.WriteString("---\n")
		out.Write(c.doc)
		all = append(all, c.objs...)
	}
	res.Config, res.Objs, res.YAML, res.Objects = cfg, all, out.Bytes(), len(cands)
	return res
}

func objectKey(kind, ns, name string) string {
	if ns == "" {
		return kind + "/" + name
	}
	return kind + "/" + ns + "/" + name
}

// sourceName is the "file" config errors cite: the kubectl resource name.
func sourceName(k ConfigKind, u *unstructured.Unstructured) string {
	n := k.Plural + "." + k.Group + "/" + u.GetName()
	if ns := u.GetNamespace(); ns != "" {
		n = ns + "/" + n
	}
	return n
}

// toConfigYAML keeps what meshauth reads (apiVersion, kind, name,
// namespace, labels, spec) and drops what the API server adds.
func toConfigYAML(u *unstructured.Unstructured) ([]byte, error) {
	meta := map[string]any{"name": u.GetName()}
	if ns := u.GetNamespace(); ns != "" {
		meta["namespace"] = ns
	}
	if l := u.GetLabels(); len(l) > 0 {
		meta["labels"] = l
	}
	obj := map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind(), "metadata": meta}
	if spec, ok := u.Object["spec"]; ok {
		obj["spec"] = spec
	}
	return yaml.Marshal(obj)
}

// meshObject converts the seed's mesh ConfigMap ("mesh" key, Istio's
// MeshConfig YAML) to a MeshConfig object, keeping the keys meshauth uses;
// Istio's other mesh settings (mixer, proxy defaults) are ignored.
func meshObject(cm *corev1.ConfigMap) *candidate {
	if cm == nil {
		return nil
	}
	key := config.KindMeshConfig + "/mesh"
	var mesh map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["mesh"]), &mesh); err != nil {
		// config.Parse reports the syntax error with its position.
		return &candidate{key: key, doc: []byte(cm.Data["mesh"])}
	}
	spec := map[string]any{}
	for _, k := range []string{"authPolicy", "trustDomain", "mtlsExcludedServices"} {
		if v, ok := mesh[k]; ok {
			spec[k] = v
		}
	}
	doc, _ := yaml.Marshal(map[string]any{
		"apiVersion": config.MeshV1alpha1, "kind": config.KindMeshConfig,
		"metadata": map[string]any{"name": "mesh"}, "spec": spec,
	})
	return &candidate{key: key, doc: doc}
}

// report records a Warning event on the object, once per resourceVersion,
// so `kubectl describe` and `kubectl get events` show why it is not applied.
func (s *ConfigSource) report(ctx context.Context, u *unstructured.Unstructured, msg string) {
	s.log.Warn("invalid config object not applied", "object", u.GetKind()+"/"+u.GetNamespace()+"/"+u.GetName(), "error", msg)
	s.mu.Lock()
	if s.reported[string(u.GetUID())] == u.GetResourceVersion() {
		s.mu.Unlock()
		return
	}
	s.reported[string(u.GetUID())] = u.GetResourceVersion()
	s.mu.Unlock()
	ns := u.GetNamespace()
	if ns == "" {
		ns = metav1.NamespaceDefault // events of cluster-scoped objects
	}
	if len(msg) > 1000 {
		msg = msg[:1000] + "..."
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: u.GetName() + ".", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(),
			UID: u.GetUID(), ResourceVersion: u.GetResourceVersion(),
		},
		Reason:         ReasonInvalidConfig,
		Message:        "not applied: " + msg,
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "meshauth-control"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	if _, err := s.cfg.Client.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		s.log.Error("record event", "error", err)
	}
}
