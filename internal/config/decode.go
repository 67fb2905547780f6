package config

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem in a config file: where, which field, and what.
type Error struct {
	Pos
	// Path is the field path inside the document, e.g.
	// "spec.peers[0].mtls.mode"; empty for document-level errors.
	Path string
	// Object is kind/namespace/name when known.
	Object string
	Msg    string
}

func (e *Error) Error() string {
	var sb strings.Builder
	sb.WriteString(e.Pos.String())
	sb.WriteString(": ")
	if e.Object != "" {
		sb.WriteString(e.Object)
		sb.WriteString(": ")
	}
	if e.Path != "" {
		sb.WriteString(e.Path)
		sb.WriteString(": ")
	}
	sb.WriteString(e.Msg)
	return sb.String()
}

// ErrorList is every error in a batch. A batch with any error is rejected
// whole.
type ErrorList []*Error

func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Sort orders errors by file, line, column so output is stable.
func (l ErrorList) Sort() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i], l[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// decoder turns yaml.v3 nodes into Go values strictly: unknown fields,
// duplicate keys and wrong types are errors with a position and a path. We
// walk nodes ourselves instead of using yaml.Unmarshal (or sigs.k8s.io/yaml,
// which converts to JSON first and so loses every position) because the
// error has to point at the exact line and column of the bad field, and
// because a bare `mtls:` must be told apart from an absent mtls key.
type decoder struct {
	file   string
	object string
	errs   ErrorList
	// nodes records the node of every path decoded, so that validation can
	// report the position of the field it rejects.
	nodes map[string]*yaml.Node
	// warns are accepted but flagged (Object.Warnings).
	warns ErrorList
	// protoNames accepts proto field names in an Istio kind's spec.
	protoNames bool
}

// at returns the position of path, or of its nearest recorded parent when
// the field itself is absent (a missing required field is reported where
// its parent is).
func (d *decoder) at(path string) *yaml.Node {
	for {
		if n, ok := d.nodes[path]; ok {
			return n
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return d.nodes[""]
		}
		path = path[:i]
	}
}

// fail records a validation error at path.
func (d *decoder) fail(path, format string, args ...any) {
	d.errorf(d.at(path), path, format, args...)
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, d.newError(n, path, format, args...))
}

// warn records a warning at path (validation).
func (d *decoder) warn(path, format string, args ...any) {
	d.warnf(d.at(path), path, format, args...)
}

func (d *decoder) warnf(n *yaml.Node, path, format string, args ...any) {
	d.warns = append(d.warns, d.newError(n, path, format, args...))
}

