package engine

import (
	"fmt"
	"strings"

	"github.com/meshauth/meshauth/internal/config"
	"github.com/meshauth/meshauth/internal/registry"
)

// Warning is valid config that probably does not do what was meant: a
// Policy target or DestinationRule host that names no service, a port the
// service does not have. Istio applied such objects silently to nothing.
type Warning struct {
	Pos    config.Pos `json:"pos"`
	Object string     `json:"object"`
	Msg    string     `json:"msg"`
}

func (w Warning) String() string {
	return fmt.Sprintf("%s: %s: warning: %s", w.Pos, w.Object, w.Msg)
}

// Lint returns the config's own warnings (config.Config.Warnings: a
// duplicate key, an Istio 0.8 form, a key that never matches), then checks
// the config against the registry and returns a warning for every
// reference to a service or port that does not exist.
func (e *Engine) Lint() []Warning {
	return append(ConfigWarnings(e.ix.cfg), e.LintReferences()...)
}

// ConfigWarnings converts the config's own warnings.
func ConfigWarnings(cfg *config.Config) []Warning {
	var out []Warning
	for _, w := range cfg.Warnings() {
		msg := w.Msg
		if w.Path != "" {
			msg = w.Path + ": " + msg
		}
		out = append(out, Warning{w.Pos, w.Object, msg})
	}
	return out
}

// LintReferences returns a warning for every reference to a service or
// port that does not exist in the registry.
func (e *Engine) LintReferences() []Warning {
	var out []Warning
	cfg := e.ix.cfg
	hasPort := func(svc *registry.Service, ps config.PortSelector) bool {
		for _, p := range svc.Ports {
			if (ps.Number != 0 && p.Number == ps.Number) || (ps.Name != "" && p.Name == ps.Name) {
				return true
			}
		}
		return false
	}
	for _, p := range cfg.Policies {
		for _, t := range p.Spec.Targets {
			pos := t.Pos
			if pos.File == "" {
				pos = p.Source
			}
			svc := e.reg.Service(p.Metadata.Namespace, t.Name)
			if svc == nil {
				out = append(out, Warning{pos, p.Key(), fmt.Sprintf("target %q is not a service in namespace %s: this part of the policy applies to nothing", t.Name, p.Metadata.Namespace)})
				continue
			}
			for _, ps := range t.Ports {
				if !hasPort(svc, ps) {
					out = append(out, Warning{pos, p.Key(), fmt.Sprintf("service %s has no port %s: the port target applies to nothing", svc.Key(), ps.String())})
				}
			}
		}
	}
	for _, dr := range cfg.DestinationRules {
		h := dr.FQDN()
		if strings.HasPrefix(h, "*") {
			continue
		}
		svc := e.LookupService(h, dr.Metadata.Namespace)
		if svc == nil || svc.FQDN() != h {
			out = append(out, Warning{dr.Source, dr.Key(), fmt.Sprintf("host %s is not a service in the mesh: the rule applies to nothing (an external host needs no rule here)", h)})
			continue
		}
		if tp := dr.Spec.TrafficPolicy; tp != nil {
			for _, pl := range tp.PortLevelSettings {
				if pl.Port != nil && !hasPort(svc, *pl.Port) {
					out = append(out, Warning{dr.Source, dr.Key(), fmt.Sprintf("service %s has no port %s: those port-level settings apply to nothing", svc.Key(), pl.Port.String())})
				}
			}
		}
	}
	// Rules for the same host in several namespaces: one wins for every
	// client; say which.
	for _, svc := range e.reg.Services() {
		drs := e.ix.drExact[svc.FQDN()]
		if len(drs) < 2 {
			continue
		}
		win := e.ix.destinationRule(svc.FQDN(), svc.Namespace)
		for _, dr := range drs {
			if dr != win {
				out = append(out, Warning{dr.Source, dr.Key(), fmt.Sprintf("host %s is also configured by %s, which wins for every client: this rule has no effect", svc.FQDN(), win.Key())})
			}
		}
	}
	if rc := cfg.RbacConfig; rc != nil {
		for _, t := range []*config.RbacTarget{rc.Spec.Inclusion, rc.Spec.Exclusion} {
			if t == nil {
				continue
			}
			for _, s := range t.Services {
				if strings.Contains(s, "*") {
					continue
				}
				if svc := e.LookupService(s, "default"); svc == nil {
					out = append(out, Warning{rc.Source, rc.Key(), fmt.Sprintf("service %s is not in the mesh", s)})
				}
			}
		}
	}
	return out
}
