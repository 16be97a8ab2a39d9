package telemetry

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Version is ferry's version; release builds set it with
// -ldflags "-X github.com/ferrydesk/ferry/pkg/telemetry.Version=v1.2.3".
// When unset, the main module's version from the build info is used.
var Version = ""

// BuildVersion returns Version, or the main module's version recorded by the Go
// toolchain, or "devel".
func BuildVersion() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// BuildInfo registers ferry_build_info{version,goversion} = 1 on reg.
func BuildInfo(reg prometheus.Registerer) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "ferry_build_info",
		Help:        "Build of this ferry binary (always 1).",
		ConstLabels: prometheus.Labels{"version": BuildVersion(), "goversion": runtime.Version()},
	})
	g.Set(1)
	reg.MustRegister(g)
}
