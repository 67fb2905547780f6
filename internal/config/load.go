package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is one named YAML input (a file on disk or a file sent to
// Admin.ApplyConfig).
type File struct {
	Name    string
	Content []byte
}

// Config is a validated set of objects: the whole of meshauth's policy
// input. Build one with Load or New; treat it as immutable afterwards.
type Config struct {
	// Version counts applied batches; the control plane sets it.
	Version uint64 `json:"version"`

	Mesh                *MeshConfig           `json:"mesh,omitempty"`
	MeshPolicy          *Policy               `json:"meshPolicy,omitempty"`
	Policies            []*Policy             `json:"policies,omitempty"`
	DestinationRules    []*DestinationRule    `json:"destinationRules,omitempty"`
	RbacConfig          *RbacConfig           `json:"rbacConfig,omitempty"`
	ServiceRoles        []*ServiceRole        `json:"serviceRoles,omitempty"`
	ServiceRoleBindings []*ServiceRoleBinding `json:"serviceRoleBindings,omitempty"`
	Sidecars            []*Sidecar            `json:"sidecars,omitempty"`
	Services            []*Service            `json:"services,omitempty"`
	Workloads           []*Workload           `json:"workloads,omitempty"`
	// Authorization is Istio 0.8's authorization instance, if given.
	Authorization *Authorization `json:"authorization,omitempty"`

	// warnings are New's cross-object warnings (Warnings adds the
	// objects' own).
	warnings ErrorList
}

// AuthPolicy returns the mesh-wide default (NONE when unset).
func (c *Config) AuthPolicy() AuthPolicy {
	if c == nil || c.Mesh == nil || c.Mesh.Spec.AuthPolicy == "" {
		return AuthPolicyNone
	}
	return c.Mesh.Spec.AuthPolicy
}

// TrustDomain returns the mesh's trust domain (cluster.local when unset).
func (c *Config) TrustDomain() string {
	if c == nil || c.Mesh == nil || c.Mesh.Spec.TrustDomain == "" {
		return "cluster.local"
	}
	return c.Mesh.Spec.TrustDomain
}

// Objects returns every object in a stable order (kind, namespace, name).
func (c *Config) Objects() []any {
	var out []any
	if c.Mesh != nil {
		out = append(out, c.Mesh)
	}
	if c.MeshPolicy != nil {
		out = append(out, c.MeshPolicy)
	}
	if c.RbacConfig != nil {
		out = append(out, c.RbacConfig)
	}
	for _, o := range c.Policies {
		out = append(out, o)
	}
	for _, o := range c.DestinationRules {
		out = append(out, o)
	}
	for _, o := range c.ServiceRoles {
		out = append(out, o)
	}
	for _, o := range c.ServiceRoleBindings {
		out = append(out, o)
	}
	for _, o := range c.Sidecars {
		out = append(out, o)
	}
	for _, o := range c.Services {
		out = append(out, o)
	}
	for _, o := range c.Workloads {
		out = append(out, o)
	}
	if c.Authorization != nil {
		out = append(out, c.Authorization)
	}
	return out
}

// objectOf returns the common part of any kind.
func objectOf(v any) *Object {
	switch o := v.(type) {
	case *MeshConfig:
		return &o.Object
	case *Policy:
		return &o.Object
	case *DestinationRule:
		return &o.Object
	case *RbacConfig:
		return &o.Object
	case *ServiceRole:
		return &o.Object
	case *ServiceRoleBinding:
		return &o.Object
	case *Sidecar:
		return &o.Object
	case *Service:
		return &o.Object
	case *Workload:
		return &o.Object
	case *Authorization:
		return &o.Object
	}
	return nil
}

// ObjectOf returns the apiVersion/kind/metadata/source of any config object.
func ObjectOf(v any) *Object { return objectOf(v) }

// Load decodes and validates a batch of files into a Config. Either every
// document is valid and the Config is returned, or the error is an
// ErrorList naming every problem with file:line:column.
func Load(files []File) (*Config, error) {
	var objs []any
	var errs ErrorList
	for _, f := range files {
		o, e := ParseFile(f.Name, f.Content)
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	if len(errs) > 0 {
		errs.Sort()
		return nil, errs
	}
	return New(objs)
}

// LoadPaths reads files and directories (every *.yaml, *.yml and *.json
// inside, not recursive, in name order) and Loads them as one batch.
func LoadPaths(paths ...string) (*Config, error) {
	files, err := ReadPaths(paths...)
	if err != nil {
		return nil, err
	}
	return Load(files)
}

// ReadPaths reads files and directories as LoadPaths does, without decoding.
func ReadPaths(paths ...string) ([]File, error) {
	var files []File
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		names := []string{p}
		if st.IsDir() {
			ents, err := os.ReadDir(p)
			if err != nil {
				return nil, fmt.Errorf("config: %w", err)
			}
			names = names[:0]
			for _, e := range ents {
				if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
					continue
				}
				switch filepath.Ext(e.Name()) {
				case ".yaml", ".yml", ".json":
					names = append(names, filepath.Join(p, e.Name()))
				}
			}
			sort.Strings(names)
		}
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				return nil, fmt.Errorf("config: %w", err)
			}
			files = append(files, File{Name: n, Content: b})
		}
	}
	return files, nil
}

