package ca

import (
	"encoding/json"
	"testing"
)

// The issuance log's hand-written encoding must be what encoding/json writes.
func TestIssuanceRecordJSON(t *testing.T) {
	for _, r := range []IssuanceRecord{
		{},
		{Serial: "4f3a9b", SPIFFEID: "spiffe://cluster.local/ns/default/sa/sleep", NotBefore: 1, NotAfter: -2, IssuedAt: 1 << 40, Requester: "mtls:4f3a", Authority: 1<<64 - 1},
		{Serial: "x", SPIFFEID: "spiffe://td/ns/a\"b\\c/sa/<&>", Requester: "k8s_token:\x01\u00e9\u2028"},
	} {
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.appendJSON(nil); string(got) != string(want) {
			t.Errorf("appendJSON\n got %s\nwant %s", got, want)
		}
	}
}
