package agentd

import "github.com/qkas/qkas/internal/upstream"

// PublicCause says why a request to a service inside the cluster failed, in words a client may
// see: the kind of failure, never the addresses, host names and certificate details that Go's
// dial, resolver and TLS errors carry (a client outside must not learn the cluster's
// addresses). The full error belongs in the agent's log, under the request id. It is
// upstream.PublicCause, the classification of the client that reaches services
// (internal/upstream), kept here for the services in other packages (agentd/kubernetes).
func PublicCause(err error) string { return upstream.PublicCause(err) }
