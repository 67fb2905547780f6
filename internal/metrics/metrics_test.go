package metrics_test

import (
	"bytes"
	"math"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshauth/meshauth/internal/metrics"
)

// parse reads r's output with the Prometheus library's own text parser,
// what a Prometheus server does with a scrape.
func parse(t testing.TB, r *metrics.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	var buf bytes.Buffer
	if err := r.Write(&buf); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatalf("Prometheus cannot parse the output: %v\n%s", err, buf.String())
	}
	return fams
}

func TestExposition(t *testing.T) {
	r := metrics.NewRegistry()
	c := r.Counter("test_requests_total", "Requests.\nSecond line with a \\ backslash.")
	g := r.Gauge("test_expiry_seconds", "Expiry.")
	cv := r.CounterVec("test_handshakes_total", "Handshakes.", "direction", "result", "reason")
	gv := r.GaugeVec("test_active", "Active.", "direction")
	r.CounterVec("test_unused_total", "Never used: not written.", "x")
	r.GaugeFunc("test_func", "Read at scrape.", func() float64 { return 42.5 })
	c.Inc()
	c.Add(2)
	c.Add(0.25)
	g.Set(1.7e9)
	cv.WithLabelValues("inbound", "refused", `say "no"\`).Add(3)
	cv.WithLabelValues("inbound", "ok", "mtls").Inc()
	cv.WithLabelValues("outbound", "refused", "line\nbreak").Inc()
	gv.WithLabelValues("inbound").Inc()
	gv.WithLabelValues("inbound").Inc()
	gv.WithLabelValues("inbound").Dec()
	gv.WithLabelValues("outbound").Add(-2.5)

	fams := parse(t, r)
	if _, ok := fams["test_unused_total"]; ok {
		t.Error("a family without series was written")
	}
	if f := fams["test_requests_total"]; f.GetType() != dto.MetricType_COUNTER || f.GetMetric()[0].GetCounter().GetValue() != 3.25 ||
		f.GetHelp() != "Requests.\nSecond line with a \\ backslash." {
		t.Errorf("counter: %v", f)
	}
	if f := fams["test_expiry_seconds"]; f.GetType() != dto.MetricType_GAUGE || f.GetMetric()[0].GetGauge().GetValue() != 1.7e9 {
		t.Errorf("gauge: %v", f)
	}
	if f := fams["test_func"]; f.GetMetric()[0].GetGauge().GetValue() != 42.5 {
		t.Errorf("gauge func: %v", f)
	}
	got := map[string]float64{}
	for _, m := range fams["test_handshakes_total"].GetMetric() {
		var k []string
		for _, l := range m.GetLabel() {
			k = append(k, l.GetName()+"="+l.GetValue())
		}
		got[strings.Join(k, ",")] = m.GetCounter().GetValue()
	}
	want := map[string]float64{`direction=inbound,reason=say "no"\,result=refused`: 3, "direction=inbound,reason=mtls,result=ok": 1, "direction=outbound,reason=line\nbreak,result=refused": 1}
	if len(got) != len(want) {
		t.Errorf("handshakes: %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("handshakes{%s} = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if m := fams["test_active"].GetMetric(); len(m) != 2 || m[0].GetGauge().GetValue() != 1 || m[1].GetGauge().GetValue() != -2.5 {
		t.Errorf("gauge vec: %v", m)
	}

	// The handler serves the same, with the text format's media type.
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); ct != metrics.ContentType {
		t.Errorf("Content-Type %q", ct)
	}
	// Label pairs by name, as the Prometheus client writes them (scrapers
	// do not care, but grep does).
	if !strings.Contains(rec.Body.String(), "\ntest_handshakes_total{direction=\"inbound\",reason=\"mtls\",result=\"ok\"} 1\n") {
		t.Errorf("handler output:\n%s", rec.Body.String())
	}
	// Families in name order, as the Prometheus client writes them.
	var names []string
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if n, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names = append(names, strings.Fields(n)[0])
		}
	}
	if strings.Join(names, " ") != "test_active test_expiry_seconds test_func test_handshakes_total test_requests_total" {
		t.Errorf("family order: %v", names)
	}
}

func TestSpecialValues(t *testing.T) {
	r := metrics.NewRegistry()
	for name, v := range map[string]float64{"a_nan": math.NaN(), "a_inf": math.Inf(1), "a_minus_inf": math.Inf(-1), "a_small": 1e-300, "a_big": 1.5e300} {
		r.Gauge(name, "x").Set(v)
	}
	fams := parse(t, r)
	if v := fams["a_nan"].GetMetric()[0].GetGauge().GetValue(); !math.IsNaN(v) {
		t.Errorf("NaN read back as %v", v)
	}
	if fams["a_inf"].GetMetric()[0].GetGauge().GetValue() != math.Inf(1) || fams["a_minus_inf"].GetMetric()[0].GetGauge().GetValue() != math.Inf(-1) ||
		fams["a_small"].GetMetric()[0].GetGauge().GetValue() != 1e-300 || fams["a_big"].GetMetric()[0].GetGauge().GetValue() != 1.5e300 {
		t.Errorf("special values: %v", fams)
	}
}

func TestConcurrentCounting(t *testing.T) {
	r := metrics.NewRegistry()
	cv := r.CounterVec("c_total", "x", "k")
	g := r.Gauge("g", "x")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				cv.WithLabelValues([]string{"a", "b"}[i%2]).Inc()
				cv.WithLabelValues("a").Add(0.5)
				g.Add(1)
			}
		}()
	}
	wg.Wait()
	if a, b := cv.WithLabelValues("a").Value(), cv.WithLabelValues("b").Value(); a != 4000+4000 || b != 4000 {
		t.Fatalf("a=%v b=%v", a, b)
	}
	if g.Value() != 8000 {
		t.Fatalf("gauge %v", g.Value())
	}
}

func TestMisuse(t *testing.T) {
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		f()
	}
	r := metrics.NewRegistry()
	r.Counter("x_total", "x")
	mustPanic("registered twice", func() { r.Gauge("x_total", "x") })
	mustPanic("bad metric name", func() { r.Counter("1x", "x") })
	mustPanic("bad label name", func() { r.CounterVec("y_total", "x", "a-b") })
	mustPanic("reserved label name", func() { r.CounterVec("z_total", "x", "__name") })
	mustPanic("wrong label count", func() { r.CounterVec("w_total", "x", "a").WithLabelValues("1", "2") })
	mustPanic("counter decrease", func() { r.Counter("v_total", "x").Add(-1) })
	// A nil registry makes working metrics that are never written.
	var nilReg *metrics.Registry
	c := nilReg.CounterVec("n_total", "x", "a").WithLabelValues("b")
	c.Inc()
	if c.Value() != 1 {
		t.Fatal("metric of a nil registry does not count")
	}
}

func TestRuntimeMetrics(t *testing.T) {
	r := metrics.NewRegistry()
	r.RegisterRuntime()
	fams := parse(t, r)
	for _, name := range []string{"go_goroutines", "go_threads", "go_gc_gogc_percent", "go_memstats_heap_inuse_bytes", "go_memstats_sys_bytes",
		"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"} {
		f, ok := fams[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		v := f.GetMetric()[0]
		x := v.GetGauge().GetValue() + v.GetCounter().GetValue()
		if math.IsNaN(x) || x < 0 {
			t.Errorf("%s = %v", name, x)
		}
	}
	if v := fams["go_goroutines"].GetMetric()[0].GetGauge().GetValue(); v < 1 {
		t.Errorf("go_goroutines %v", v)
	}
	if v := fams["process_resident_memory_bytes"].GetMetric()[0].GetGauge().GetValue(); v < 1<<20 {
		t.Errorf("process_resident_memory_bytes %v", v)
	}
}

// FuzzLabelValue: whatever bytes a label value or help text holds (a
// reason, a mode, a peer's string), the output stays parseable and reads
// back as the same value.
func FuzzLabelValue(f *testing.F) {
	for _, s := range []string{"", "ok", `a"b`, `a\b`, "a\nb", `\n`, "\xff\xfe", "}{=,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8Valid(s) {
			t.Skip("the text format is UTF-8")
		}
		r := metrics.NewRegistry()
		r.CounterVec("f_total", s, "v").WithLabelValues(s).Inc()
		fam := parse(t, r)["f_total"]
		// The format cannot keep a help text's leading blanks (the
		// Prometheus client's output loses them too).
		if fam.GetHelp() != strings.TrimLeft(s, " \t") || fam.GetMetric()[0].GetLabel()[0].GetValue() != s {
			t.Fatalf("%q read back as help %q, label %q", s, fam.GetHelp(), fam.GetMetric()[0].GetLabel()[0].GetValue())
		}
	})
}

func utf8Valid(s string) bool { return utf8.ValidString(s) }