func (d *decoder) newError(n *yaml.Node, path, format string, args ...any) *Error {
	e := &Error{Pos: Pos{File: d.file}, Path: path, Object: d.object, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	return e
}

var (
	rawType  = reflect.TypeOf(Raw{})
	posType  = reflect.TypeOf(Pos{})
	metaType = reflect.TypeOf(Meta{})
)

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return "a scalar " + strconv.Quote(n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "a document"
}

// decode fills v (addressable) from n.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	// Resolve aliases (bounded: yaml.v3 already refuses alias bombs).
	for depth := 0; n.Kind == yaml.AliasNode && n.Alias != nil; depth++ {
		if depth > 32 {
			d.errorf(n, path, "alias chain too deep")
			return
		}
		n = n.Alias
	}
	if d.nodes != nil {
		d.nodes[path] = n
	}
	if v.Type() == rawType {
		v.Set(reflect.ValueOf(Raw{Node: n}))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		// A present key allocates the value even when it is null: that is
		// how `mtls:` (bare) is told apart from no mtls key.
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		if isNull(n) {
			return
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if isNull(n) {
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.errorf(n, path, "want a list, got %s", nodeKind(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if isNull(n) {
			return
		}
		if n.Kind != yaml.MappingNode {
			d.errorf(n, path, "want a mapping, got %s", nodeKind(n))
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		last := d.lastKeys(n)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				d.errorf(k, path, "keys must be strings, got %s", nodeKind(k))
				continue
			}
			if j := last[k.Value]; j != i {
				d.duplicate(k, n.Content[j], path+"."+k.Value)
				continue
			}
			ev := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, ev, path+"["+k.Value+"]")
			m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), ev)
		}
		v.Set(m)
	case reflect.String:
		if isNull(n) {
			return
		}
		if n.Kind != yaml.ScalarNode {
			d.errorf(n, path, "want a string, got %s", nodeKind(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if isNull(n) {
			return
		}
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			d.errorf(n, path, "want true or false, got %s", nodeKind(n))
			return
		}
		b, _ := strconv.ParseBool(strings.ToLower(n.Value))
		v.SetBool(b)
	case reflect.Uint32, reflect.Uint16, reflect.Uint64, reflect.Int, reflect.Int64, reflect.Int32:
		if isNull(n) {
			return
		}
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			d.errorf(n, path, "want a number, got %s", nodeKind(n))
			return
		}
		// Int32 fields are Istio's signed numbers: a negative value is
		// decoded so that validation reports it in Istio's words.
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil || (i < 0 && v.Kind() != reflect.Int32) || (v.Kind() == reflect.Uint32 && i > math.MaxUint32) ||
			(v.Kind() == reflect.Uint16 && i > math.MaxUint16) || (v.Kind() == reflect.Int32 && (i > math.MaxInt32 || i < math.MinInt32)) {
			d.errorf(n, path, "number %s out of range", n.Value)
			return
		}
		if v.CanUint() {
			v.SetUint(uint64(i))
		} else {
			v.SetInt(i)
		}
	default:
		d.errorf(n, path, "internal: cannot decode into %s", v.Type())
	}
}

// field is one settable YAML key of a struct, including those of embedded
// (inline) structs.
type field struct {
	name  string
	index []int
}

func structFields(t reflect.Type) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || f.Type == posType && name == "" {
			continue
		}
		if f.Anonymous || strings.Contains(opts, "inline") {
			for _, sub := range structFields(f.Type) {
				out = append(out, field{name: sub.name, index: append([]int{i}, sub.index...)})
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name[:1]) + f.Name[1:]
		}
		out = append(out, field{name: name, index: []int{i}})
	}
	return out
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	// A struct may carry its own position in a field named Pos.
	if pf := v.FieldByName("Pos"); pf.IsValid() && pf.Type() == posType {
		pf.Set(reflect.ValueOf(Pos{File: d.file, Line: n.Line, Column: n.Column}))
	}
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "want a mapping, got %s", nodeKind(n))
		return
	}
	fields := structFields(v.Type())
	// Istio reads its specs with jsonpb, which takes a field's proto name
	// (peer_is_optional) as well as its JSON name (peerIsOptional); the
	// object's own envelope (apiVersion, metadata) is Kubernetes' and
	// takes only the JSON name.
	protoNames := d.protoNames && v.Type() != metaType && !embedsObject(v.Type())
	// Resolve every key to its field first. A key written twice keeps its
	// last value (Istio's YAML parser does the same), with a warning; a
	// field written under both names keeps the JSON name's value, as
	// jsonpb does.
	type entry struct {
		key, val *yaml.Node
		f        *field
		proto    bool
	}
	var entries []*entry
	byField := map[string]*entry{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "keys must be strings, got %s", nodeKind(k))
			continue
		}
		e := &entry{key: k, val: val}
		for j := range fields {
			if fields[j].name == k.Value {
				e.f = &fields[j]
				break
			}
		}
		if e.f == nil && protoNames {
			for j := range fields {
				if protoName(fields[j].name) == k.Value {
					e.f, e.proto = &fields[j], true
					break
				}
			}
		}
		if e.f == nil {
			d.errorf(k, joinPath(path, k.Value), "unknown field %q%s", k.Value, suggest(k.Value, fields))
			continue
		}
		prev := byField[e.f.name]
		switch {
		case prev == nil:
		case prev.key.Value == k.Value:
			d.duplicate(prev.key, k, joinPath(path, k.Value))
			prev.f = nil
		case prev.proto && !e.proto:
			d.warnf(prev.key, joinPath(path, prev.key.Value), "%q and %q are the same field; the value of %q (line %d) is used, as Istio's jsonpb does", prev.key.Value, k.Value, k.Value, k.Line)
			prev.f = nil
		default:
			d.warnf(k, joinPath(path, k.Value), "%q and %q are the same field; the value of %q (line %d) is used, as Istio's jsonpb does", k.Value, prev.key.Value, prev.key.Value, prev.key.Line)
			continue
		}
		byField[e.f.name] = e
		entries = append(entries, e)
	}
	for _, e := range entries {
		if e.f != nil {
			d.decode(e.val, v.FieldByIndex(e.f.index), joinPath(path, e.key.Value))
		}
	}
}

// lastKeys maps each scalar key of a mapping node to the index of its last
// occurrence.
func (d *decoder) lastKeys(n *yaml.Node) map[string]int {
	last := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode {
			last[k.Value] = i
		}
	}
	return last
}

// duplicate warns about a key written twice in one mapping: the later
// value wins, as in Istio (ghodss/yaml over non-strict yaml.v2).
func (d *decoder) duplicate(first, later *yaml.Node, path string) {
	d.warnf(first, path, "duplicate key %q: the later value (line %d) is used, as Istio's YAML parser does", first.Value, later.Line)
}

// protoName is the proto field name of a lowerCamelCase JSON name
// (peerIsOptional -> peer_is_optional, http1MaxPendingRequests ->
// http1_max_pending_requests).
func protoName(json string) string {
	var sb strings.Builder
	for _, r := range json {
		if r >= 'A' && r <= 'Z' {
			sb.WriteByte('_')
			r += 'a' - 'A'
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func embedsObject(t reflect.Type) bool {
	f, ok := t.FieldByName("Object")
	return ok && f.Anonymous
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest names the known fields, and the likely one when the key is a
// near miss (a typo or wrong case), so the user knows what to write.
func suggest(key string, fields []field) string {
	var names []string
	for _, f := range fields {
		if strings.EqualFold(f.name, key) {
			return fmt.Sprintf(" (did you mean %q?)", f.name)
		}
		names = append(names, f.name)
	}
	for _, f := range names {
		if editDistance(f, key) <= 2 {
			return fmt.Sprintf(" (did you mean %q?)", f)
		}
	}
	return " (known fields: " + strings.Join(names, ", ") + ")"
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func itoa(i int) string { return strconv.Itoa(i) }

func reflectValue(ptr any) reflect.Value { return reflect.ValueOf(ptr).Elem() }
