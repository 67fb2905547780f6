package config

import (
	"strings"

	"gopkg.in/yaml.v3"
)

// istioMeshFields are the other keys of Istio's mesh config (0.8 to 1.x).
// They concern Envoy, Mixer and ingress, not mTLS; they are accepted so
// that the seed's `istio` ConfigMap loads unchanged, and ignored.
var istioMeshFields = map[string]bool{
	"mixerCheckServer": true, "mixerReportServer": true, "disablePolicyChecks": true, "policyCheckFailOpen": true,
	"sidecarToTelemetrySessionAffinity": true, "proxyListenPort": true, "proxyHttpPort": true, "connectTimeout": true,
	"protocolDetectionTimeout": true, "tcpKeepalive": true, "ingressClass": true, "ingressService": true,
	"ingressControllerMode": true, "ingressSelector": true, "rdsRefreshDelay": true, "enableTracing": true,
	"accessLogFile": true, "accessLogEncoding": true, "accessLogFormat": true, "enableEnvoyAccessLogService": true,
	"defaultConfig": true, "mixerAddress": true, "outboundTrafficPolicy": true, "enableClientSidePolicyCheck": true,
	"sdsUdsPath": true, "sdsRefreshDelay": true, "configSources": true, "enableSdsTokenMount": true,
	"trustDomainAliases": true, "defaultServiceExportTo": true, "defaultVirtualServiceExportTo": true,
	"defaultDestinationRuleExportTo": true, "rootNamespace": true, "localityLbSetting": true, "dnsRefreshRate": true,
	"disableReportBatch": true, "reportBatchMaxEntries": true, "reportBatchMaxTime": true,
	"inboundClusterStatName": true, "outboundClusterStatName": true, "certificates": true, "thriftConfig": true,
	"serviceSettings": true, "enablePrometheusMerge": true, "zipkinAddress": true, "statsdUdpAddress": true,
	"proxyAdminPort": true, "discoveryAddress": true, "discoveryRefreshDelay": true, "drainDuration": true,
	"parentShutdownDuration": true, "customConfigFile": true, "enableAutoMtls": true, "h2UpgradePolicy": true,
	"defaultProviders": true, "extensionProviders": true, "discoverySelectors": true,
}

// parseIstioConfigMap reads the `mesh` key of Istio's `istio` ConfigMap
// (`kubectl get configmap istio -n istio-system -o yaml`, as the seed shows)
// into a MeshConfig. Positions inside the embedded mesh text are mapped back
// to file lines when it is a block scalar (`mesh: |-`), the usual form.
func parseIstioConfigMap(d *decoder, n *yaml.Node, path string) any {
	var name string
	if md, ok := scalarField(n, "metadata"); ok {
		if nm, ok := scalarField(md, "name"); ok {
			name = nm.Value
		}
	}
	if name != "istio" {
		d.errorf(n, joinPath(path, "metadata.name"), "ConfigMap %q is not read: only Istio's `istio` ConfigMap (its `mesh` key) is a meshauth config; keep other ConfigMaps out of the config", name)
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k := n.Content[i].Value; k {
		case "apiVersion", "kind", "metadata", "data", "binaryData", "immutable":
		default:
			d.errorf(n.Content[i], joinPath(path, k), "unknown field %q in a ConfigMap", k)
		}
	}
	d.object = "ConfigMap/" + name
	if md, ok := scalarField(n, "metadata"); ok {
		if ns, ok := scalarField(md, "namespace"); ok {
			d.object = "ConfigMap/" + ns.Value + "/" + name
		}
	}
	data, _ := scalarField(n, "data")
	var mesh, meshKey *yaml.Node
	if data != nil && data.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(data.Content); i += 2 {
			if data.Content[i].Value == "mesh" {
				meshKey, mesh = data.Content[i], data.Content[i+1]
			}
		}
	}
	if mesh == nil || mesh.Kind != yaml.ScalarNode {
		d.errorf(n, joinPath(path, "data.mesh"), "the istio ConfigMap has no data.mesh text")
		return nil
	}
	mc := &MeshConfig{Object: Object{APIVersion: MeshV1alpha1, Kind: KindMeshConfig, Metadata: Meta{Name: "istio"}}}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(mesh.Value), &doc); err != nil {
		d.errorf(mesh, joinPath(path, "data.mesh"), "invalid YAML in the mesh text: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		return nil
	}
	if len(doc.Content) == 0 {
		return mc
	}
	// Shift inner positions to the file: a block scalar's text starts on
	// the line after its indicator, indented under the key.
	if mesh.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		// Block content is indented by at least one more column than the
		// key; the usual two spaces is what kubectl writes.
		shift(doc.Content[0], mesh.Line, meshKey.Column+1)
	} else {
		shift(doc.Content[0], mesh.Line-1, mesh.Column-1)
	}
	root := doc.Content[0]
	meshPath := joinPath(path, "data.mesh")
	if root.Kind != yaml.MappingNode {
		d.errorf(root, meshPath, "want a mapping of mesh settings, got %s", nodeKind(root))
		return nil
	}
	// Decode only the fields meshauth uses; the rest of Istio's mesh config
	// is accepted and ignored, and anything else is a typo.
	own := &yaml.Node{Kind: yaml.MappingNode, Line: root.Line, Column: root.Column}
	known := structFields(reflectValue(&mc.Spec).Type())
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		isOwn := false
		for _, f := range known {
			isOwn = isOwn || f.name == k.Value
		}
		switch {
		case isOwn:
			own.Content = append(own.Content, k, root.Content[i+1])
		case istioMeshFields[k.Value]:
		default:
			d.errorf(k, joinPath(meshPath, k.Value), "unknown mesh config field %q%s", k.Value, suggest(k.Value, known))
		}
	}
	d.decode(own, reflectValue(&mc.Spec), meshPath)
	if len(d.errs) == 0 {
		validateMesh(d, &mc.Spec, meshPath)
	}
	return mc
}

func shift(n *yaml.Node, lines, cols int) {
	n.Line += lines
	n.Column += cols
	for _, c := range n.Content {
		shift(c, lines, cols)
	}
}
