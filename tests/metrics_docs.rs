//! docs/metrics.md and the exported series agree: every family the proxy
//! exports is documented with its type, and every documented one exists.

mod metrics_support;

use regionguard::config::Config;
#[tokio::test]
async fn every_exported_family_is_documented_and_vice_versa() {
    let toml = "default_region = \"eu\"\n\
        [listen]\naddress = \"127.0.0.1:0\"\nshutdown_timeout_secs = 1\n\
        [auth]\nmethod = \"trust\"\n\
        [metrics]\naddress = \"127.0.0.1:0\"\n\
        [regions.eu]\nzone = \"eu\"\n\
        [[regions.eu.hosts]]\nhost = \"127.0.0.1\"\nport = 1\ndbname = \"app\"\nuser = \"x\"\n";
    let config = Config::from_toml_str(toml, "test").expect("valid config");
    let proxy = regionguard::server::Proxy::start(config)
        .await
        .expect("start the proxy");
    let scrape = proxy.metrics().render().expect("metrics are on");
    let exported = metrics_support::families(&scrape);
    let docs = metrics_support::documented();
    assert!(
        exported.len() >= 25,
        "only {} families exported",
        exported.len()
    );
    for (name, ty) in &exported {
        assert_eq!(
            docs.get(name),
            Some(ty),
            "{name} ({ty}) is exported but not documented with that type in docs/metrics.md"
        );
    }
    for name in docs.keys() {
        assert!(
            exported.contains_key(name),
            "{name} is documented but not exported"
        );
    }
    proxy.shutdown().await;
}
