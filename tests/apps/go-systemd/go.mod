module baton.test/apps/go-systemd

go 1.19

require github.com/coreos/go-systemd/v22 v22.3.2

// The Go module proxy is out of reach on CI machines: build against Debian's
// golang-github-coreos-go-systemd-dev (tests/apps/install), whose go.mod
// needs godbus from Debian too (golang-dbus-dev, which it depends on).
replace (
	github.com/coreos/go-systemd/v22 => /usr/share/gocode/src/github.com/coreos/go-systemd
	github.com/godbus/dbus/v5 => /usr/share/gocode/src/github.com/godbus/dbus
)
