// Package manifests holds the Kubernetes manifests of qkas as kustomize bases and overlays:
//
//	etcd/                            a 3-member etcd StatefulSet for kasd's registry
//	kasd/                            kasd: Deployment (3 replicas), Services, config, PDB
//	kasd/overlays/external-etcd/     kasd with an existing etcd (TLS client certificate)
//	agentd/                          agentd: Deployment (2 replicas), ServiceAccount, RBAC
//	agentd/overlays/read-only/       agentd with cluster-wide read-only access
//
// The package has no Go code: manifests_test.go builds every kustomization with kustomize's
// krusty (what `kubectl apply -k` runs), decodes every object strictly with client-go's scheme and
// checks the references between them and against the flags of the kasd and agentd binaries.
// docs/kubernetes.md is the deployment guide.
package manifests
