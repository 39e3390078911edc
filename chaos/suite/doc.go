// Package suite is qkas's fault suite (`make chaos`): a real fleet, real faults, real load,
// and a bound per fault that the run must meet.
//
// # The fleet
//
// Real binaries (built with `go build` into the work directory, or taken from Config.BinDir):
// three kasd sharing a real three-member etcd cluster (Debian's etcd-server), and Config.Agents
// agentd, each with --kas-connections 2 and --kas-address listing all three kasd. Every process
// runs in its own network namespace (`ip netns`), named qkch-<role>; each namespace has one veth
// (qkch-eth) into a bridge (qkch-br) in the namespace qkch-hub, on 10.77.0.0/16:
//
//	qkch-cl    10.77.0.10    the load generator's sockets (this process dials with setns)
//	qkch-kI    10.77.1.I     kasd-I: agents :8150/udp, API :8151, peers :8152/udp, metrics :8153
//	qkch-eI    10.77.2.I     etcd member eI: clients :2379, peers :2380
//	qkch-aNNN  10.77.3.x…    agent-NNN and its service (served by this process on 127.0.0.1:8080
//	                         inside that namespace, so faults on the bridge never reach it)
//
// Nothing is added to the host's own namespace. Faults on the network are nftables rules in a
// table "inet qkch" of the affected namespaces, always on the input hook: a drop on output makes
// sendmsg fail with EPERM, which is a different fault (a local error, not loss).
//
// # Load
//
// Config.Concurrency workers, each with one request in flight: a random agent, a random kasd among
// those a health-checking load balancer keeps in rotation (GET /readyz every 200 ms; a kasd this
// suite kills is taken out at once, as an orchestrator would), GET /data (a body of a random size
// derived from a seed) or POST /echo (a random body echoed back). Every body is checked: it must
// start with the agent's id and carry exactly the expected bytes. A connection refused by a kasd
// is tried on another kasd (the request never reached qkas); nothing else is retried.
//
// # Scenarios and bounds
//
// Each scenario runs the load for Config.Duration (longer when its fault needs it), injects its
// fault after a warm-up, and reports requests sent, succeeded, failed by status and error code,
// its bound, and recovery: the time from the fault to the end of the last request that failed
// (or, for kasd-stop, that broke the latency bound). The bounds are issue 11's; a scenario that
// breaks its bound fails the run. Between scenarios the suite waits until the fleet is whole
// again (every kasd ready, every agent with two connections on two kasd).
//
// # Ownership and cleanup
//
// Run owns everything: the namespaces (deleted at the end, and at the start when a previous run
// left some behind; a lock file keeps two runs apart), the processes (SIGKILLed at the end; each
// also has Pdeathsig so that it dies with this process), the service servers and the load
// workers, which it waits for.
package suite
