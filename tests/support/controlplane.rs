//! Local control plane (see hack/controlplane).
