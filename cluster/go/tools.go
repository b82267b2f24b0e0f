//go:build tools

// Package tools keeps the Kubernetes commands that cluster/build.sh builds in
// this module's dependency graph, so `go mod tidy` keeps their requirements.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
