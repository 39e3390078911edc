package kasd_test

import (
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/kasd"
)

type (
	kasdConfig  = kasd.Config
	agentConfig = agentd.Config
)

func jwtTime(t time.Time) *jwt.NumericDate { return jwt.NewNumericDate(t) }
