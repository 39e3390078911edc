package kasd

import (
	"context"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
)

// TokenFileAuth authenticates agents against a tokens file (standalone mode): the token's
// sha256 must be listed.
type TokenFileAuth struct {
	Store *auth.TokenStore
}

// Authenticate implements AgentAuthenticator.
func (a TokenFileAuth) Authenticate(_ context.Context, token string) (string, error) {
	if id, ok := a.Store.Lookup(token); ok {
		return id, nil
	}
	return "", api.Errorf(api.CodeUnauthenticated, "agent token not recognized")
}