// maxDocumentBytes bounds one batch; config files are small and a huge input
// is more likely a mistake (or an attack on the admin API) than a mesh.
const maxDocumentBytes = 32 << 20

// Parse decodes every YAML document in one file and validates each object on
// its own. Cross-object checks (duplicates, conflicts, references) happen in
// New. Empty documents are skipped; `kind: List` documents are expanded.
func Parse(name string, data []byte) ([]any, ErrorList) {
	if len(data) > maxDocumentBytes {
		return nil, ErrorList{{Pos: Pos{File: name, Line: 1, Column: 1}, Msg: fmt.Sprintf("file is %d bytes, more than the %d allowed", len(data), maxDocumentBytes)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var objs []any
	var errs ErrorList
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, syntaxError(name, err))
			break // the decoder cannot resynchronise after a syntax error
		}
		if len(doc.Content) == 0 || isNull(doc.Content[0]) {
			continue
		}
		o, e := parseDocument(name, doc.Content[0], "")
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	return objs, errs
}

// ErrNoObjects is the message for a config file that holds no object.
const ErrNoObjects = "no config object in the file (empty, or only comments or empty documents); " +
	"refused, so a truncated or half-written file never removes config: to remove a file's config, delete the file"

// ParseFile is Parse for a config file (a file in a config directory, a
// file given to meshctl validate or apply): besides Parse's checks, a file
// must define at least one object. A file that is empty or holds only
// comments or empty documents is most likely half-written (an editor that
// truncates, then writes) or truncated by mistake; applying it would
// silently remove every object it defined, mesh-wide mutual TLS included.
func ParseFile(name string, data []byte) ([]any, ErrorList) {
	objs, errs := Parse(name, data)
	if len(objs) == 0 && len(errs) == 0 {
		errs = ErrorList{{Pos: Pos{File: name, Line: 1, Column: 1}, Msg: ErrNoObjects}}
	}
	return objs, errs
}

// syntaxError converts a yaml.v3 error ("yaml: line 3: ...") to an Error.
func syntaxError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
	}
	return &Error{Pos: Pos{File: file, Line: line, Column: 1}, Msg: "invalid YAML: " + msg}
}

// kinds maps a kind to the apiVersions accepted for it and a constructor.
var kinds = map[string]struct {
	versions []string
	new      func() any
}{
	KindMeshConfig:         {[]string{MeshV1alpha1}, func() any { return new(MeshConfig) }},
	KindMeshPolicy:         {[]string{AuthnV1alpha1}, func() any { return new(Policy) }},
	KindPolicy:             {[]string{AuthnV1alpha1}, func() any { return new(Policy) }},
	KindDestinationRule:    {[]string{NetworkingV1a3}, func() any { return new(DestinationRule) }},
	KindRbacConfig:         {[]string{RBACV1alpha1, ConfigV1alpha2}, func() any { return new(RbacConfig) }},
	KindClusterRbacConfig:  {[]string{RBACV1alpha1}, func() any { return new(RbacConfig) }},
	KindServiceRole:        {[]string{RBACV1alpha1, ConfigV1alpha2}, func() any { return new(ServiceRole) }},
	KindServiceRoleBinding: {[]string{RBACV1alpha1, ConfigV1alpha2}, func() any { return new(ServiceRoleBinding) }},
	KindSidecar:            {[]string{NetworkingV1a3}, func() any { return new(Sidecar) }},
	KindService:            {[]string{MeshV1alpha1}, func() any { return new(Service) }},
	KindWorkload:           {[]string{MeshV1alpha1}, func() any { return new(Workload) }},
	KindAuthorization:      {[]string{ConfigV1alpha2}, func() any { return new(Authorization) }},
}

