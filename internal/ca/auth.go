package ca

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"strings"

	"github.com/meshauth/meshauth/internal/identity"
)

// Credentials is what a caller presented, as the API layer saw it.
type Credentials struct {
	// PeerCertificates are the TLS client certificates as sent, leaf first,
	// not yet verified (the server requests but does not verify them, since
	// bootstrap callers have none and the bundle changes under rotation).
	PeerCertificates []*x509.Certificate
	// BearerToken is the "authorization: Bearer ..." value, if any.
	BearerToken string
}

// ErrNoCredential is returned by an Authenticator when the credentials hold
// nothing it understands, so the next one is tried.
var ErrNoCredential = errors.New("ca: no credential for this authenticator")

// Authenticator proves a caller's identity from its credentials. It returns
// the Caller, ErrNoCredential, or a refusal (*Error with KindUnauthenticated
// or KindDenied) saying why the credential it understood is not good.
//
// The CA provides MTLSAuthenticator and JoinTokenAuthenticator; the
// Kubernetes integration adds one that checks ServiceAccount tokens with a
// TokenReview and returns Caller{Method: "k8s_token", ...}.
type Authenticator interface {
	Authenticate(ctx context.Context, cred Credentials) (Caller, error)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context, cred Credentials) (Caller, error)

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(ctx context.Context, cred Credentials) (Caller, error) {
	return f(ctx, cred)
}

// Authenticate tries each authenticator in turn and returns the first answer
// that is not ErrNoCredential.
func Authenticate(ctx context.Context, cred Credentials, auths ...Authenticator) (Caller, error) {
	for _, a := range auths {
		c, err := a.Authenticate(ctx, cred)
		if errors.Is(err, ErrNoCredential) {
			continue
		}
		return c, err
	}
	return Caller{}, refuse(KindUnauthenticated, ReasonUnauthenticated,
		"no credential: present your current workload certificate (mTLS) or \"authorization: Bearer <join token>\"")
}

// MTLSAuthenticator proves the identity of a caller's current certificate:
// valid now, chaining to the current bundle, not revoked. That is renewal:
// the caller may only get a certificate for the same identity.
func (c *CA) MTLSAuthenticator() Authenticator {
	return AuthenticatorFunc(func(ctx context.Context, cred Credentials) (Caller, error) {
		if len(cred.PeerCertificates) == 0 {
			return Caller{}, ErrNoCredential
		}
		id, err := c.VerifyPeer(cred.PeerCertificates)
		if err != nil {
			return Caller{}, &Error{Kind: KindUnauthenticated, Reason: ReasonCallerCert,
				Msg: "client certificate refused (" + identity.Reason(err) + "): " + err.Error(), Err: err}
		}
		leaf := cred.PeerCertificates[0]
		return Caller{ID: id, Method: "mtls", Subject: identity.SerialHex(leaf), presented: leaf}, nil
	})
}

// VerifyPeer verifies a presented chain against the current bundle at the
// CA clock's now, with revocation. The control plane's other services
// (Discovery) use it to learn who a sidecar is.
//
// Results are cached per chain and bundle version: a renewing sidecar keeps
// one connection and sends many requests over it, and a chain verification
// costs as much as a signature. Any bundle change (a revocation, a root
// leaving) bumps the version and so invalidates the cache; validity times
// are re-checked on every call.
func (c *CA) VerifyPeer(chain []*x509.Certificate) (identity.ID, error) {
	b := c.Bundle()
	now := c.cfg.Clock()
	if len(chain) == 0 {
		return b.Identity().Verify(chain, now)
	}
	h := sha256.New()
	for _, x := range chain {
		h.Write(x.Raw)
	}
	var key [32]byte
	h.Sum(key[:0])
	leaf := chain[0]
	c.peerMu.Lock()
	e, ok := c.peerCache[key]
	c.peerMu.Unlock()
	if ok && e.version == b.Version && !now.Before(leaf.NotBefore) && !now.After(leaf.NotAfter) {
		return e.id, nil
	}
	id, err := b.Identity().Verify(chain, now)
	if err != nil {
		return id, err
	}
	c.peerMu.Lock()
	if len(c.peerCache) >= 4096 {
		clear(c.peerCache) // crude bound; a miss only costs one verification
	}
	c.peerCache[key] = peerEntry{id: id, version: b.Version}
	c.peerMu.Unlock()
	return id, nil
}

type peerEntry struct {
	id      identity.ID
	version uint64
}

// JoinTokenAuthenticator proves an identity with a join token from
// CreateJoinToken. It only checks the token; the use is spent in the same
// transaction that logs the issuance, so two concurrent callers can never
// both spend the last use.
func (c *CA) JoinTokenAuthenticator() Authenticator {
	return AuthenticatorFunc(func(ctx context.Context, cred Credentials) (Caller, error) {
		if !strings.HasPrefix(cred.BearerToken, JoinTokenPrefix) {
			return Caller{}, ErrNoCredential
		}
		h := hashToken(cred.BearerToken)
		rec, err := c.store.GetToken(h)
		if err != nil {
			return Caller{}, internal("read join token", err)
		}
		if rec == nil {
			return Caller{}, refuse(KindUnauthenticated, ReasonTokenUnknown, "join token is not known to this CA (create one with `meshctl token create`)")
		}
		if err := rec.usable(c.cfg.Clock()); err != nil {
			return Caller{}, err
		}
		id, err := identity.Parse(rec.SPIFFEID)
		if err != nil {
			return Caller{}, internal("stored join token identity", err)
		}
		return Caller{ID: id, Method: "join_token", Subject: rec.ID, tokenHash: h}, nil
	})
}
