package metrics

import (
	"bytes"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"time"
)

// RegisterRuntime adds the Go runtime's and the process's metrics under the
// names the Prometheus client's Go and process collectors use (the subset
// dashboards and the tests read: goroutines, threads, heap, stacks, GC
// target, resident memory, CPU, file descriptors). They are read at each
// scrape, from runtime/metrics (no stop-the-world) and /proc/self.
func (r *Registry) RegisterRuntime() {
	rt := func(name string) func() float64 {
		s := []metrics.Sample{{Name: name}}
		return func() float64 {
			metrics.Read(s)
			switch s[0].Value.Kind() {
			case metrics.KindUint64:
				return float64(s[0].Value.Uint64())
			case metrics.KindFloat64:
				return s[0].Value.Float64()
			}
			return math.NaN()
		}
	}
	r.GaugeFunc("go_goroutines", "Number of goroutines that currently exist.", func() float64 { return float64(runtime.NumGoroutine()) })
	r.GaugeFunc("go_threads", "Number of OS threads created.", func() float64 { n, _ := runtime.ThreadCreateProfile(nil); return float64(n) })
	r.GaugeFunc("go_gc_gogc_percent", "Heap size target percentage configured by the user, otherwise 100.", rt("/gc/gogc:percent"))
	r.GaugeFunc("go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64.", rt("/gc/gomemlimit:bytes"))
	r.CounterFunc("go_gc_cycles_total", "Count of completed GC cycles.", rt("/gc/cycles/total:gc-cycles"))
	r.GaugeFunc("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use.", rt("/memory/classes/heap/objects:bytes"))
	r.GaugeFunc("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use (spans with at least one object).", func() float64 {
		return sum("/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes")
	})
	r.GaugeFunc("go_memstats_heap_released_bytes", "Number of heap bytes released to the OS.", rt("/memory/classes/heap/released:bytes"))
	r.GaugeFunc("go_memstats_stack_inuse_bytes", "Number of bytes in use by the stack allocator.", rt("/memory/classes/heap/stacks:bytes"))
	r.GaugeFunc("go_memstats_gc_sys_bytes", "Number of bytes used for garbage collection system metadata.", rt("/memory/classes/metadata/other:bytes"))
	r.GaugeFunc("go_memstats_sys_bytes", "Number of bytes obtained from the OS.", rt("/memory/classes/total:bytes"))
	r.GaugeFunc("process_resident_memory_bytes", "Resident memory size in bytes.", func() float64 { return procStatus("VmRSS:") })
	r.GaugeFunc("process_virtual_memory_bytes", "Virtual memory size in bytes.", func() float64 { return procStatus("VmSize:") })
	r.CounterFunc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", procCPU)
	r.GaugeFunc("process_open_fds", "Number of open file descriptors.", func() float64 {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			return math.NaN()
		}
		return float64(len(ents))
	})
	start := float64(time.Now().Unix())
	r.GaugeFunc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", func() float64 { return start })
}

func sum(names ...string) float64 {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	var t float64
	for _, x := range s {
		if x.Value.Kind() == metrics.KindUint64 {
			t += float64(x.Value.Uint64())
		}
	}
	return t
}

// procStatus returns a "kB" field of /proc/self/status in bytes.
func procStatus(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return math.NaN()
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte(field)); ok {
			f := bytes.Fields(v)
			if len(f) > 0 {
				if n, err := strconv.ParseFloat(string(f[0]), 64); err == nil {
					return n * 1024
				}
			}
		}
	}
	return math.NaN()
}

// procCPU returns utime+stime of /proc/self/stat in seconds (USER_HZ is 100
// on every Linux architecture Go supports).
func procCPU() float64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return math.NaN()
	}
	// Fields after the command name, which may hold spaces: ") S ppid ...".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return math.NaN()
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return math.NaN()
	}
	u, err1 := strconv.ParseFloat(string(f[11]), 64)
	s, err2 := strconv.ParseFloat(string(f[12]), 64)
	if err1 != nil || err2 != nil {
		return math.NaN()
	}
	return (u + s) / 100
}
