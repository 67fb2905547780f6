// Package metrics holds the sidecar's Prometheus metrics: counters and
// gauges, alone or by label values, the Go runtime's and the process's
// gauges, and the text exposition format (version 0.0.4) that Prometheus
// scrapes from the admin and --prometheus endpoints.
//
// Why not the Prometheus client library: the sidecar used a small part of
// it (counters, gauges, a registry, promhttp) and it was about 1.2 MB of the
// sidecar binary, which every sidecar maps into memory (BENCHMARKS.md,
// "Idle sidecar memory"). The control plane keeps the library. The output
// is checked against the library's own text parser (metrics_test.go).
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// value is a float64 updated atomically: whole non-negative increments
// (every counter on the hot path) go to n without a CAS loop, everything
// else to the float bits.
type value struct {
	n    atomic.Uint64
	bits atomic.Uint64
}

func (v *value) add(d float64) {
	if d >= 0 && d < 1<<53 && d == math.Trunc(d) {
		v.n.Add(uint64(d))
		return
	}
	for {
		old := v.bits.Load()
		if v.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

func (v *value) get() float64 { return float64(v.n.Load()) + math.Float64frombits(v.bits.Load()) }

// Counter only goes up.
type Counter struct{ v value }

// Inc adds 1.
func (c *Counter) Inc() { c.v.n.Add(1) }

// Add adds d; a negative d panics, as in the Prometheus client.
func (c *Counter) Add(d float64) {
	if d < 0 {
		panic("metrics: counter cannot decrease")
	}
	c.v.add(d)
}

// Value returns the current value.
func (c *Counter) Value() float64 { return c.v.get() }

// Gauge goes up and down.
type Gauge struct{ bits atomic.Uint64 }

// Set sets the gauge to x.
func (g *Gauge) Set(x float64) { g.bits.Store(math.Float64bits(x)) }

// Add adds d (which may be negative).
func (g *Gauge) Add(d float64) {
	for {
		old := g.bits.Load()
		if g.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

// Inc adds 1; Dec subtracts 1.
func (g *Gauge) Inc() { g.Add(1) }
func (g *Gauge) Dec() { g.Add(-1) }

// Value returns the current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

// family is one metric name: its help, type, label names and series.
type family struct {
	name, help, typ string
	labels          []string
	order           []int          // indexes of labels in name order, as written
	fn              func() float64 // GaugeFunc/CounterFunc: read at scrape time

	mu     sync.RWMutex
	series map[string]*series // key: label values joined by 0xff
}

type series struct {
	values []string
	c      *Counter
	g      *Gauge
}

func (f *family) get(lvs []string) *series {
	if len(lvs) != len(f.labels) {
		panic(fmt.Sprintf("metrics: %s has labels %v, got %d values", f.name, f.labels, len(lvs)))
	}
	key := strings.Join(lvs, "\xff")
	f.mu.RLock()
	s := f.series[key]
	f.mu.RUnlock()
	if s != nil {
		return s
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s = f.series[key]; s == nil {
		s = &series{values: slices.Clone(lvs)}
		if f.typ == "counter" {
			s.c = &Counter{}
		} else {
			s.g = &Gauge{}
		}
		f.series[key] = s
	}
	return s
}

// CounterVec is a counter per combination of label values.
type CounterVec struct{ f *family }

// WithLabelValues returns the counter for these label values (in the order
// of the label names), creating it at 0.
func (v *CounterVec) WithLabelValues(lvs ...string) *Counter { return v.f.get(lvs).c }

// GaugeVec is a gauge per combination of label values.
type GaugeVec struct{ f *family }

// WithLabelValues returns the gauge for these label values, creating it at 0.
func (v *GaugeVec) WithLabelValues(lvs ...string) *Gauge { return v.f.get(lvs).g }

// Registry is a set of metric families, written in name order. A nil
// *Registry is valid: metrics made from it are kept but never written.
type Registry struct {
	mu  sync.Mutex
	fam map[string]*family
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{fam: map[string]*family{}} }

func (r *Registry) add(name, help, typ string, labels []string, fn func() float64) *family {
	if !validName(name) {
		panic("metrics: invalid metric name " + strconv.Quote(name))
	}
	for _, l := range labels {
		if !validName(l) || strings.HasPrefix(l, "__") || strings.Contains(l, ":") {
			panic("metrics: invalid label name " + strconv.Quote(l) + " of " + name)
		}
	}
	f := &family{name: name, help: help, typ: typ, labels: slices.Clone(labels), fn: fn, series: map[string]*series{}}
	// The Prometheus client writes label pairs sorted by name, whatever
	// order they were declared in; so do we.
	for i := range labels {
		f.order = append(f.order, i)
	}
	slices.SortStableFunc(f.order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })
	if r == nil {
		return f
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.fam[name]; dup {
		panic("metrics: " + name + " registered twice")
	}
	r.fam[name] = f
	return f
}

// Counter registers a counter without labels.
func (r *Registry) Counter(name, help string) *Counter {
	return r.add(name, help, "counter", nil, nil).get(nil).c
}

// Gauge registers a gauge without labels.
func (r *Registry) Gauge(name, help string) *Gauge {
	return r.add(name, help, "gauge", nil, nil).get(nil).g
}

// CounterVec registers a counter family with these label names. A family
// with no series yet is not written.
func (r *Registry) CounterVec(name, help string, labels ...string) *CounterVec {
	return &CounterVec{r.add(name, help, "counter", labels, nil)}
}

// GaugeVec registers a gauge family with these label names.
func (r *Registry) GaugeVec(name, help string, labels ...string) *GaugeVec {
	return &GaugeVec{r.add(name, help, "gauge", labels, nil)}
}

// GaugeFunc registers a gauge whose value fn returns at each scrape.
func (r *Registry) GaugeFunc(name, help string, fn func() float64) {
	r.add(name, help, "gauge", nil, fn)
}

// CounterFunc registers a counter whose value fn returns at each scrape.
func (r *Registry) CounterFunc(name, help string, fn func() float64) {
	r.add(name, help, "counter", nil, fn)
}

// Write writes every family with at least one series in the text format:
// families by name, label pairs by name, series by label values.
func (r *Registry) Write(w io.Writer) error {
	r.mu.Lock()
	fams := make([]*family, 0, len(r.fam))
	for _, f := range r.fam {
		fams = append(fams, f)
	}
	r.mu.Unlock()
	slices.SortFunc(fams, func(a, b *family) int { return strings.Compare(a.name, b.name) })
	bw := bufio.NewWriter(w)
	var buf []byte
	for _, f := range fams {
		buf = f.appendText(buf[:0])
		if _, err := bw.Write(buf); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func (f *family) appendText(b []byte) []byte {
	type row struct {
		values []string // in name order
		v      float64
	}
	var rows []row
	if f.fn != nil {
		rows = append(rows, row{v: f.fn()})
	} else {
		f.mu.RLock()
		for _, s := range f.series {
			r := row{values: make([]string, len(f.order))}
			for i, j := range f.order {
				r.values[i] = s.values[j]
			}
			if s.c != nil {
				r.v = s.c.Value()
			} else {
				r.v = s.g.Value()
			}
			rows = append(rows, r)
		}
		f.mu.RUnlock()
	}
	if len(rows) == 0 {
		return b
	}
	slices.SortFunc(rows, func(x, y row) int { return slices.Compare(x.values, y.values) })
	b = append(b, "# HELP "...)
	b = append(b, f.name...)
	b = append(b, ' ')
	b = appendEscaped(b, f.help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, f.name...)
	b = append(b, ' ')
	b = append(b, f.typ...)
	b = append(b, '\n')
	for _, r := range rows {
		b = append(b, f.name...)
		if len(f.labels) > 0 {
			b = append(b, '{')
			for i, j := range f.order {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, f.labels[j]...)
				b = append(b, `="`...)
				b = appendEscaped(b, r.values[i], true)
				b = append(b, '"')
			}
			b = append(b, '}')
		}
		b = append(b, ' ')
		b = appendFloat(b, r.v)
		b = append(b, '\n')
	}
	return b
}

// appendEscaped escapes a HELP text (backslash, newline) or a label value
// (also the double quote), as the text format wants.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

func appendFloat(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, 1):
		return append(b, "+Inf"...)
	case math.IsInf(f, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64)
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// ContentType is the text format's media type.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Handler serves the registry in the text format.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		r.Write(w)
	})
}
