//! Image signatures end to end against a real `docker-registry` (Debian
//! package docker-registry) with skopeo pushing: a busybox image and its
//! signature artifact (`sha256-<hex>.sig`, runtime/README.md
//! "Signatures") are pushed, the image pulled with `atoll-runtime pull`,
//! and `atoll-runtime verify` run as PID 1 runs it. Skips with a printed
//! reason when docker-registry or skopeo is missing.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use atoll_runtime::digest::Digest;
use atoll_runtime::manifest::{
    Descriptor, ImageConfig, ImageManifest, RootFs, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST,
};
use atoll_runtime::signature::{
    self, EMPTY_CONFIG, EMPTY_MEDIA_TYPE, SIGNATURE_LEN, SIGNATURE_MEDIA_TYPE,
};
use atoll_runtime::store::Store;
use ed25519_dalek::{Signer, SigningKey};
use qemu_tests::registry::{Registry, REGISTRY_BIN};

const BUSYBOX: &str = "/bin/busybox";
const RUNTIME: &str = env!("CARGO_BIN_EXE_atoll-runtime");

fn skip_reason() -> Option<String> {
    if !Path::new(REGISTRY_BIN).exists() {
        return Some(format!(
            "{REGISTRY_BIN} is not installed (apt-get install docker-registry)"
        ));
    }
    if Command::new("skopeo").arg("--version").output().is_err() {
        return Some("skopeo is not installed (apt-get install skopeo)".to_string());
    }
    None
}

fn skopeo_push(layout: &Path, name: &str, destination: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{name}", layout.display()))
        .arg(format!("docker://{destination}"))
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo copy to {destination}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A one-layer image (busybox, if installed, and a file that makes it
/// `which`) in an OCI layout at `layout`, named `name`.
fn write_image(layout: &Path, name: &str, which: &str) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data).expect("tar");
    };
    if let Ok(busybox) = fs::read(BUSYBOX) {
        add("bin/busybox", &busybox, 0o755);
    }
    add("etc/which", which.as_bytes(), 0o644);
    let layer = tar.into_inner().expect("tar");
    let store = Store::open(layout).expect("layout");
    let layer_digest = store.put_blob_bytes(&layer).expect("layer");
    let config = serde_json::to_vec(&ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer_digest],
        },
        ..Default::default()
    })
    .expect("config");
    let config_digest = store.put_blob_bytes(&config).expect("config");
    let manifest = serde_json::to_vec(&ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(OCI_CONFIG, config_digest, config.len() as u64),
        layers: vec![Descriptor::new(
            OCI_LAYER_TAR,
            layer_digest,
            layer.len() as u64,
        )],
        subject: None,
        annotations: Default::default(),
    })
    .expect("manifest");
    let digest = store.put_blob_bytes(&manifest).expect("manifest");
    store
        .tag(
            name,
            &Descriptor::new(OCI_MANIFEST, digest, manifest.len() as u64),
        )
        .expect("tag");
}

/// The signature artifact of `digest` by `key`, as an OCI layout named
/// `name` (what `image-build sign-image` writes as an archive).
fn write_signature(layout: &Path, name: &str, key: &SigningKey, digest: &Digest) {
    let sig = key.sign(digest.to_string().as_bytes()).to_bytes();
    let store = Store::open(layout).expect("layout");
    let empty = store.put_blob_bytes(EMPTY_CONFIG).expect("config");
    let sig_digest = store.put_blob_bytes(&sig).expect("signature");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Descriptor::new(EMPTY_MEDIA_TYPE, empty, 2),
        "layers": [Descriptor::new(SIGNATURE_MEDIA_TYPE, sig_digest, SIGNATURE_LEN as u64)],
    }))
    .expect("manifest");
    let manifest_digest = store.put_blob_bytes(&manifest).expect("manifest");
    // Store::tag wants an image; an artifact is named by hand.
    let mut d = Descriptor::new(OCI_MANIFEST, manifest_digest, manifest.len() as u64);
    d.annotations.insert(
        atoll_runtime::manifest::ANNOTATION_REF_NAME.into(),
        name.into(),
    );
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [d]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index.json");
}

