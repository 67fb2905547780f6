package kube

import (
	"os"
	"testing"

	"github.com/meshauth/meshauth/internal/kube/kubetest"
)

// TestMain starts a real etcd and kube-apiserver for the controller,
// TokenReview, registry, CRD and webhook tests (see package kubetest).
func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }
