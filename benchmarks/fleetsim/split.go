package fleetsim

import (
	"fmt"
	"io"
)

// FDsReserved is how many open files MaxAgents keeps free in a process besides one per agent,
// at the least: the runtime's epoll and pipe, stdio, the status and tokens files, and an agent
// that is redialling and briefly holds its old socket and its new one.
const FDsReserved = 256

// MaxAgents is how many agents one process may run when it may open nofile files (its
// RLIMIT_NOFILE): one UDP socket per agent, with a quarter of the limit (at least FDsReserved)
// kept free for reconnects, whose old and new sockets overlap. 15,000 at a limit of 20,000;
// 0 when the limit leaves no room.
func MaxAgents(nofile uint64) int {
	reserve := max(nofile/4, FDsReserved)
	if nofile <= reserve {
		return 0
	}
	n := nofile - reserve
	if n > 1<<30 {
		n = 1 << 30
	}
	return int(n)
}

// Split divides agents into as few processes as hold at most perProcess each, in contiguous
// shares whose sizes differ by at most one: every agent is in exactly one share, in order.
// perProcess ≤ 0 means one share; no agents means no share.
func Split(agents []Agent, perProcess int) [][]Agent {
	n := len(agents)
	if n == 0 {
		return nil
	}
	k := 1
	if perProcess > 0 {
		k = (n + perProcess - 1) / perProcess
	}
	out := make([][]Agent, 0, k)
	for i := range k {
		out = append(out, agents[i*n/k:(i+1)*n/k])
	}
	return out
}

// WriteTokens writes agents in LoadTokens's format, one "id token" line each.
func WriteTokens(w io.Writer, agents []Agent) error {
	for _, a := range agents {
		if _, err := fmt.Fprintf(w, "%s %s\n", a.ID, a.Token); err != nil {
			return err
		}
	}
	return nil
}
