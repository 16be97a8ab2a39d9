// Package e2e tests ferry as it is deployed: the docker compose stack built by
// `make images`, driven from the host with the ferry CLI against real OpenSSH and
// PostgreSQL containers. The tests carry the build tag e2e and need the Docker engine:
//
//	make e2e     # the three actions, results checked on the targets
//	make chaos   # containers killed, NATS nodes lost, networks cut, the stack restarted
//
// FERRY_E2E_KEEP=1 leaves the stack running after the tests (docker-compose -p
// ferry-e2e down -v removes it).
package e2e
