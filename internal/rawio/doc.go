// Package rawio performs the hot socket reads and writes of kasd and agentd — QUIC's UDP
// datagrams (sendmsg, recvmmsg) and the TCP bytes of proxied requests (read, write) — with raw
// system calls on their non-blocking sockets, instead of the net package's calls that enter the
// Go scheduler's syscall state.
//
// # Why
//
// A goroutine that makes a system call through the syscall package (net's path) marks its P as
// "in a syscall". Two things follow, and on a small VM where a thread wake-up costs tens of
// microseconds they were the larger part of a request's cost at low load
// (docs/performance.md, "Raw socket calls"):
//
//   - the runtime's monitor thread (sysmon), asleep while the process was idle, is woken on
//     the first such call, then polls every 20 µs for at least a millisecond;
//   - a call that spans two of its polls (≥ 20 µs: a sendmsg on a virtual NIC often does)
//     has its P taken away and handed to another thread, which is woken, finds nothing to do
//     and sleeps again, while the caller, back from the kernel, must get a P again.
//
// A non-blocking socket never blocks in the kernel: a read with no data or a write with a full
// buffer returns EAGAIN at once. Such calls are what syscall.RawSyscall is for: the goroutine
// keeps its P for the few microseconds of the call, and the scheduler is not involved. Waiting
// for readiness still goes through the net poller (syscall.RawConn.Read/Write), so deadlines,
// Close and the poller's wake-ups work exactly as with net's own calls.
//
// # What it offers
//
//   - [UDP] wraps a *net.UDPConn for quic-go: WriteMsgUDP with one raw sendmsg, and ReadBatch
//     (the interface quic-go's batched reader looks for) with one raw recvmmsg.
//   - [UDP.EnableGRO] turns on the receiving of coalesced datagrams (UDP_GRO): a run of
//     datagrams from one peer — a sender's GSO batch on loopback or veth, back-to-back
//     datagrams through a NIC's GRO — arrives in one read of up to 64 KiB, and ReadBatch
//     splits it into the caller's messages as if the kernel had delivered them one by one.
//     The 64 KiB buffers come from a pool for the system call only (gro_linux.go): a socket
//     waiting for data holds none.
//   - [Conn] wraps a TCP connection so that Read and Write use raw read and write.
//
// Errors are those net returns: a *net.OpError wrapping an *os.SyscallError (quic-go and
// net/http inspect both), net.ErrClosed after Close, os.ErrDeadlineExceeded at a deadline.
// On systems other than Linux both are the plain net calls.
//
// # Goroutines
//
// None: every call runs in its caller's goroutine.
package rawio
