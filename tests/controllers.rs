//! Controllers on the real control plane.

mod support;

use support::controlplane::ControlPlane;

#[tokio::test]
async fn smoke() {
    let cp = ControlPlane::full();
    cp.install_crds();
    let _client = cp.client().await;
}
