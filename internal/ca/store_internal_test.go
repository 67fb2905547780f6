package ca

import (
	"encoding/json"
	"testing"
	"time"
)

// The issuance log's hand-written encoding must be what encoding/json writes.
func TestIssuanceRecordJSON(t *testing.T) {
	for _, r := range []IssuanceRecord{
		{},
		{Serial: "4f3a9b", SPIFFEID: "spiffe://cluster.local/ns/default/sa/sleep", NotBefore: 1, NotAfter: -2, IssuedAt: 1 << 40, Requester: "mtls:4f3a", Authority: 1<<64 - 1},
		{Serial: "4f3a9c", Requester: "join_token:3f2a", GrantedTTL: 86400},
		{Serial: "4f3a9d", GrantedTTL: -1},
		{Serial: "x", SPIFFEID: "spiffe://td/ns/a\"b\\c/sa/<&>", Requester: "k8s_token:\x01\u00e9\u2028"},
	} {
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendIssuanceJSON(nil, &r); string(got) != string(want) {
			t.Errorf("appendIssuanceJSON\n got %s\nwant %s", got, want)
		}
	}
}

func TestTokenRecordJSON(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 123456789, time.UTC)
	for _, r := range []TokenRecord{
		{},
		{ID: "3f2a9c1b0d4e", SPIFFEID: "spiffe://cluster.local/ns/default/sa/sleep", ExpiresAt: now.Add(time.Hour), Uses: 5, Used: 3, CreatedAt: now},
		{ID: "x\"", SPIFFEID: "spiffe://td/ns/\u00e9/sa/b", ExpiresAt: now.In(time.FixedZone("x", 3600)), Uses: -1, Used: 1 << 40, CreatedAt: now.Round(time.Second)},
	} {
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.appendJSON(nil)
		if err != nil || string(got) != string(want) {
			t.Errorf("appendJSON\n got %s (%v)\nwant %s", got, err, want)
		}
	}
}
