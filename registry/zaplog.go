package registry

import (
	"slices"

	"github.com/rs/zerolog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger routes etcd's zap logs (server and client) to log, at error level and above
// only: etcd is chatty at info and warn (every election, every reconnect), and those are
// covered by the registry's own logs and metrics.
func newZapLogger(log zerolog.Logger) *zap.Logger {
	return zap.New(zerologCore{log: log.With().Str("component", "etcd").Logger()})
}

// zerologCore is a zapcore.Core that writes to a zerolog.Logger.
type zerologCore struct {
	log    zerolog.Logger
	fields []zapcore.Field
}

func (c zerologCore) Enabled(l zapcore.Level) bool { return l >= zapcore.ErrorLevel }

func (c zerologCore) With(fs []zapcore.Field) zapcore.Core {
	return zerologCore{log: c.log, fields: append(slices.Clip(c.fields), fs...)}
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
	if e.LoggerName != "" {
		ev = ev.Str("logger", e.LoggerName)
	}
	ev.Fields(enc.Fields).Msg(e.Message)
	return nil
}

func (c zerologCore) Sync() error { return nil }
