// Package filewatch tells its caller when files it reads change, so that a daemon can re-read
// them without a restart: the agent tokens file, TLS certificates and keys, a CA bundle, a
// config file.
//
// It watches the files' directories, not the files: editors, `kasctl agent-token`, cert-manager
// and Kubernetes (which swaps a Secret's or ConfigMap's `..data` symlink) replace a file by
// renaming, which a watch on the old inode would not see. The events of one save (write,
// rename, chmod; a certificate and its key written one after the other) are gathered into one
// call after the directory has been quiet for the settle time.
//
// Concurrency: Watch runs in its caller's goroutine and calls changed from it, one call at a
// time; the fsnotify watcher's goroutine is gone when Watch returns. Nothing is started in the
// background.
package filewatch
