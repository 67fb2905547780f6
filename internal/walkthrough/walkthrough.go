// Package walkthrough runs the seed's commands (curl, openssl, meshctl) and
// reports what they did: the command line as a user would type it, the HTTP
// code and exit status OBSERVED, and whether that matches what the seed
// walkthrough shows. `meshctl demo` prints these reports; nothing here ever
// prints an expected value as if it had been seen.
package walkthrough

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Observation is what one command did.
type Observation struct {
	// Stdout and Stderr as printed. For the seed's curl, Stdout is the
	// `-w '%{http_code}\n'` output, e.g. "200" or "000".
	Stdout, Stderr string
	// Exit is the exit status (0 on success), the seed's "command terminated
	// with exit code 56".
	Exit int
}

// Code is the trimmed stdout, the HTTP code for the seed's curl lines.
func (o Observation) Code() string { return strings.TrimSpace(o.Stdout) }

// String renders an observation the way the seed shows one.
func (o Observation) String() string {
	if o.Exit == 0 {
		return fmt.Sprintf("%s (exit 0)", o.Code())
	}
	return fmt.Sprintf("%s (exit %d)", o.Code(), o.Exit)
}

// Expect is what the seed walkthrough shows for a command.
type Expect struct {
	// Code is the HTTP code curl prints; "" means not checked.
	Code string
	// Exit is the exit status; AnyFailure accepts any non-zero status
	// instead (the seed's 77 came from a curl image without a CA file; curl
	// here reports what it reports).
	Exit       int
	AnyFailure bool
}

// The seed's curl outcomes, shared by `meshctl demo`, test/e2e and the
// Kubernetes replay (test/cluster).
var (
	// SeedOK: "200".
	SeedOK = Expect{Code: "200"}
	// SeedReset: "000" and "command terminated with exit code 56"
	// (plain text to a STRICT sidecar, or from a pod without one).
	SeedReset = Expect{Code: "000", Exit: 56}
	// SeedTLSFailed: "000" and a non-zero exit (the seed's 77 came from a
	// curl image without a CA file; curl here reports what it reports).
	SeedTLSFailed = Expect{Code: "000", AnyFailure: true}
)

// Match reports whether o is what the seed expects.
func (e Expect) Match(o Observation) bool {
	if e.Code != "" && o.Code() != e.Code {
		return false
	}
	if e.AnyFailure {
		return o.Exit != 0
	}
	return o.Exit == e.Exit
}

// String renders the expectation.
func (e Expect) String() string {
	exit := fmt.Sprintf("exit %d", e.Exit)
	if e.AnyFailure {
		exit = "a non-zero exit"
	}
	if e.Code == "" {
		return exit
	}
	return fmt.Sprintf("%s (%s)", e.Code, exit)
}

// Run executes cmd and records its output and exit status. Only a failure to
// start the command at all (or a canceled context) is an error: a non-zero
// exit is an observation.
func Run(cmd *exec.Cmd) (Observation, error) {
	var stdout, stderr bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &stderr
	}
	err := cmd.Run()
	o := Observation{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		o.Exit = ee.ExitCode()
	default:
		return o, fmt.Errorf("walkthrough: run %s: %w", Quote(cmd.Args), err)
	}
	return o, nil
}

// Quote renders argv as a shell line a user can paste: arguments with
// spaces, quotes or shell metacharacters are single-quoted.
func Quote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~!%") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// Reporter prints steps and results and counts failures. It is safe for use
// from one goroutine at a time plus Progress's ticker.
type Reporter struct {
	mu       sync.Mutex
	w        io.Writer
	failures []string
	passes   int
}

// NewReporter prints to w.
func NewReporter(w io.Writer) *Reporter { return &Reporter{w: w} }

// Section prints a heading, mirroring the seed's headings.
func (r *Reporter) Section(title string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, "\n== %s\n", title)
}

// Note prints an explanatory line (the seed's prose).
func (r *Reporter) Note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, "# "+format+"\n", args...)
}

// Printf prints raw text.
func (r *Reporter) Printf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, format, args...)
}

// Command prints "$ <line>" before a command runs.
func (r *Reporter) Command(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, "$ %s\n", line)
}

// Output prints a command's output as the seed shows it: stdout, then
// "command terminated with exit code N" for a failure.
func (r *Reporter) Output(o Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := strings.TrimRight(o.Stdout, "\n"); s != "" {
		fmt.Fprintln(r.w, s)
	}
	// stderr matters when something failed (curl is -s, so it is quiet
	// otherwise): the user sees why, not only that.
	if s := strings.TrimRight(o.Stderr, "\n"); s != "" {
		fmt.Fprintln(r.w, s)
	}
	// kubectl exec prints this line itself (on stderr).
	if line := fmt.Sprintf("command terminated with exit code %d", o.Exit); o.Exit != 0 && !strings.Contains(o.Stderr, line) {
		fmt.Fprintln(r.w, line)
	}
}

// Check records whether an observation matched the seed and prints one line
// with a clear mark. It returns ok.
func (r *Reporter) Check(what string, ok bool, observed, expected string) bool {
	if strings.TrimSpace(observed) == "" {
		observed = "(no output)"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		r.passes++
		fmt.Fprintf(r.w, "  PASS  %s: observed %s; expected %s\n", what, observed, expected)
	} else {
		r.failures = append(r.failures, what)
		fmt.Fprintf(r.w, "  FAIL  %s: observed %s; expected %s\n", what, observed, expected)
	}
	return ok
}

// Fail records a step that could not be observed at all (a piece did not
// start, a file is missing) with the reason.
func (r *Reporter) Fail(what string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, what)
	fmt.Fprintf(r.w, "  FAIL  %s: %v\n", what, err)
}

// Failures returns the names of failed checks, in order.
func (r *Reporter) Failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.failures...)
}

// Passes returns how many checks passed.
func (r *Reporter) Passes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passes
}

// Curl runs a seed curl command, prints it and its output, and checks the
// result against the seed. display is the line shown to the user (it may
// name the pod or the environment), cmd the command actually run.
func (r *Reporter) Curl(what, display string, cmd *exec.Cmd, want Expect) (Observation, bool) {
	r.Command(display)
	o, err := Run(cmd)
	if err != nil {
		r.Fail(what, err)
		return o, false
	}
	r.Output(o)
	return o, r.Check(what, want.Match(o), o.String(), want.String())
}

// Progress prints "msg ..." and, when done is called, "ok (1.2s)" or the
// error. The duration is information for the reader, never a pass/fail
// criterion.
func (r *Reporter) Progress(msg string) (done func(detail string, err error)) {
	r.Printf("%s ... ", msg)
	start := time.Now()
	return func(detail string, err error) {
		took := time.Since(start).Round(100 * time.Millisecond)
		if err != nil {
			r.Printf("FAILED after %s\n", took)
			r.Fail(msg, err)
			return
		}
		if detail != "" {
			r.Printf("ok (%s, %s)\n", detail, took)
		} else {
			r.Printf("ok (%s)\n", took)
		}
	}
}

// WaitFor polls f every 100ms until it returns nil or ctx ends, returning
// f's last error. It is how the demo waits for processes to come up.
func WaitFor(ctx context.Context, f func() error) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-t.C:
		}
	}
}