fn runtime(args: &[&str]) -> Output {
    Command::new(RUNTIME)
        .args(args)
        .output()
        .expect("running atoll-runtime")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn verify(store: &Path, key: &SigningKey, image: &str) -> Output {
    let key = hex::encode(key.verifying_key().to_bytes());
    runtime(&[
        "verify",
        "--store",
        &store.to_string_lossy(),
        "--key",
        &key,
        image,
    ])
}

#[test]
fn signed_images_verify_from_the_registry_then_from_the_store() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let registry = Registry::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let layouts = dir.path().join("layouts");
    let host_store: PathBuf = dir.path().join("store");
    let signed = format!("{}/test/app:1", registry.host());
    let unsigned = format!("{}/test/unsigned:1", registry.host());
    write_image(&layouts, "app", "signed");
    write_image(&layouts, "unsigned", "unsigned");
    skopeo_push(&layouts, "app", &signed);
    skopeo_push(&layouts, "unsigned", &unsigned);
    for image in [&signed, &unsigned] {
        let out = runtime(&["pull", "--store", &host_store.to_string_lossy(), image]);
        assert!(out.status.success(), "pull {image}: {}", text(&out));
    }
    // What the host has is what gets signed: the registry's manifest digest.
    let digest = Store::open(&host_store)
        .expect("store")
        .image(&signed)
        .expect("pulled image")
        .descriptor
        .digest;

    let key = SigningKey::from_bytes(&[0x5a; 32]);
    let other = SigningKey::from_bytes(&[0xa5; 32]);
    let sig_layout = dir.path().join("sig");
    let tag = signature::tag_for(&digest);
    write_signature(&sig_layout, &tag, &key, &digest);
    let sig_dest = format!("{}/test/app:{tag}", registry.host());
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", sig_layout.display()))
        .arg(format!("docker://{sig_dest}"))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo push signature: {}",
        text(&out)
    );

    // Fetched, verified, stored.
    let out = verify(&host_store, &key, &signed);
    assert!(out.status.success(), "verify: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&digest.to_string()) && stdout.contains("fetched from the registry"),
        "{}",
        text(&out)
    );
    let stored = host_store.join("signatures/sha256").join(digest.hex());
    let sig = fs::read(&stored).expect("the signature is stored");
    signature::verify(&key.verifying_key().to_bytes(), &digest, &sig).expect("stored signature");

    // Another key: refused, naming the image, the digest and the key.
    let out = verify(&host_store, &other, &signed);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let other_hex = hex::encode(other.verifying_key().to_bytes());
    for needle in [
        signed.as_str(),
        &digest.to_string(),
        "does not verify with key",
        &other_hex,
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {}", text(&out));
    }
    assert_eq!(fs::read(&stored).expect("stored"), sig, "left as it was");

    // An image nobody signed.
    let out = verify(&host_store, &key, &unsigned);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&unsigned) && stderr.contains("no signature for sha256:"),
        "{}",
        text(&out)
    );

    // Without the network: the stored copy.
    let port = registry.port();
    drop(registry);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the registry still answers"
    );
    let out = verify(&host_store, &key, &signed);
    assert!(out.status.success(), "verify offline: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(stored signature)"),
        "{}",
        text(&out)
    );
    let out = verify(&host_store, &other, &signed);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the stored signature over"),
        "{}",
        text(&out)
    );
    // The library's offline check agrees.
    let store = Store::open(&host_store).expect("store");
    assert_eq!(
        signature::verify_stored(&store, &signed, &key.verifying_key().to_bytes())
            .expect("verify_stored"),
        digest
    );
    let e = signature::verify_stored(&store, &unsigned, &key.verifying_key().to_bytes())
        .expect_err("no stored signature");
    assert!(
        format!("{e}: {}", std::error::Error::source(&e).expect("source"))
            .contains("no stored signature"),
        "{e}"
    );
}
