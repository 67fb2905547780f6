package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// ErrNoToken is returned (wrapped) when the agent needs its bootstrap
// credential and has none. It is a permanent error: retrying cannot help
// until someone writes a token into the token file.
var ErrNoToken = errors.New("no valid certificate and no join token (--token or --token-file)")

// TokenSource is the agent's bootstrap credential: a join token, or on
// Kubernetes a projected service-account token. A fixed token (--token) never
// changes; a token file (--token-file) is read again on every use, so that
// an operator can write a fresh join token into it after a revocation
// (`meshctl token create ... > FILE`) and kubelet's rotation of a projected
// token is followed, without restarting the sidecar. Check notices a change
// and wakes whoever waits on Changed.
type TokenSource struct {
	static string
	file   string

	mu      sync.Mutex
	last    string
	changed chan struct{}
}

// NewTokenSource returns a source for --token (static) or --token-file
// (file, which wins). The file must be readable now; an empty token is
// allowed (a sidecar that reuses its certificate needs none).
func NewTokenSource(static, file string) (*TokenSource, error) {
	t := &TokenSource{static: strings.TrimSpace(static), file: file, changed: make(chan struct{})}
	tok, err := t.read()
	if err != nil {
		return nil, err
	}
	t.last = tok
	return t, nil
}

// File returns the token file's path ("" for a fixed token).
func (t *TokenSource) File() string {
	if t == nil {
		return ""
	}
	return t.file
}

func (t *TokenSource) read() (string, error) {
	if t.file == "" {
		return t.static, nil
	}
	b, err := os.ReadFile(t.file)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Token returns the current token, reading the file again. It wraps
// ErrNoToken when there is none.
func (t *TokenSource) Token() (string, error) {
	if t == nil {
		return "", ErrNoToken
	}
	tok, err := t.read()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoToken, err)
	}
	t.note(tok)
	if tok == "" {
		if t.file != "" {
			return "", fmt.Errorf("%w: token file %s is empty", ErrNoToken, t.file)
		}
		return "", ErrNoToken
	}
	return tok, nil
}

// Check reads the token file again and reports whether its token changed
// since the last read; a change wakes Changed. The agent calls it on a timer
// and the sidecar on SIGHUP.
func (t *TokenSource) Check() bool {
	if t == nil || t.file == "" {
		return false
	}
	tok, err := t.read()
	if err != nil {
		return false
	}
	return t.note(tok)
}

func (t *TokenSource) note(tok string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tok == t.last {
		return false
	}
	t.last = tok
	close(t.changed)
	t.changed = make(chan struct{})
	return true
}

// Changed returns a channel closed at the next change of the token.
func (t *TokenSource) Changed() <-chan struct{} {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}
