package registry

import (
	"slices"
	"sync/atomic"

	"github.com/rs/zerolog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger routes etcd's zap logs (server and client) to log, at error level and above
// only: etcd is chatty at info and warn (every election, every reconnect), and those are
// covered by the registry's own logs and metrics.
func newZapLogger(log zerolog.Logger) *zap.Logger {
	return newZapLoggerClosing(log, nil)
}

// newZapLoggerClosing is newZapLogger for an embedded etcd server: once closing is set (its
// Close has begun), what etcd reports at error level is logged at debug. Stopping the server
// closes its listeners, and its serving goroutines report that as "setting up serving from
// embedded etcd failed." ("http: Server closed", "use of closed network connection"): four
// error lines at every clean shutdown otherwise.
func newZapLoggerClosing(log zerolog.Logger, closing *atomic.Bool) *zap.Logger {
	return zap.New(zerologCore{log: log.With().Str("component", "etcd").Logger(), closing: closing})
}

// zerologCore is a zapcore.Core that writes to a zerolog.Logger.
type zerologCore struct {
	log     zerolog.Logger
	fields  []zapcore.Field
	closing *atomic.Bool // nil, or set once the server is being closed (newZapLoggerClosing)
}

func (c zerologCore) Enabled(l zapcore.Level) bool { return l >= zapcore.ErrorLevel }

func (c zerologCore) With(fs []zapcore.Field) zapcore.Core {
	return zerologCore{log: c.log, fields: append(slices.Clip(c.fields), fs...), closing: c.closing}
}

func (c zerologCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c zerologCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	ev := c.log.Error()
	if c.closing != nil && c.closing.Load() {
		ev = c.log.Debug()
	}
	if e.LoggerName != "" {
		ev = ev.Str("logger", e.LoggerName)
	}
	ev.Fields(enc.Fields).Msg(e.Message)
	return nil
}

func (c zerologCore) Sync() error { return nil }
