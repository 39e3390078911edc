package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNetns runs f on an OS thread that has entered the network namespace /run/netns/name (as
// made by `ip netns add name`), so that the sockets f opens live in that namespace: a socket
// keeps the namespace it was created in for life. name "" runs f as is.
func inNetns(name string, f func() error) error {
	if name == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		// The goroutine owns its thread until the thread is back in its own namespace; if that
		// fails the thread stays locked and dies with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			self, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				return err
			}
			defer self.Close()
			target, err := os.Open(filepath.Join("/run/netns", name))
			if err != nil {
				return fmt.Errorf("netns %s: %w", name, err)
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter netns %s: %w", name, err)
			}
			ferr := f()
			if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("leave netns %s: %w", name, err)
			}
			runtime.UnlockOSThread()
			return ferr
		}()
	}()
	return <-errc
}
