// The upstream Gateway API conformance suite, built against the pinned module (flags: see
// sigs.k8s.io/gateway-api/conformance/utils/flags). scripts/conformance runs it.
package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
