module github.com/ferrydesk/ferry/deployments/e2e

go 1.26.0

require (
	github.com/ferrydesk/ferry/contracts v0.0.0
	go.yaml.in/yaml/v4 v4.0.0-rc.2
	golang.org/x/crypto v0.59.0
)

require golang.org/x/sys v0.50.0 // indirect

replace github.com/ferrydesk/ferry/contracts => ../../contracts
