package engine

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/meshauth/meshauth/internal/policy"
	"github.com/meshauth/meshauth/internal/registry"
)

// TLSCheckRow is one service port in `meshctl tls-check`.
type TLSCheckRow struct {
	Host   string                             `json:"host"`
	Port   uint32                             `json:"port"`
	Status string                             `json:"status"` // OK or CONFLICT
	Server ModeDecision[policy.ServerMode]    `json:"server"`
	Client ModeDecision[policy.ClientTLSMode] `json:"client"`
	// Problem says why a CONFLICT is one.
	Problem string `json:"problem,omitempty"`
}

// TLSCheck compares, for each port of each given service (every service
// when svcs is nil), the server mode its sidecars enforce with the client
// mode sidecars use to call it. PERMISSIVE servers are never a CONFLICT.
// A service whose endpoints all run without a sidecar takes plaintext only,
// whatever its Policy says.
func (e *Engine) TLSCheck(svcs []*registry.Service) []TLSCheckRow {
	if svcs == nil {
		svcs = e.reg.Services()
	}
	var rows []TLSCheckRow
	for _, svc := range svcs {
		// Endpoints without a sidecar take plaintext whatever the Policy
		// says: the case mtlsExcludedServices exists for.
		var noSidecar *registry.Workload
		eps := e.Endpoints(svc)
		for i, w := range eps {
			if w.Sidecar {
				break
			}
			if i == len(eps)-1 {
				noSidecar = eps[0]
			}
		}
		for _, p := range svc.Ports {
			r := TLSCheckRow{Host: svc.FQDN(), Port: p.Number, Server: e.ServerMode(svc, p.Number), Client: e.ClientMode(svc, p.Number, "").ModeDecision}
			switch {
			case noSidecar != nil:
				r.Server = ModeDecision[policy.ServerMode]{Mode: policy.ServerDisable, DecidedBy: "Workload/" + noSidecar.Namespace + "/" + noSidecar.Name,
					Why: "no sidecar on the endpoints: plaintext only"}
			case len(eps) == 0 && e.ix.excluded[svc.FQDN()]:
				// No endpoint the registry knows (the API server's are not
				// pods): mtlsExcludedServices is the mesh's word that no
				// sidecar serves it, which is what the option is for.
				r.Server = ModeDecision[policy.ServerMode]{Mode: policy.ServerDisable, DecidedBy: MeshAuthPolicy,
					Why: "in mtlsExcludedServices and no known endpoints: served without a sidecar"}
			}
			ok, why := Compatible(r.Server.Mode, r.Client.Mode)
			r.Status = "OK"
			if !ok {
				r.Status, r.Problem = "CONFLICT", why
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// TLSCheckTable renders rows as the tls-check table.
func TLSCheckTable(rows []TLSCheckRow) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST:PORT\tSTATUS\tSERVER\tCLIENT\tAUTHN POLICY\tDESTINATION RULE")
	for _, r := range rows {
		authn := r.Server.DecidedBy
		if authn == MeshAuthPolicy {
			authn = "-"
		}
		dr := r.Client.DecidedBy
		if dr == MeshAuthPolicy {
			dr = "-"
		}
		fmt.Fprintf(tw, "%s:%d\t%s\t%s\t%s\t%s\t%s\n", r.Host, r.Port, r.Status, r.Server.Mode, r.Client.Mode, authn, dr)
	}
	tw.Flush()
	return b.String()
}
