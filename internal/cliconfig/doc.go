// Package cliconfig is what the daemons' mains share: it merges a YAML --config file into a
// flag.FlagSet so that every flag can also be set in the file and the command line wins, and it
// builds their logger from --log-level and --log-format.
//
// The file is a flat YAML map whose keys are flag names. Scalars are passed to Flag.Set as strings;
// a list calls Set once per element (for repeatable flags); a map calls Set once per entry with
// "KEY=VALUE" (for flags such as agentd's --service NAME=URL). Unknown keys are an error, so a typo
// in a config file is reported instead of silently ignored.
package cliconfig
