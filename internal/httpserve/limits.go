package httpserve

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Limits are one HTTP server's limits on what its clients control. A zero field takes the
// default documented on it (WithDefaults); a negative one is refused by Validate.
type Limits struct {
	ReadHeaderTimeout time.Duration // default 10s
	IdleTimeout       time.Duration // default 120s
	MaxHeaderBytes    int           // default 64 KiB
	MaxConnections    int           // default 1000
}

// Defaults for Limits' zero fields.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultMaxConnections    = 1000
)

// WithDefaults returns l with its zero fields set to their defaults.
func (l Limits) WithDefaults() Limits {
	if l.ReadHeaderTimeout == 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	return l
}

// Validate refuses negative limits: every limit is on, there is no "unlimited".
func (l Limits) Validate() error {
	if l.ReadHeaderTimeout < 0 || l.IdleTimeout < 0 || l.MaxHeaderBytes < 0 || l.MaxConnections < 0 {
		return errors.New("HTTP server limits must be positive")
	}
	return nil
}

// RegisterFlags adds --PREFIX-read-header-timeout, --PREFIX-idle-timeout,
// --PREFIX-max-header-bytes and --PREFIX-max-connections to fs, with def's values (defaults
// filled in) as their defaults, writing into l. what names the server in the help text.
func (l *Limits) RegisterFlags(fs *flag.FlagSet, prefix, what string, def Limits) {
	def = def.WithDefaults()
	fs.DurationVar(&l.ReadHeaderTimeout, prefix+"-read-header-timeout", def.ReadHeaderTimeout,
		fmt.Sprintf("%s: how long a client may take to send a request header (and the TLS handshake)", what))
	fs.DurationVar(&l.IdleTimeout, prefix+"-idle-timeout", def.IdleTimeout,
		fmt.Sprintf("%s: close keep-alive connections idle for this long", what))
	fs.IntVar(&l.MaxHeaderBytes, prefix+"-max-header-bytes", def.MaxHeaderBytes,
		fmt.Sprintf("%s: largest request header accepted (431 beyond)", what))
	fs.IntVar(&l.MaxConnections, prefix+"-max-connections", def.MaxConnections,
		fmt.Sprintf("%s: open connections; more wait until one closes", what))
}
