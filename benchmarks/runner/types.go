package runner

import "github.com/qkas/qkas/benchmarks/load"

// ThroughputRun is one route and direction, over all rounds.
type ThroughputRun struct {
	Route         string  `json:"route"`
	Direction     string  `json:"direction"` // download or upload
	Bytes         int64   `json:"bytes"`
	Seconds       float64 `json:"seconds"`
	MBps          float64 `json:"mb_per_s"`
	RatioToRaw    float64 `json:"ratio_to_raw_quic,omitempty"`
	RatioToDirect float64 `json:"ratio_to_direct,omitempty"`
	// TunnelCPUmsPerMiB: kasd+agentd CPU per MiB moved (qkas routes only).
	TunnelCPUmsPerMiB float64 `json:"tunnel_cpu_ms_per_mib,omitempty"`
}

// ThroughputResult is scenario 2.
type ThroughputResult struct {
	Bytes   int64           `json:"bytes"`
	Rounds  int             `json:"rounds"`
	Runs    []ThroughputRun `json:"runs"`
	Plots   []string        `json:"plots"`
	Missing []string        `json:"missing,omitempty"`
}

func (t *ThroughputResult) find(route, dir string) *ThroughputRun {
	for i := range t.Runs {
		if t.Runs[i].Route == route && t.Runs[i].Direction == dir {
			return &t.Runs[i]
		}
	}
	return nil
}

// HOL backgrounds: what shares the agent connection with the small requests.
const (
	holNone = "none"         // the small requests alone
	holBulk = "bulk"         // one download read at HOLBulkRate
	holSlow = "slow-readers" // HOLSlowReaders downloads, each read at HOLSlowRate (0% loss)
)

// HOLPoint is one system at one loss level with one background.
type HOLPoint struct {
	System      string  `json:"system"` // qkas or h2-tcp
	LossPercent float64 `json:"loss_percent"`
	Background  string  `json:"background"` // none, bulk or slow-readers
	Readers     int     `json:"readers"`    // background downloads
	ReadRate    int64   `json:"read_rate"`  // bytes/s, each background download
	load.Summary
	// BulkMBps: what the background downloads read, together.
	BulkMBps float64 `json:"bulk_mb_per_s"`
}

// HOLResults is scenario 3.
type HOLResults struct {
	Concurrency int     `json:"concurrency"`
	DurationS   float64 `json:"duration_s"`
	BulkRate    int64   `json:"bulk_rate"`
	SlowReaders int     `json:"slow_readers"`
	SlowRate    int64   `json:"slow_rate"`
	// H2TCPConnections: TCP connections the HTTP/2 baseline dialled over the whole scenario
	// (1 means every request and transfer shared one connection).
	H2TCPConnections int        `json:"h2_tcp_connections"`
	Points           []HOLPoint `json:"points"`
	Plots            []string   `json:"plots"`
}

func (h *HOLResults) find(system string, loss float64, background string) *HOLPoint {
	for i := range h.Points {
		if p := &h.Points[i]; p.System == system && p.LossPercent == loss && p.Background == background {
			return p
		}
	}
	return nil
}

// ScalePoint is one agent count on a fresh kasd.
type ScalePoint struct {
	Agents                  int            `json:"agents"`
	ConnectFailures         int            `json:"connect_failures"`
	KasdConnections         int            `json:"kasd_connections"` // simulated agents kasd counted after connecting
	ConnectSeconds          float64        `json:"connect_s"`
	ConnectPerSec           float64        `json:"connect_per_s"`
	RSSBeforeMiB            float64        `json:"rss_before_mib"`
	RSSAfterMiB             float64        `json:"rss_after_mib"`
	RSSPerAgentKiB          float64        `json:"rss_per_agent_kib"`
	IdleCPUPercent          float64        `json:"idle_cpu_percent"`
	IdleCPUusPerAgentPerSec float64        `json:"idle_cpu_us_per_agent_per_s"`
	ReconnectSeconds        float64        `json:"reconnect_s"`
	ReconnectPerSec         float64        `json:"reconnect_per_s"`
	ReconnectFailures       int            `json:"reconnect_failures"`
	LatencyAlone            load.Summary   `json:"latency_alone"`
	LatencyLoaded           load.Summary   `json:"latency_loaded"`
	Errors                  map[string]int `json:"errors,omitempty"`
	Err                     string         `json:"error,omitempty"` // this count could not be measured
}

// ScaleResults is scenario 4.
type ScaleResults struct {
	Points []ScalePoint `json:"points"`
	Plots  []string     `json:"plots"`
}

// FailoverResults is scenario 5.
type FailoverResults struct {
	Setup           string         `json:"setup"`
	RecoverySeconds float64        `json:"recovery_s"` // kill → first success
	SteadySeconds   float64        `json:"steady_s"`   // kill → start of the last unbroken run of successes
	Requests        int            `json:"requests"`
	Failed          int            `json:"failed"`
	Errors          map[string]int `json:"errors,omitempty"`
	Plots           []string       `json:"plots"`
}
