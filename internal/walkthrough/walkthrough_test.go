package walkthrough

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

func TestExpectMatch(t *testing.T) {
	tests := []struct {
		name string
		want Expect
		obs  Observation
		ok   bool
	}{
		{"200 exit 0", Expect{Code: "200"}, Observation{Stdout: "200\n"}, true},
		{"200 wanted, 503 seen", Expect{Code: "200"}, Observation{Stdout: "503\n"}, false},
		{"000 exit 56", Expect{Code: "000", Exit: 56}, Observation{Stdout: "000\n", Exit: 56}, true},
		{"000 exit 56 wanted, exit 52 seen", Expect{Code: "000", Exit: 56}, Observation{Stdout: "000\n", Exit: 52}, false},
		{"any failure, 60 seen", Expect{Code: "000", AnyFailure: true}, Observation{Stdout: "000\n", Exit: 60}, true},
		{"any failure, success seen", Expect{Code: "000", AnyFailure: true}, Observation{Stdout: "000\n"}, false},
		{"legacy plaintext accepted", Expect{Code: "000", Exit: 56}, Observation{Stdout: "200\n"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.want.Match(tt.obs); got != tt.ok {
				t.Errorf("Expect%+v.Match(%v) = %v, want %v", tt.want, tt.obs, got, tt.ok)
			}
		})
	}
}

// TestRunObservesExit runs real processes: the exit status is observed, not
// assumed, and a non-zero exit is an observation rather than an error.
func TestRunObservesExit(t *testing.T) {
	o, err := Run(exec.Command("sh", "-c", "echo 000; exit 56"))
	if err != nil {
		t.Fatal(err)
	}
	if o.Code() != "000" || o.Exit != 56 {
		t.Errorf("Run = %v, want 000 (exit 56)", o)
	}
	if _, err := Run(exec.Command("/nonexistent/curl")); err == nil {
		t.Error("Run of a missing binary: want an error, got none")
	}
}

func TestReporter(t *testing.T) {
	var buf bytes.Buffer
	r := NewReporter(&buf)
	r.Curl("ok step", "sh -c 'echo 200'", exec.Command("sh", "-c", "echo 200"), Expect{Code: "200"})
	r.Curl("bad step", "sh -c 'echo 200'", exec.Command("sh", "-c", "echo 200"), Expect{Code: "000", Exit: 56})
	if got := r.Failures(); len(got) != 1 || got[0] != "bad step" {
		t.Errorf("Failures() = %v, want [bad step]", got)
	}
	out := buf.String()
	for _, want := range []string{"$ sh -c 'echo 200'", "  PASS  ok step: observed 200 (exit 0)", "  FAIL  bad step: observed 200 (exit 0); expected 000 (exit 56)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestQuote(t *testing.T) {
	got := Quote([]string{"curl", "httpbin:8000/headers", "-w", `%{http_code}\n`})
	if want := `curl httpbin:8000/headers -w '%{http_code}\n'`; got != want {
		t.Errorf("Quote = %q, want %q", got, want)
	}
}
