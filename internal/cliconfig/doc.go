// Package cliconfig is what the mains share: it sets flags from the environment (ApplyEnv:
// KASD_<FLAG>, AGENTD_<FLAG>, KASCTL_<FLAG>) and from a YAML --config file (Apply), with the
// precedence command line > environment > config file > default, and it builds the daemons'
// logger from --log-level and --log-format.
//
// The environment variable of a flag is the program's prefix, an underscore and the flag's name
// in upper case with dashes as underscores (--route-timeout: KASD_ROUTE_TIMEOUT). Repeatable
// flags take a comma-separated list. A value the flag refuses is an error naming the variable;
// variables that name no flag are ignored (Kubernetes service links such as KASD_PORT).
//
// The file is a flat YAML map whose keys are flag names. Scalars are passed to Flag.Set as they
// are written, as on the command line (YAML 1.2: "off" is the string off; a bool flag also takes
// YAML 1.1's yes, no, on, off, y and n); a key given twice is an error; a list calls Set once per
// element (for repeatable flags); a map calls Set once per entry with
// "KEY=VALUE" (for flags such as agentd's --service NAME=URL). Unknown keys are an error, so a typo
// in a config file is reported instead of silently ignored.
//
// A flag given on the command line or in the environment under an alias (agentd's --service and
// --services, kasctl's -o and --out: flags bound to the same variable) counts as given: neither
// the environment nor the file adds to it.
//
// ExplainDurations makes a duration flag's refusal say that a unit is wanted (the flag package
// says "parse error"), wherever the value came from; ShowUsage sends help asked for (-h) to
// stdout and a usage after a mistake to stderr. Libraries never read the environment: the mains pass
// os.LookupEnv.
package cliconfig
