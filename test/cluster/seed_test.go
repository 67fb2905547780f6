package cluster

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshauth/meshauth/internal/walkthrough"
	"github.com/meshauth/meshauth/test/cluster/seedreplay"
)

// replayer returns a Replayer on the shared cluster printing into buf, and
// a function that fails t with the transcript if any check failed.
func replayer(t *testing.T) (*seedreplay.Replayer, func()) {
	t.Helper()
	var buf bytes.Buffer
	p := &seedreplay.Replayer{C: cluster(t), R: walkthrough.NewReporter(&buf)}
	return p, func() {
		t.Helper()
		t.Logf("transcript:\n%s", buf.String())
		if f := p.R.Failures(); len(f) > 0 {
			t.Errorf("%d of %d checks failed: %s", len(f), len(f)+p.R.Passes(), strings.Join(f, "; "))
		}
	}
}

// TestSeed replays the seed literally on the cluster in Secret mode (the
// seed's istio.<sa> Secrets mounted at /etc/certs): install, kube-inject,
// every verification command and every curl, legacy namespace included.
func TestSeed(t *testing.T) {
	p, done := replayer(t)
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	p.Seed(ctx)
}
