package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshauth/meshauth/internal/ca"
	"github.com/meshauth/meshauth/internal/identity"
)

// TokenReviewConfig configures the ServiceAccount token authenticator.
type TokenReviewConfig struct {
	// Client needs "create tokenreviews" (ClusterRole system:auth-delegator).
	Client kubernetes.Interface
	// Audiences the token must be bound to (default ["istio-ca"], what the
	// injector's projected token asks for). A token for any other audience,
	// such as the API server's own, is refused: it may have been handed to
	// another system that could replay it here.
	Audiences []string
	// TrustDomain of the identities (default cluster.local).
	TrustDomain string
	Log         *slog.Logger
}

// TokenReviewAuthenticator proves a caller's identity with its Kubernetes
// ServiceAccount token: the API server checks the signature, expiry,
// audience and that the ServiceAccount (and, for bound tokens, the Pod)
// still exists; the caller gets spiffe://<td>/ns/<ns>/sa/<sa> of that
// account and nothing else. It implements ca.Authenticator.
type TokenReviewAuthenticator struct {
	cfg TokenReviewConfig
	log *slog.Logger
}

// NewTokenReviewAuthenticator fills cfg's defaults.
func NewTokenReviewAuthenticator(cfg TokenReviewConfig) (*TokenReviewAuthenticator, error) {
	if cfg.Client == nil {
		return nil, errors.New("kube: token review authenticator needs a Client")
	}
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []string{TokenAudience}
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &TokenReviewAuthenticator{cfg: cfg, log: cfg.Log.With("component", "tokenreview")}, nil
}

// looksLikeJWT tells ServiceAccount tokens (three base64url parts) from
// join tokens and other bearer credentials, so those go to their own
// authenticator and are never sent to the API server.
func looksLikeJWT(tok string) bool {
	return strings.HasPrefix(tok, "eyJ") && strings.Count(tok, ".") == 2
}

const saPrefix = "system:serviceaccount:"

// Authenticate implements ca.Authenticator.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, cred ca.Credentials) (ca.Caller, error) {
	if !looksLikeJWT(cred.BearerToken) {
		return ca.Caller{}, ca.ErrNoCredential
	}
	tr, err := a.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: cred.BearerToken, Audiences: a.cfg.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		// The API server did not answer: not the caller's fault, and not a
		// reason to let it in.
		return ca.Caller{}, &ca.Error{Kind: ca.KindInternal, Reason: ca.ReasonInternal,
			Msg: "could not review the service account token with the Kubernetes API", Err: err}
	}
	if !tr.Status.Authenticated {
		// The API server's reason ("token has expired", "token audiences
		// ... is invalid for the target audiences") is safe to return.
		msg := tr.Status.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return ca.Caller{}, &ca.Error{Kind: ca.KindUnauthenticated, Reason: ReasonTokenRejected,
			Msg: fmt.Sprintf("kubernetes rejected the service account token: %s (a pod's projected token for audience %q is expected)", msg, strings.Join(a.cfg.Audiences, ","))}
	}
	// Belt and braces: the API server only authenticates a token for the
	// audiences we asked; check it said so.
	if !slices.ContainsFunc(tr.Status.Audiences, func(s string) bool { return slices.Contains(a.cfg.Audiences, s) }) {
		return ca.Caller{}, &ca.Error{Kind: ca.KindUnauthenticated, Reason: ReasonTokenRejected,
			Msg: fmt.Sprintf("service account token is valid for audiences %v, not %v", tr.Status.Audiences, a.cfg.Audiences)}
	}
	user := tr.Status.User.Username
	rest, ok := strings.CutPrefix(user, saPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return ca.Caller{}, &ca.Error{Kind: ca.KindDenied, Reason: ReasonTokenRejected,
			Msg: fmt.Sprintf("token belongs to %q, which is not a service account", user)}
	}
	id, err := identity.New(a.cfg.TrustDomain, ns, sa)
	if err != nil {
		return ca.Caller{}, &ca.Error{Kind: ca.KindDenied, Reason: ReasonTokenRejected, Msg: err.Error()}
	}
	return ca.Caller{ID: id, Method: "k8s_token", Subject: tr.Status.User.UID}, nil
}

// ReasonTokenRejected is the refusal reason for a ServiceAccount token that
// the API server (or this authenticator) did not accept.
const ReasonTokenRejected = "k8s_token_rejected"

var _ ca.Authenticator = (*TokenReviewAuthenticator)(nil)
