// Command clusterdns is the test cluster's DNS (test/cluster): it watches
// Services with client-go and answers A queries for
// <service>.<namespace>.svc.<domain> with the ClusterIP, which is all the
// seed needs (`curl httpbin:8000`, the sidecar's
// meshauth-control.istio-system.svc:15012). Other names in the cluster
// domain get NXDOMAIN; names outside it get REFUSED (the cluster has no
// upstream). It runs as a Deployment behind the kubelet's clusterDNS address.
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

func main() {
	listen := flag.String("listen", ":53", "UDP address to answer on")
	domain := flag.String("domain", "cluster.local", "cluster domain")
	probe := flag.Bool("probe", false, "readiness probe: exit 0 if the server on -listen's port answers for kubernetes.default")
	flag.Parse()
	if *probe {
		if err := probeOnce(*listen, *domain); err != nil {
			log.Fatalf("clusterdns: not ready: %v", err)
		}
		return
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		log.Fatalf("clusterdns: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("clusterdns: %v", err)
	}
	f := informers.NewSharedInformerFactory(cs, 0)
	svcs := f.Core().V1().Services()
	lister := svcs.Lister()
	svcs.Informer() // register before Start
	ctx := context.Background()
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), svcs.Informer().HasSynced) {
		log.Fatal("clusterdns: service cache never synced")
	}
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		log.Fatalf("clusterdns: %v", err)
	}
	log.Printf("clusterdns: answering for *.svc.%s on %s", *domain, *listen)
	suffix := ".svc." + strings.TrimSuffix(*domain, ".") + "."
	lookup := func(name string) (netip.Addr, bool, bool) { // addr, in our zone, exists
		name = strings.ToLower(name)
		if !strings.HasSuffix(name, suffix) {
			return netip.Addr{}, strings.HasSuffix(name, "."+strings.TrimPrefix(suffix, ".svc.")), false
		}
		parts := strings.Split(strings.TrimSuffix(name, suffix), ".")
		if len(parts) != 2 {
			return netip.Addr{}, true, false
		}
		s, err := lister.Services(parts[1]).Get(parts[0])
		if err != nil {
			return netip.Addr{}, true, false
		}
		a, err := netip.ParseAddr(s.Spec.ClusterIP)
		if err != nil || s.Spec.ClusterIP == corev1.ClusterIPNone {
			return netip.Addr{}, true, true
		}
		return a, true, true
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			log.Fatalf("clusterdns: %v", err)
		}
		if resp, ok := answer(buf[:n], lookup); ok {
			pc.WriteTo(resp, from)
		}
	}
}

// answer builds the reply to one query; ok is false for unparsable input.
func answer(q []byte, lookup func(string) (netip.Addr, bool, bool)) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil, false
	}
	question, err := p.Question()
	if err != nil {
		return nil, false
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	addr, inZone, exists := lookup(question.Name.String())
	switch {
	case !inZone:
		rh.RCode = dnsmessage.RCodeRefused
	case !exists:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, false
	}
	if err := b.Question(question); err != nil {
		return nil, false
	}
	if err := b.StartAnswers(); err != nil {
		return nil, false
	}
	if exists && addr.Is4() && question.Type == dnsmessage.TypeA {
		rr := dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5}
		if err := b.AResource(rr, dnsmessage.AResource{A: addr.As4()}); err != nil {
			return nil, false
		}
	}
	resp, err := b.Finish()
	return resp, err == nil
}

// probeOnce asks 127.0.0.1 on listen's port for kubernetes.default.svc and
// wants an A record: the Service cache has synced and the socket answers.
func probeOnce(listen, domain string) error {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return err
	}
	name := dnsmessage.MustNewName("kubernetes.default.svc." + strings.TrimSuffix(domain, ".") + ".")
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		return err
	}
	conn, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write(q); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	var p dnsmessage.Parser
	if _, err := p.Start(buf[:n]); err != nil {
		return err
	}
	p.SkipAllQuestions()
	if a, err := p.AllAnswers(); err != nil || len(a) == 0 {
		return errors.New("no answer for " + name.String())
	}
	return nil
}
