// Package uplot embeds uPlot (https://github.com/leeoniya/uPlot), a small MIT-licensed chart
// library for time series, as fetched from the npm registry: its browser build
// (uPlot.iife.min.js, which defines the global uPlot), its stylesheet and its licence. The kasd
// web page (package kasd/webui) serves these files; see README.md for the version and how to
// update it. Nothing here is compiled or transformed: the files are the package's dist files.
package uplot

import "embed"

// Version is the npm version of the files in FS.
const Version = "1.6.32"

// FS holds uPlot.iife.min.js, uPlot.min.css and LICENSE.
//
//go:embed uPlot.iife.min.js uPlot.min.css LICENSE
var FS embed.FS
