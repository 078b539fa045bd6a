// Package reliability holds cnibox's cross-applet reliability and security
// tests: the soak of the default chain (make soak, small in make test),
// crash injection (applets SIGKILLed in the middle of ADD and DEL),
// hostile and malformed input for every applet, and concurrency races on
// shared node state. Every test runs on a throwaway node (shared/testing/testnet)
// and uses its leak checker: at the end the node holds exactly what the
// live pods need.
package reliability
