package suite

import (
	"encoding/binary"
	"io"
	"net/http"
	"strconv"
)

// The service behind every agent, served by this process inside the agent's namespace. Every
// answer starts with the agent's id and a newline, so a request that reached the wrong agent is
// caught:
//
//	GET  /data?n=N&seed=S   N bytes of pattern(S, N)
//	POST /echo              the request body
func serviceHandler(agent string) http.Handler {
	head := []byte(agent + "\n")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /data", func(w http.ResponseWriter, r *http.Request) {
		n, err1 := strconv.Atoi(r.URL.Query().Get("n"))
		seed, err2 := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		if err1 != nil || err2 != nil || n < 0 || n > maxBody {
			http.Error(w, "bad n or seed", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(head)+n))
		_, _ = w.Write(head)
		_, _ = w.Write(pattern(seed, n))
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil || len(b) > maxBody {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(head)+len(b)))
		_, _ = w.Write(head)
		_, _ = w.Write(b)
	})
	return mux
}

const maxBody = 1 << 20

// pattern is n pseudo-random bytes determined by seed (splitmix64).
func pattern(seed uint64, n int) []byte {
	b := make([]byte, (n+7)&^7)
	x := seed
	for i := 0; i < len(b); i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(b[i:], z^(z>>31))
	}
	return b[:n]
}
