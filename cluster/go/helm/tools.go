//go:build tools

// Package tools keeps helm's command in this module's dependency graph, so
// `go mod tidy` keeps its requirements. Helm has a module of its own, apart
// from the control plane's (cluster/go): its k8s.io libraries are its own
// release's, not the ones the control plane pins.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
