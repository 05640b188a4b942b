//! A pull from a registry that really requires a bearer token, as Docker
//! Hub, GHCR and Harbor do: a real `docker-registry` (Debian package
//! docker-registry) configured with `auth: token`, and a token endpoint
//! that checks basic credentials and signs JWTs with a throwaway key
//! (`qemu_tests::token_registry`, shared with the guest's pull in
//! qemu-tests/tests/containers.rs). The registry verifies each token
//! against the issuer's certificate, its issuer, audience (the service),
//! lifetime and `access` claims.
//!
//! The image is pushed over the registry API with a push token; the
//! runtime's pull then goes `GET /v2/` → 401 `Bearer realm=…,service=…` →
//! token endpoint with the config's credentials as basic auth → bearer
//! token → manifest and blobs. Wrong credentials are refused by the token
//! server; no credentials get an anonymous token without access (Docker
//! Hub's answer for a private repository), which the registry refuses.
//! Skips with a printed reason when docker-registry is not installed.

#![cfg(feature = "pull")]

use std::path::Path;

use atoll_common::config::{Credential, Registries};
use atoll_common::error::error_chain;
use atoll_runtime::digest::Digest;
use atoll_runtime::manifest::{Descriptor, Platform, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use atoll_runtime::pull::{pull, PullError};
use atoll_runtime::reference::Reference;
use atoll_runtime::registry::{self, RegistryError};
use atoll_runtime::store::Store;
use qemu_tests::registry::REGISTRY_BIN;
use qemu_tests::token_registry::{basic_auth, Issuer, TokenRegistry, PASSWORD, SERVICE, USER};
use reqwest::Url;

const REPO: &str = "test/private";

fn base(registry: &TokenRegistry) -> String {
    format!("http://{}", registry.host())
}

/// A one-layer image: its layer tar, config and manifest.
struct TestImage {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl TestImage {
    fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        let data = b"pulled with a bearer token";
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, "hello", &data[..]).expect("tar");
        let layer = tar.into_inner().expect("tar");
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer)]}
        }))
        .expect("config");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": Descriptor::new(OCI_CONFIG, Digest::of(&config), config.len() as u64),
            "layers": [Descriptor::new(OCI_LAYER_TAR, Digest::of(&layer), layer.len() as u64)],
        }))
        .expect("manifest");
        Self {
            layer,
            config,
            manifest,
        }
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    /// Pushes the blobs and the manifest as `tag` with a bearer token.
    async fn push(&self, http: &reqwest::Client, base: &str, token: &str, tag: &str) {
        for blob in [&self.config, &self.layer] {
            let digest = Digest::of(blob);
            let start = format!("{base}/v2/{REPO}/blobs/uploads/");
            let r = http
                .post(&start)
                .bearer_auth(token)
                .send()
                .await
                .expect("POST upload");
            assert_eq!(
                r.status(),
                202,
                "POST {start}: {}",
                r.text().await.unwrap_or_default()
            );
            let location = r.headers()["location"]
                .to_str()
                .expect("location")
                .to_owned();
            let mut url = Url::parse(&start)
                .and_then(|u| u.join(&location))
                .expect("upload URL");
            url.query_pairs_mut()
                .append_pair("digest", &digest.to_string());
            let r = http
                .put(url)
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(blob.clone())
                .send()
                .await
                .expect("PUT blob");
            assert_eq!(r.status(), 201, "PUT blob {digest}");
        }
        let r = http
            .put(format!("{base}/v2/{REPO}/manifests/{tag}"))
            .bearer_auth(token)
            .header("content-type", OCI_MANIFEST)
            .body(self.manifest.clone())
            .send()
            .await
            .expect("PUT manifest");
        let status = r.status();
        assert_eq!(
            status,
            201,
            "PUT manifest: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

fn credentials(registry: &TokenRegistry, username: &str, password: &str) -> Registries {
    Registries {
        credentials: vec![Credential {
            registry: registry.host(),
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            token: None,
        }],
        ..Registries::default()
    }
}

#[test]
fn pull_from_a_token_auth_registry() {
    if !Path::new(REGISTRY_BIN).exists() {
        eprintln!("skipping: {REGISTRY_BIN} is not installed (apt-get install docker-registry)");
        return;
    }
    let registry = TokenRegistry::on_loopback(&[REPO]).expect("token-auth registry");
    let image = TestImage::new();
    let name = format!("{}/{REPO}:v1", registry.host());
    let reference = Reference::parse(&name).expect("reference");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");

    rt.block_on(async {
        let http = registry::http_client().expect("HTTP client");
        // The registry really wants a token: a bare request gets the
        // challenge that names the token server.
        let r = http
            .get(format!("{}/v2/{REPO}/manifests/v1", base(&registry)))
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().expect("challenge");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(challenge.contains(registry.realm()), "{challenge}");
        assert!(challenge.contains(SERVICE), "{challenge}");
        // A token signed by another key is refused.
        let other = tempfile::tempdir().expect("tempdir");
        let forged = Issuer::new(other.path())
            .and_then(|i| i.repository_token(USER, REPO, &["pull"]))
            .expect("a token from another key");
        let r = http
            .get(format!("{}/v2/{REPO}/manifests/v1", base(&registry)))
            .bearer_auth(forged)
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(r.status(), 401, "a token from another key");
        // Push with a token for pull and push.
        let scope = format!("repository:{REPO}:pull,push");
        let r = http
            .get(registry::token_url(registry.realm(), Some(SERVICE), &scope).expect("token URL"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .expect("GET token");
        assert_eq!(r.status(), 200);
        let answer: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("token answer")).expect("token JSON");
        let token = answer["token"].as_str().expect("token").to_owned();
        image.push(&http, &base(&registry), &token, "v1").await;
    });
    registry.forget();

    // No credentials: an anonymous token without access, refused by the
    // registry (Docker Hub, Harbor); or no token at all (the token server's
    // 401). Either way the error says the registry wants credentials.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    for refuse in [false, true] {
        registry.refuse_anonymous(refuse);
        let e = rt
            .block_on(pull(
                &store,
                &reference,
                &Registries::default(),
                &Platform::default(),
                &|_| {},
            ))
            .expect_err("a pull without credentials");
        let text = error_chain(&e);
        assert!(
            matches!(
                e,
                PullError::Registry(RegistryError::NeedCredentials { .. })
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} wants credentials", registry.host())),
            "{text}"
        );
        assert!(text.contains("[[registries.credentials]]"), "{text}");
        assert!(store.images().expect("images").is_empty());
    }
    let seen = registry.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s.header("authorization").is_none()),
        "{seen:?}"
    );
    registry.refuse_anonymous(false);
    registry.forget();

    // Wrong credentials: the token server's 401, naming the registry whose
    // credentials were refused.
    let e = rt
        .block_on(pull(
            &store,
            &reference,
            &credentials(&registry, USER, "wrong"),
            &Platform::default(),
            &|_| {},
        ))
        .expect_err("a pull with a wrong password");
    let text = error_chain(&e);
    assert!(
        matches!(e, PullError::Registry(RegistryError::Denied { .. })),
        "{text}"
    );
    assert!(text.contains(&registry.host()), "{text}");
    assert!(text.contains(registry.realm()), "{text}");
    assert!(text.contains("incorrect username or password"), "{text}");
    assert!(store.images().expect("images").is_empty());
    registry.forget();

    // The right credentials: the image is in the store by its digest.
    let digest = rt
        .block_on(pull(
            &store,
            &reference,
            &credentials(&registry, USER, PASSWORD),
            &Platform::default(),
            &|_| {},
        ))
        .unwrap_or_else(|e| {
            panic!(
                "pull: {}\nregistry log:\n{}",
                error_chain(&e),
                registry.registry().log()
            )
        });
    assert_eq!(digest, image.digest());
    let stored = store.image(&name).expect("the pulled image");
    assert_eq!(stored.descriptor.digest, image.digest());
    assert!(store.has_blob(&Digest::of(&image.layer)));
    assert!(store.has_blob(&Digest::of(&image.config)));
    let seen = registry.seen();
    let wanted = format!("repository:{REPO}:pull");
    let login = basic_auth(USER, PASSWORD);
    assert!(
        seen.iter().any(|s| s.query("scope") == [wanted.clone()]
            && s.query("service") == [SERVICE]
            && s.header("authorization") == Some(login.as_str())
            && s.status == 200),
        "no token request for {wanted} from {USER}: {seen:?}"
    );
    assert!(
        registry
            .issued()
            .iter()
            .any(|t| t.subject == USER && t.allows(REPO, "pull")),
        "no pull token for {USER}: {:?}",
        registry.issued()
    );

    // A configured token is sent as it is, with no token server visit.
    registry.forget();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let token = registry
        .issuer()
        .repository_token("ci", REPO, &["pull"])
        .expect("a pull token");
    let config = Registries {
        credentials: vec![Credential {
            registry: registry.host(),
            username: None,
            password: None,
            token: Some(token),
        }],
        ..Registries::default()
    };
    let digest = rt
        .block_on(pull(
            &store,
            &reference,
            &config,
            &Platform::default(),
            &|_| {},
        ))
        .unwrap_or_else(|e| panic!("pull with a token: {}", error_chain(&e)));
    assert_eq!(digest, image.digest());
    assert!(registry.seen().is_empty(), "{:?}", registry.seen());
}
