package main

import (
	"io"
	"testing"
)

func TestKubernetesFlagDefault(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		inCluster bool
		want      bool
	}{
		{nil, false, false},
		{nil, true, true},
		{[]string{"--kubernetes=false"}, true, false},
		{[]string{"--kubernetes"}, false, true},
		{[]string{"--kubeconfig=/k"}, false, true},
		{[]string{"--kubeconfig=/k", "--kubernetes=false"}, false, false},
	} {
		o, err := parseFlags(tc.args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if got := o.kubernetes.on(tc.inCluster); got != tc.want {
			t.Errorf("%q in cluster %v: on = %v, want %v", tc.args, tc.inCluster, got, tc.want)
		}
	}
}