// KnownKinds lists the kinds we accept, for messages and docs.
func KnownKinds() []string {
	var ks []string
	for k := range kinds {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func scalarField(n *yaml.Node, key string) (*yaml.Node, bool) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1], true
		}
	}
	return nil, false
}

func parseDocument(file string, n *yaml.Node, path string) ([]any, ErrorList) {
	d := &decoder{file: file, nodes: map[string]*yaml.Node{}}
	d.nodes[path] = n
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "want a Kubernetes-style object (apiVersion, kind, metadata, spec), got %s", nodeKind(n))
		return nil, d.errs
	}
	apiNode, _ := scalarField(n, "apiVersion")
	kindNode, ok := scalarField(n, "kind")
	if !ok || kindNode.Kind != yaml.ScalarNode || kindNode.Value == "" {
		d.errorf(n, joinPath(path, "kind"), "missing kind (one of %s)", strings.Join(KnownKinds(), ", "))
		return nil, d.errs
	}
	kind := kindNode.Value
	if kind == "List" {
		items, _ := scalarField(n, "items")
		if items == nil || items.Kind != yaml.SequenceNode {
			d.errorf(n, joinPath(path, "items"), "a List needs items")
			return nil, d.errs
		}
		var objs []any
		var errs ErrorList
		for i, it := range items.Content {
			o, e := parseDocument(file, it, fmt.Sprintf("%s[%d]", joinPath(path, "items"), i))
			objs = append(objs, o...)
			errs = append(errs, e...)
		}
		return objs, errs
	}
	if kind == "ConfigMap" && apiNode != nil && apiNode.Value == "v1" {
		mc := parseIstioConfigMap(d, n, path)
		if len(d.errs) > 0 || mc == nil {
			return nil, d.errs
		}
		objectOf(mc).Source = Pos{File: file, Line: n.Line, Column: n.Column}
		return []any{mc}, nil
	}
	k, ok := kinds[kind]
	if !ok && (kind == "rbac" || kind == "rule") && apiNode != nil && apiNode.Value == ConfigV1alpha2 {
		d.errorf(kindNode, joinPath(path, "kind"), "Mixer's %s is not read (meshauth has no Mixer): Istio 0.8 turned RBAC on with an rbac handler and a rule; write an RbacConfig instead (a rule matching destination.namespace == \"default\" is mode: ON_WITH_INCLUSION, inclusion: {namespaces: [default]}); the authorization instance is read", kind)
		return nil, d.errs
	}
	if !ok {
		d.errorf(kindNode, joinPath(path, "kind"), "unsupported kind %q (supported: %s, and Istio's v1 ConfigMap `istio`)", kind, strings.Join(KnownKinds(), ", "))
		return nil, d.errs
	}
	api := ""
	if apiNode != nil {
		api = apiNode.Value
	}
	versionOK := false
	for _, v := range k.versions {
		versionOK = versionOK || v == api
	}
	if !versionOK {
		at := apiNode
		if at == nil {
			at = n
		}
		d.errorf(at, joinPath(path, "apiVersion"), "kind %s needs apiVersion %s, got %q", kind, strings.Join(k.versions, " or "), api)
		return nil, d.errs
	}
	obj := k.new()
	// Name the object in errors once we know it.
	if md, ok := scalarField(n, "metadata"); ok {
		if nm, ok := scalarField(md, "name"); ok {
			ns := ""
			if nsn, ok := scalarField(md, "namespace"); ok && nsn.Value != "" {
				ns = nsn.Value + "/"
			} else if !clusterScoped(kind) {
				ns = "default/"
			}
			d.object = kind + "/" + ns + nm.Value
		}
	}
	d.protoNames = strings.HasSuffix(strings.SplitN(api, "/", 2)[0], ".istio.io")
	d.decode(n, reflectValue(obj), path)
	o := objectOf(obj)
	o.Source = Pos{File: file, Line: n.Line, Column: n.Column}
	if len(d.errs) == 0 {
		validateObject(d, obj, path)
	}
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	d.warns.Sort()
	o.Warnings = d.warns
	return []any{obj}, nil
}
