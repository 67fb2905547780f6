package main

import (
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

func testLookup(name string) (netip.Addr, bool, bool) {
	switch name {
	case "httpbin.default.svc.cluster.local.":
		return netip.MustParseAddr("10.96.0.20"), true, true
	case "nope.default.svc.cluster.local.":
		return netip.Addr{}, true, false
	}
	return netip.Addr{}, false, false
}

func query(t testing.TB, name string, typ dnsmessage.Type) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 42, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestAnswer(t *testing.T) {
	tests := []struct {
		name    string
		typ     dnsmessage.Type
		rcode   dnsmessage.RCode
		answers int
	}{
		{"httpbin.default.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, 1},
		{"httpbin.default.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, 0},
		{"nope.default.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, 0},
		{"example.com.", dnsmessage.TypeA, dnsmessage.RCodeRefused, 0},
	}
	for _, tt := range tests {
		resp, ok := answer(query(t, tt.name, tt.typ), testLookup)
		if !ok {
			t.Fatalf("%s: no answer", tt.name)
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if m.ID != 42 || !m.Response || m.RCode != tt.rcode || len(m.Answers) != tt.answers {
			t.Errorf("%s %v: id %d response %v rcode %v answers %d; want 42 true %v %d", tt.name, tt.typ, m.ID, m.Response, m.RCode, len(m.Answers), tt.rcode, tt.answers)
		}
		if tt.answers == 1 {
			if a, ok := m.Answers[0].Body.(*dnsmessage.AResource); !ok || netip.AddrFrom4(a.A).String() != "10.96.0.20" {
				t.Errorf("%s: answer %v, want 10.96.0.20", tt.name, m.Answers[0].Body)
			}
		}
	}
	// A response is never answered (no reflection loops).
	r, _ := answer(query(t, "httpbin.default.svc.cluster.local.", dnsmessage.TypeA), testLookup)
	if _, ok := answer(r, testLookup); ok {
		t.Error("answered a response")
	}
}

// FuzzAnswer: any datagram gets no answer or a well-formed response with
// the query's ID (the DNS server parses bytes from every pod).
func FuzzAnswer(f *testing.F) {
	f.Add(query(f, "httpbin.default.svc.cluster.local.", dnsmessage.TypeA))
	f.Add(query(f, "example.com.", dnsmessage.TypeAAAA))
	f.Add([]byte{0, 1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, q []byte) {
		resp, ok := answer(q, testLookup)
		if !ok {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("unparsable response %x: %v", resp, err)
		}
		var p dnsmessage.Parser
		h, _ := p.Start(q)
		if m.ID != h.ID || !m.Response {
			t.Fatalf("response id %d response %v for query id %d", m.ID, m.Response, h.ID)
		}
	})
}
