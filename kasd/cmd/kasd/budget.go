package main

import (
	"flag"

	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// budgetOptions are the flags that bound what one agent, or one source address, can make kasd
// hold or spend (docs/security.md).
type budgetOptions struct {
	streamsPerAgent  int
	modulesRate      float64
	connectionWindow uint64
	streamWindow     uint64
	authBurst        int
	authRate         float64
	authMaxSources   int
}

func (b *budgetOptions) register(fs *flag.FlagSet) {
	fs.IntVar(&b.streamsPerAgent, "max-agent-streams-per-agent", 64, "maximum streams one agent may have open towards kasd (GitLab module requests) across its connections; more are reset as refused")
	fs.Float64Var(&b.modulesRate, "modules-rate-per-agent", 20, "GitLab module requests per second one agent may make (burst twice that); more are answered overloaded")
	fs.Uint64Var(&b.connectionWindow, "agent-connection-window", quic.DefaultMaxConnectionReceiveWindow, "bytes of flow-control window per agent connection: the most data an agent connection can make kasd buffer")
	fs.Uint64Var(&b.streamWindow, "agent-stream-window", quic.DefaultMaxStreamReceiveWindow, "largest flow-control window of one stream from an agent (it starts at 256 KiB and grows only while kasd reads as fast as data arrives)")
	fs.IntVar(&b.authBurst, "agent-auth-failure-burst", 20, "GitLab mode: failed agent authentications one source address may cause before it is slowed to --agent-auth-failure-rate and then refused without asking GitLab")
	fs.Float64Var(&b.authRate, "agent-auth-failure-rate", 0.2, "GitLab mode: failed agent authentications per second a source address earns back")
	fs.IntVar(&b.authMaxSources, "agent-auth-max-sources", 65536, "GitLab mode: source addresses the failed-authentication limiter remembers (least recently limited forgotten first)")
}

func (b *budgetOptions) sourceLimits() kasd.SourceLimits {
	return kasd.SourceLimits{Burst: b.authBurst, Rate: b.authRate, MaxSources: b.authMaxSources}
}
