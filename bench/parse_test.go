package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const wrkSample = `Running 5s test @ http://127.0.0.1:40000/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   712.31us  301.22us   9.81ms   93.10%
    Req/Sec    22.53k     1.02k   24.11k    78.00%
  112094 requests in 5.00s, 128.34MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  22412.87
Transfer/sec:     25.67MB
`

func TestParseWrk(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		rps     float64
		reqs    int64
		errs    int64
		wantErr bool
	}{
		{name: "errors and non-2xx", in: wrkSample, rps: 22412.87, reqs: 112094, errs: 10},
		{name: "clean", in: "  10 requests in 1.00s, 1KB read\nRequests/sec:     10.00\n", rps: 10, reqs: 10},
		{name: "no summary", in: "unable to connect to 127.0.0.1:1 Connection refused\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseWrk(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if r.RPS != tt.rps || r.Requests != tt.reqs || r.Errors != tt.errs {
				t.Errorf("got %+v, want rps %v reqs %d errors %d", r, tt.rps, tt.reqs, tt.errs)
			}
		})
	}
}

func FuzzParseWrk(f *testing.F) {
	f.Add(wrkSample)
	f.Add("Requests/sec: 1e400\n")
	f.Add("Socket errors: connect 99999999999999999999, read 0, write 0, timeout 0\nRequests/sec: 1\n")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseWrk(s)
		if err == nil && (math.IsNaN(r.RPS) || r.RPS < 0) {
			t.Errorf("parsed a negative or NaN rate %v from %q", r.RPS, s)
		}
	})
}

func TestReadStatSelf(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != os.Getppid() {
		t.Errorf("ppid = %d, want %d", st.ppid, os.Getppid())
	}
}

func TestWriteSection(t *testing.T) {
	section := markerBegin + "\n" + sectionHeader + "\nnew\n" + markerEnd + "\n"
	tests := []struct {
		name, before string
		want         []string // substrings, in order
	}{
		{name: "new file", before: "", want: []string{"# Benchmarks", "new"}},
		{name: "append after others", before: "# Benchmarks\n\n## CA issuance\n\nca text\n", want: []string{"ca text", "new"}},
		{name: "replace keeps neighbours", before: "# B\n\n## CA issuance\nx\n\n" + markerBegin + "\nold\n" + markerEnd + "\n\nhand notes\n\n## Control plane\ny\n",
			want: []string{"## CA issuance", "new", "hand notes", "## Control plane"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
			if tt.before != "" {
				os.WriteFile(path, []byte(tt.before), 0o644)
			}
			if err := writeSection(path, section); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			got := string(b)
			if strings.Contains(got, "old") {
				t.Errorf("old section kept:\n%s", got)
			}
			at := 0
			for _, w := range tt.want {
				i := strings.Index(got[at:], w)
				if i < 0 {
					t.Fatalf("%q missing or out of order in:\n%s", w, got)
				}
				at += i + len(w)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{7}, 7},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median(nil) should be NaN (unmeasured)")
	}
}
