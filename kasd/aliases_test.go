package kasd_test

import (
	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/kasd"
)

type (
	kasdConfig  = kasd.Config
	agentConfig = agentd.Config
)
