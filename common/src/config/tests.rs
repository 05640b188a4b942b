//! Tests of the whole pipeline: formats, errors with source, line and key,
//! validation rules, cloud-config mapping, the shipped configs.

use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::admin::tests::ED25519;
use super::system::tests::TEST_CERT;
use super::*;

fn ok(text: &str) -> Config {
    match parse(text.as_bytes(), "test.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn err(text: &str) -> String {
    match parse(text.as_bytes(), "test.toml") {
        Ok(c) => panic!("parsed: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text.as_bytes(), "test.toml") {
        Ok(c) => panic!("parsed: {c:?}"),
        Err(e) => e.problems().to_vec(),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn empty_config_is_the_defaults() {
    let c = ok("");
    assert!(c.network.dhcp_default);
    assert!(c.ntp.enabled);
    assert!(c.ntp.servers.is_empty());
    assert_eq!(c.update.strategy, Some(UpdateStrategy::Off));
    assert_eq!(
        c.update.check_interval.get(),
        Some(&Duration::from_secs(3600))
    );
    assert_eq!(c.update.group, "default");
    assert!(!c.admin.enabled);
    assert!(c.containers.is_empty());
    c.validate().unwrap();
}

#[test]
fn builtin_default_parses_and_validates() {
    let c = parse(BUILTIN_DEFAULT_TOML.as_bytes(), BUILTIN_DEFAULT_SOURCE).unwrap();
    c.validate().unwrap();
    assert!(c.network.dhcp_default);
    // The one container it runs is from the image every slot ships.
    assert_eq!(c.containers.len(), 1);
    assert_eq!(c.containers[0].image, "localhost/atoll/busybox:latest");
    assert_eq!(builtin_default(), c);
}

#[test]
fn every_shipped_config_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("toml" | "yaml" | "yml")) {
            continue;
        }
        let c = validate_file(&path).unwrap_or_else(|e| panic!("{e}"));
        // And the effective config reads back the same.
        assert_eq!(
            parse(c.to_toml().as_bytes(), "round trip").unwrap(),
            c,
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} configs in {dir}");
}

#[test]
fn shipped_examples_say_what_they_should() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");
    let bm = validate_file(format!("{dir}/bare-metal.toml")).unwrap();
    assert_eq!(bm.update.strategy(), UpdateStrategy::Window);
    assert!(bm.network.interfaces.iter().all(|i| i.mac.is_some()));
    assert!(!bm.ntp.servers.is_empty());
    assert!(!bm.sysctl.is_empty());
    let cc = validate_file(format!("{dir}/cloud-config.yaml")).unwrap();
    assert_eq!(cc.hostname.as_deref(), Some("web-1"));
    assert_eq!(cc.files.len(), 2);
    assert_eq!(
        cc.files[1].bytes().unwrap(),
        b"User-agent: *\nDisallow: /\n"
    );
    assert_eq!(cc.ntp.servers, ["10.0.0.123", "pool.ntp.org"]);
    assert_eq!(cc.containers[0].name, "web");
    assert!(cc.admin.enabled);
    assert_eq!(cc.admin.ssh_authorized_keys.len(), 1);
}

#[test]
fn a_full_config() {
    let text = format!(
        r#"
hostname = "node-1.example.com"
ca_certs = ["""{TEST_CERT}"""]

[network]
dhcp_default = false
dns = ["1.1.1.1", "2606:4700:4700::1111"]
search = ["example.com"]

[[network.interfaces]]
name = "eth*"

[[network.interfaces]]
mac = "52:54:00:AA:bb:cc"
addresses = ["10.0.0.5/24", "fd00::5/64"]
gateway4 = "10.0.0.1"
gateway6 = "fd00::1"
routes = [{{ to = "192.168.0.0/16", via = "10.0.0.254", metric = 10 }}]
dns = ["10.0.0.53"]
mtu = 9000
ipv6_slaac = false

[ntp]
servers = ["time.example.com", "10.0.0.123"]

[registries.mirrors]
"docker.io" = ["https://mirror.gcr.io", "http://10.0.0.2:5000"]

[[registries.credentials]]
registry = "ghcr.io"
token = "ghp_secret"

[[registries.credentials]]
registry = "registry.local:5000"
username = "me"
password = "hunter2"

[sysctl]
"net.ipv4.ip_forward" = true
"vm.max_map_count" = 262144
"kernel.pid_max" = "65536"

[update]
server = "https://updates.example.com"
strategy = "window"
check_interval = "15m"
group = "canary"

[update.window]
days = ["sat", "sun"]
start = "02:30"
length = "1h30m"
time_zone = "-05:00"

[admin]
enabled = true
image = "ghcr.io/example/admin:1"
ssh_authorized_keys = ["{ED25519}"]

[[containers]]
name = "db"
image = "docker.io/library/postgres:16"
env = {{ POSTGRES_PASSWORD = "x" }}
volumes = ["pgdata:/var/lib/postgresql/data"]
memory = "1G"
restart = "on-failure"
max_retries = 5
signature_key = "{key}"

[[containers]]
name = "web"
image = "docker.io/library/nginx:1.27"
command = ["nginx"]
args = ["-g", "daemon off;"]
ports = ["8080:80", "8443:443/tcp"]
depends_on = ["db"]
user = "101:101"
workdir = "/srv"
cpus = 1.5
pids_limit = 200
capabilities_drop = ["ALL"]
capabilities_add = ["CAP_NET_BIND_SERVICE"]
healthcheck = {{ command = ["curl", "-f", "http://localhost/"], interval = "30s" }}

[[pods]]
name = "app"
ports = ["9000:9000"]
restart = "always"

[[pods.init_containers]]
name = "migrate"
image = "example/app:1"
command = ["migrate"]
depends_on = ["db"]

[[pods.containers]]
name = "app"
image = "example/app:1"

[[pods.containers]]
name = "sidecar"
image = "example/sidecar:1"
depends_on = ["app"]

[[files]]
path = "/var/lib/app/config.json"
content = "{{}}"
mode = "0600"
owner = "1000:1000"

[[files]]
path = "/var/lib/app/blob"
content = "aGVsbG8="
encoding = "base64"
"#,
        key = "ab".repeat(32),
    );
    let c = ok(&text);
    let eth = &c.network.interfaces[0];
    assert_eq!(eth.dhcp4, Some(true));
    let stat = &c.network.interfaces[1];
    assert_eq!(stat.dhcp4, Some(false));
    assert_eq!(
        stat.mac.as_ref().unwrap().get(),
        Some(&MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]))
    );
    assert_eq!(stat.addresses[0].get().unwrap().prefix, 24);
    assert_eq!(c.sysctl["net.ipv4.ip_forward"].as_str(), "1");
    assert_eq!(c.sysctl["vm.max_map_count"].as_str(), "262144");
    assert_eq!(
        c.containers[0].memory.as_ref().unwrap().get(),
        Some(&ByteSize(1 << 30))
    );
    assert_eq!(
        c.containers[1].healthcheck.as_ref().unwrap().timeout.text(),
        "5s"
    );
    assert_eq!(c.files[0].mode.get(), Some(&FileMode(0o600)));
    assert_eq!(c.files[1].bytes().unwrap(), b"hello");
    let w = c.update.window.as_ref().unwrap();
    assert_eq!(w.time_zone.get(), Some(&UtcOffset(-300)));
    assert_eq!(w.days, [Weekday::Sat, Weekday::Sun]);

    // Round trip, and redaction.
    assert_eq!(parse(c.to_toml().as_bytes(), "again").unwrap(), c);
    let shown = c.to_toml_redacted();
    assert!(
        !shown.contains("hunter2") && !shown.contains("ghp_secret"),
        "{shown}"
    );
    assert_eq!(shown.matches(REDACTED).count(), 2);
    assert!(c.to_toml().contains("hunter2"));
}

#[test]
fn toml_syntax_error_has_source_line_and_column() {
    let e = err("hostname = \"a\"\n[network\n");
    assert!(e.starts_with("test.toml:2:9: "), "{e}");
    assert!(e.contains("invalid table header"), "{e}");
    assert_eq!(e.lines().count(), 1);
}

#[test]
fn unknown_key_at_depth() {
    let e = err("[network]\n[[network.interfaces]]\nname = \"eth0\"\nmtux = 1500\n");
    assert!(
        e.starts_with("test.toml:4:1: key `network.interfaces[0].mtux`: unknown field `mtux`"),
        "{e}"
    );
}

#[test]
fn unknown_top_level_key() {
    let e = err("\nhostnme = \"x\"\n");
    assert!(
        e.starts_with("test.toml:2:1: key `hostnme`: unknown field `hostnme`"),
        "{e}"
    );
}

#[test]
fn wrong_type() {
    let e = err("[network]\n[[network.interfaces]]\nname = \"eth0\"\nmtu = \"big\"\n");
    assert_eq!(
        e,
        "test.toml:4:7: key `network.interfaces[0].mtu`: invalid type: string \"big\", expected u32"
    );
    let e = err("[[containers]]\nname = \"a\"\nimage = \"b\"\nrestart = \"sometimes\"\n");
    assert!(
        e.starts_with("test.toml:4:11: key `containers[0].restart`: unknown variant `sometimes`"),
        "{e}"
    );
}

#[test]
fn mtu_out_of_range() {
    let e = err("[network]\n[[network.interfaces]]\nname = \"eth0\"\nmtu = 70000\n");
    assert_eq!(
        e,
        "test.toml:4:7: key `network.interfaces[0].mtu`: invalid value: integer `70000`, expected an MTU from 68 to 65535"
    );
}

#[test]
fn bad_cidr_is_located() {
    let text = "[network]\n\n[[network.interfaces]]\nname = \"eth0\"\naddresses = [\"10.0.0.5/24\", \"10.0.0.300/24\"]\n";
    let e = err(text);
    assert!(
        e.starts_with("test.toml:5:29: key `network.interfaces[0].addresses[1]`: invalid value: string \"10.0.0.300/24\", expected an address with a prefix length"),
        "{e}"
    );
}

#[test]
fn every_problem_is_reported() {
    let text = r#"hostname = "-bad-"

[network]
[[network.interfaces]]
name = "eth0"
addresses = ["nope"]
mtu = 10

[[containers]]
name = "web"
image = "nginx"
depends_on = ["ghost"]

[[containers]]
name = "web"
image = "has space"
memory = "lots"

[[files]]
path = "/etc/passwd"
"#;
    let ps = problems(text);
    let keys: Vec<_> = ps
        .iter()
        .map(|p| p.key.clone().unwrap_or_default())
        .collect();
    for want in [
        "hostname",
        "network.interfaces[0].addresses[0]",
        "network.interfaces[0].mtu",
        "containers[1].name",
        "containers[1].image",
        "containers[1].memory",
        "containers[0].depends_on[0]",
        "files[0].path",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "no problem for {want}: {keys:?}"
        );
    }
    assert!(ps.iter().all(|p| p.line.is_some()), "{ps:?}");
    let files = ps
        .iter()
        .find(|p| p.key.as_deref() == Some("files[0].path"))
        .unwrap();
    assert_eq!(files.line, Some(20));
    assert!(files.message.contains("/etc/passwd") && files.message.contains("under /var"));
    let dup = ps
        .iter()
        .find(|p| p.key.as_deref() == Some("containers[1].name"))
        .unwrap();
    assert_eq!(dup.line, Some(15));
    assert!(dup.message.contains("containers[0]"), "{}", dup.message);
}

#[test]
fn interface_rules() {
    let ps = problems("[[network.interfaces]]\nmtu = 1500\n\n[[network.interfaces]]\nname = \"eth0\"\nmac = \"52:54:00:00:00:01\"\n\n[[network.interfaces]]\nname = \"eth0\"\n");
    let msgs: Vec<_> = ps.iter().map(|p| p.render("t")).collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("t:1:1: key `network.interfaces[0]`: missing `name` or `mac`")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("key `network.interfaces[1]`: set `name` or `mac`, not both")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("key `network.interfaces[2]`: name `eth0` is already picked")),
        "{msgs:?}"
    );

    let e = err("[[network.interfaces]]\nname = \"eth0\"\nroutes = [{ to = \"0.0.0.0/0\", via = \"fd00::1\" }]\n");
    assert!(e.contains("routes[0].via`: `fd00::1` and the destination `0.0.0.0/0` are not of the same IP version"), "{e}");
    let e = err("[[network.interfaces]]\nname = \"eth0\"\ngateway4 = \"fd00::1\"\n");
    assert!(
        e.contains("gateway4`: invalid value: string \"fd00::1\", expected an IPv4 address"),
        "{e}"
    );
}

#[test]
fn update_rules() {
    let e = err("[update]\nstrategy = \"window\"\nserver = \"https://u.example.com\"\n");
    assert!(
        e.contains("key `update.window`: missing: strategy = \"window\" needs [update.window]"),
        "{e}"
    );
    let e = err("[update]\nstrategy = \"immediate\"\n");
    assert!(e.contains("key `update.server`: missing"), "{e}");
    let e = err("[update]\nserver = \"https://u.example.com\"\nstrategy = \"window\"\n[update.window]\ndays = [\"mon\", \"mon\"]\nstart = \"25:00\"\nlength = \"2d\"\ntime_zone = \"Europe/Oslo\"\n");
    for want in [
        "update.window.days[1]",
        "update.window.start",
        "update.window.length",
        "update.window.time_zone",
    ] {
        assert!(e.contains(&format!("key `{want}`")), "{want}: {e}");
    }
    let e = err("[update]\nserver = \"ftp://x\"\n");
    assert!(
        e.contains("key `update.server`: invalid value: string \"ftp://x\""),
        "{e}"
    );
    let e = err("[update.window]\ndays = [\"someday\"]\n");
    assert!(
        e.contains("key `update.window.days[0]`: unknown variant `someday`"),
        "{e}"
    );
    // The default strategy follows the server.
    assert_eq!(
        ok("[update]\nserver = \"https://u.example.com\"\n")
            .update
            .strategy,
        Some(UpdateStrategy::Immediate)
    );
}

#[test]
fn workload_rules() {
    let text = r#"
[[containers]]
name = "a"
image = "x"
depends_on = ["b"]
ports = ["80:80"]
network = "host"

[[containers]]
name = "b"
image = "x"
depends_on = ["a"]
ports = ["80:80"]
capabilities_add = ["CAP_FLY"]
cpus = 0.0
signature_key = "c2hvcnQ="
max_retries = 3

[[pods]]
name = "p"
[[pods.containers]]
name = "c"
image = "x"
ports = ["90:90"]
depends_on = ["p"]
"#;
    let e = err(text);
    for want in [
        "key `containers[0].ports`: ports are published only with network = \"bridge\"",
        "key `containers[1].ports[0]`: host port 80:80 is published by `containers[0].ports[0]` already",
        "key `containers[1].capabilities_add[0]`: unknown capability",
        "key `containers[1].cpus`: invalid value: float `0`",
        "key `containers[1].signature_key`: invalid value",
        "5 bytes, expected 32",
        "key `containers[1].max_retries`: only used with restart = \"on-failure\"",
        "key `pods[0].containers[0].ports`: a pod's containers share the pod's network",
        "key `pods[0].containers[0].depends_on[0]`: a pod's container cannot depend on its own pod",
        "depends_on goes round in a circle: a → b → a",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
    let e = err(
        "[[containers]]\nimage = \"x\"\n[[pods]]\nname = \"q\"\n[[containers]]\nname = \"q\"\n",
    );
    assert!(e.contains("key `containers[0].name`: missing"), "{e}");
    assert!(
        e.contains("key `pods[0].containers`: a pod needs at least one container"),
        "{e}"
    );
    assert!(e.contains("`q` is used by `containers[1]` already"), "{e}");
}

#[test]
fn user_namespace_key() {
    let c = ok(r#"
[[containers]]
name = "auto"
image = "x"
user_namespace = true

[[containers]]
name = "pinned"
image = "x"
user_namespace = { uid = 200000, gid = 300000, size = 1000 }

[[containers]]
name = "plain"
image = "x"
user_namespace = false
"#);
    assert_eq!(c.containers[0].user_namespace, UserNamespace::Auto);
    assert_eq!(
        c.containers[1].user_namespace,
        UserNamespace::Explicit(IdRange {
            uid: 200_000,
            gid: 300_000,
            size: 1000
        })
    );
    assert!(c.containers[2].user_namespace.is_off());
    // The effective config reads back the same (`false` is left out).
    let text = c.to_toml();
    assert_eq!(text.matches("user_namespace").count(), 2, "{text}");
    assert_eq!(ok(&text), c);
    let r = userns::ranges(&c.containers);
    assert_eq!(r.len(), 2);
    assert_eq!(r["pinned"].uid, 200_000);

    let e = err(r#"
[[containers]]
name = "a"
image = "x"
user_namespace = { uid = 200000, gid = 200000, size = 65536 }

[[containers]]
name = "b"
image = "x"
user_namespace = { uid = 250000, gid = 900000, size = 10 }

[[containers]]
name = "low"
image = "x"
user_namespace = { uid = 1000, gid = 200000000, size = 10 }

[[containers]]
name = "priv"
image = "x"
privileged = true
user_namespace = true

[[containers]]
name = "hostnet"
image = "x"
network = "host"
user_namespace = true

[[pods]]
name = "p"
[[pods.containers]]
name = "c"
image = "x"
user_namespace = true
"#);
    for want in [
        "key `containers[1].user_namespace`: uids 250000-250009, gids 900000-900009 overlaps the range of `containers[0].user_namespace`",
        "key `containers[2].user_namespace`: `uid` = 1000 is below 100000",
        "key `containers[3].user_namespace`: a privileged container",
        "key `containers[4].user_namespace`: a user namespace needs a network namespace of its own",
        "key `pods[0].containers[0].user_namespace`: a pod's containers share the pod's network",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
    let e = err("[[containers]]\nname = \"a\"\nimage = \"x\"\nuser_namespace = \"yes\"\n");
    assert!(e.contains("key `containers[0].user_namespace`"), "{e}");
    assert!(e.contains("true, false, or a table"), "{e}");
    let e = err(
        "[[containers]]\nname = \"a\"\nimage = \"x\"\nuser_namespace = { uid = 200000, size = 5 }\n",
    );
    assert!(e.contains("missing field `gid`"), "{e}");
    let e = err(
        "[[containers]]\nname = \"a\"\nimage = \"x\"\nuser_namespace = { uid = 200000, gid = 200000, size = 5, shift = 1 }\n",
    );
    assert!(e.contains("unknown field `shift`"), "{e}");
}

#[test]
fn registry_and_admin_rules() {
    let e = err("[registries.mirrors]\n\"docker.io\" = [\"mirror.gcr.io\"]\n[[registries.credentials]]\nregistry = \"ghcr.io\"\ntoken = \"t\"\nusername = \"u\"\n[admin]\nenabled = true\nssh_authorized_keys = [\"ssh-rsa nope\"]\n");
    for want in [
        "key `registries.mirrors.\"docker.io\"[0]`: invalid value: string \"mirror.gcr.io\"",
        "key `registries.credentials[0]`: give `username` and `password`, or `token`, not both",
        "key `admin.image`: missing",
        "key `admin.ssh_authorized_keys[0]`: invalid SSH public key",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
}

#[test]
fn sysctl_and_ca_rules() {
    let e = err("ca_certs = [\"not a cert\"]\n[sysctl]\n\"net..x\" = 1\n\"/proc\" = 1\n");
    assert!(e.contains("test.toml:1:13: key `ca_certs[0]`: invalid CA certificate: no `-----BEGIN CERTIFICATE-----` block"), "{e}");
    assert!(
        e.contains("key `sysctl.\"net..x\"`: invalid sysctl name"),
        "{e}"
    );
    assert!(
        e.contains("key `sysctl.\"/proc\"`: invalid sysctl name"),
        "{e}"
    );
    let e = err("[sysctl]\n\"a.b\" = [1]\n");
    assert!(e.contains("test.toml:2:9: key `sysctl.\"a.b\"`: invalid type: sequence, expected a string, an integer or a boolean"), "{e}");
}

#[test]
fn file_rules() {
    let e = err("[[files]]\npath = \"/var/x\"\nmode = \"0999\"\nencoding = \"base64\"\ncontent = \"!!\"\nowner = \"www-data\"\n[[files]]\npath = \"/var/x\"\n[[files]]\npath = \"/var/../etc/shadow\"\n");
    for want in [
        "test.toml:3:8: key `files[0].mode`: invalid value: string \"0999\", expected an octal mode string",
        "key `files[0].content`: encoding is base64, but the content is not base64",
        "key `files[0].owner`",
        "key `files[1].path`: `/var/x` is written by an earlier entry already",
        "key `files[2].path`: `/var/../etc/shadow` cannot be written: not normalised",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
    // TOML's octal integers are not modes.
    let e = err("[[files]]\npath = \"/var/x\"\nmode = 0o644\n");
    assert!(
        e.contains("key `files[0].mode`: invalid type: integer `420`"),
        "{e}"
    );
}

#[test]
fn gzip_is_decompressed() {
    let c = parse(&gzip(b"hostname = \"zipped\"\n"), "gz").unwrap();
    assert_eq!(c.hostname.as_deref(), Some("zipped"));
    let c = parse(&gzip(b"#cloud-config\nhostname: zipped-yaml\n"), "gz").unwrap();
    assert_eq!(c.hostname.as_deref(), Some("zipped-yaml"));
}

#[test]
fn gzip_bomb_is_refused() {
    let big = vec![b' '; MAX_CONFIG_BYTES + 1];
    let e = parse(&gzip(&big), "bomb").unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::TooLarge {
                decompressed: true,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "bomb: the config is larger than 1048576 bytes once decompressed"
    );
    let e = parse(&big, "big").unwrap_err();
    assert_eq!(
        e.to_string(),
        "big: the config is larger than 1048576 bytes"
    );
    let e = parse(&[0x1f, 0x8b, 0, 1, 2], "broken").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("broken: gzip data that does not decompress"),
        "{e}"
    );
}

#[test]
fn not_utf8() {
    let e = parse(b"hostname = \"a\"\nx = \"\xff\"\n", "bin").unwrap_err();
    assert_eq!(
        e.to_string(),
        "bin:2:6: not UTF-8 text (invalid byte at offset 20)"
    );
}

#[test]
fn bom_and_leading_space() {
    assert_eq!(
        ok("\u{feff}hostname = \"bom\"\n").hostname.as_deref(),
        Some("bom")
    );
    let c = parse("\u{feff}\n  #cloud-config\nhostname: y\n".as_bytes(), "u").unwrap();
    assert_eq!(c.hostname.as_deref(), Some("y"));
}

#[test]
fn other_user_data_kinds_are_refused() {
    let e = parse(b"#!/bin/sh\necho hi\n", "ud").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("ud:1: script user data is not supported: Atoll has no shell"),
        "{e}"
    );
    let e = parse(b"Content-Type: multipart/mixed; boundary=x\n", "ud").unwrap_err();
    assert!(e.to_string().contains("MIME multi-part"), "{e}");
    let e = parse(b"#cloud-config-archive\n- type: x\n", "ud").unwrap_err();
    assert!(
        e.to_string().contains("this kind of cloud-init user data"),
        "{e}"
    );
}

#[test]
fn validate_file_names_the_path() {
    let e = validate_file("/nonexistent/atoll.toml").unwrap_err();
    assert!(e
        .to_string()
        .starts_with("/nonexistent/atoll.toml: cannot read the file"));
    let dir = std::env::temp_dir().join(format!("atoll-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[ntp]\nservers = [\"not a host\"]\n").unwrap();
    let e = validate_file(&f).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:2:12: key `ntp.servers[0]`", f.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// cloud-config

fn cloud(text: &str) -> Result<Config, String> {
    parse(text.as_bytes(), "user-data").map_err(|e| e.to_string())
}

#[test]
fn cloud_config_mapping() {
    let text = format!(
        r#"#cloud-config
fqdn: host.example.com
ssh_authorized_keys:
  - {ED25519}
write_files:
  - path: /var/lib/a.txt
    content: hello
    permissions: '0600'
    owner: root:root
  - path: /var/lib/b.bin
    encoding: gz+b64
    content: {gz}
  - path: /var/lib/c.txt
    permissions: 0640
ntp:
  enabled: yes
  servers: [ntp.example.com]
  pools: [pool.ntp.org]
ca-certs:
  trusted:
    - |
{cert}
"#,
        gz = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            gzip(b"zipped\n")
        ),
        cert = TEST_CERT
            .lines()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let c = cloud(&text).unwrap();
    assert_eq!(c.hostname.as_deref(), Some("host.example.com"));
    assert!(
        !c.admin.enabled,
        "ssh keys do not enable the admin container"
    );
    assert_eq!(c.admin.ssh_authorized_keys, [ED25519]);
    assert_eq!(c.files[0].mode.get(), Some(&FileMode(0o600)));
    assert_eq!(c.files[0].owner.as_deref(), Some("root:root"));
    assert_eq!(c.files[1].bytes().unwrap(), b"zipped\n");
    assert_eq!(c.files[2].mode.get(), Some(&FileMode(0o640)));
    assert_eq!(c.files[2].content, "");
    assert_eq!(c.ntp.servers, ["ntp.example.com", "pool.ntp.org"]);
    assert_eq!(c.ca_certs.len(), 1);
    // The effective config reads back the same as TOML.
    assert_eq!(parse(c.to_toml().as_bytes(), "again").unwrap(), c);
}

#[test]
fn cloud_config_hostname_wins_over_fqdn() {
    let c = cloud("#cloud-config\nhostname: short\nfqdn: short.example.com\n").unwrap();
    assert_eq!(c.hostname.as_deref(), Some("short"));
}

#[test]
fn cloud_config_atoll_table_merges() {
    let c = cloud(
        "#cloud-config\nhostname: outer\nntp:\n  servers: [b.example.com]\natoll:\n  hostname: inner\n  ntp:\n    enabled: false\n    servers: [a.example.com]\n  admin:\n    enabled: true\n    image: admin:1\n",
    )
    .unwrap();
    assert_eq!(c.hostname.as_deref(), Some("outer"));
    assert_eq!(c.ntp.servers, ["a.example.com", "b.example.com"]);
    assert!(!c.ntp.enabled);
    assert!(c.admin.enabled);
}

#[test]
fn cloud_config_refused_keys() {
    let e = cloud("#cloud-config\nhostname: a\nruncmd:\n  - echo hi\n").unwrap_err();
    assert_eq!(
        e,
        "user-data:4:3: key `runcmd`: not supported: Atoll has no shell: run it in a container ([[containers]])"
    );
    let e = cloud("#cloud-config\npackages: [vim]\n").unwrap_err();
    assert!(
        e.starts_with(
            "user-data:2:11: key `packages`: not supported: Atoll has no package manager"
        ),
        "{e}"
    );
    let e = cloud("#cloud-config\npackage_update: true\n").unwrap_err();
    assert!(
        e.contains("key `package_update`: not supported: Atoll has no package manager"),
        "{e}"
    );
    let e = cloud("#cloud-config\nusers:\n  - name: bob\n").unwrap_err();
    assert!(
        e.contains("key `users`: not supported: Atoll has no login users"),
        "{e}"
    );
    let e = cloud("#cloud-config\nbootcmd: [x]\n").unwrap_err();
    assert!(
        e.contains("key `bootcmd`: not supported: Atoll has no shell"),
        "{e}"
    );
}

#[test]
fn cloud_config_unknown_key() {
    let e = cloud("#cloud-config\nhostname: a\ntimezone: UTC\n").unwrap_err();
    assert!(
        e.starts_with("user-data:3:1: key `timezone`: unknown field `timezone`"),
        "{e}"
    );
    let e = cloud("#cloud-config\nwrite_files:\n  - path: /var/a\n    defer: true\n").unwrap_err();
    assert!(
        e.starts_with("user-data:4:5: key `write_files[0].defer`: unknown field `defer`"),
        "{e}"
    );
}

#[test]
fn cloud_config_write_files_outside_var() {
    let e = cloud("#cloud-config\nwrite_files:\n  - path: /var/ok\n    content: x\n  - path: /etc/motd\n    content: hi\n").unwrap_err();
    assert_eq!(
        e,
        "user-data:5:11: key `write_files[1].path`: `/etc/motd` cannot be written: not under /var (the rest of the file system is read-only)"
    );
}

#[test]
fn cloud_config_value_errors_point_into_the_yaml() {
    let e = cloud("#cloud-config\nwrite_files:\n  - path: /var/a\n    permissions: '0999'\n")
        .unwrap_err();
    assert!(
        e.starts_with("user-data:4:18: key `write_files[0].permissions`: invalid value"),
        "{e}"
    );
    let e = cloud("#cloud-config\nwrite_files:\n  - path: /var/a\n    encoding: gz\n").unwrap_err();
    assert!(
        e.starts_with("user-data:4:15: key `write_files[0].encoding`: raw gzip"),
        "{e}"
    );
    let e = cloud(
        "#cloud-config\nwrite_files:\n  - path: /var/a\n    encoding: b64\n    content: '!!'\n",
    )
    .unwrap_err();
    assert!(
        e.starts_with("user-data:5:14: key `write_files[0].content`: encoding is base64"),
        "{e}"
    );
    let e = cloud("#cloud-config\natoll:\n  network:\n    interfaces:\n      - name: eth0\n        mtu: 70000\n").unwrap_err();
    assert_eq!(
        e,
        "user-data:6:14: key `atoll.network.interfaces[0].mtu`: invalid value: integer `70000`, expected an MTU from 68 to 65535"
    );
    let e = cloud("#cloud-config\nssh_authorized_keys:\n  - nope\n").unwrap_err();
    assert!(
        e.starts_with("user-data:3:5: key `ssh_authorized_keys[0]`: invalid SSH public key"),
        "{e}"
    );
    let e = cloud("#cloud-config\nntp:\n  pools: [\"bad host\"]\n").unwrap_err();
    assert!(e.starts_with("user-data:3:11: key `ntp.pools[0]`"), "{e}");
    let e = cloud("#cloud-config\nca_certs:\n  remove_defaults: true\n").unwrap_err();
    assert!(
        e.contains("key `ca_certs.remove_defaults`: not supported"),
        "{e}"
    );
}

#[test]
fn cloud_config_type_and_syntax_errors() {
    let e = cloud("#cloud-config\natoll:\n  network:\n    interfaces:\n      - name: eth0\n        mtu: big\n").unwrap_err();
    assert_eq!(
        e,
        "user-data:6:14: key `atoll.network.interfaces[0].mtu`: invalid type: string \"big\", expected u32"
    );
    let e = cloud("#cloud-config\nhostname: \"a\n").unwrap_err();
    assert!(e.starts_with("user-data:3:1: "), "{e}");
    assert!(e.contains("quoted scalar"), "{e}");
    let e = cloud("#cloud-config\nntp:\n  enabled: maybe\n").unwrap_err();
    assert!(
        e.starts_with("user-data:3:12: key `ntp.enabled`: invalid value: string \"maybe\""),
        "{e}"
    );
}

#[test]
fn empty_cloud_config() {
    let c = cloud("#cloud-config\n").unwrap();
    assert_eq!(c, ok(""));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!(
        "hostname = {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse(deep.as_bytes(), "deep").is_err());
    let deep = format!("x = {}1{}\n", "{ a = ".repeat(50_000), " }".repeat(50_000));
    assert!(parse(deep.as_bytes(), "deep").is_err());
    let deep = format!(
        "#cloud-config\nhostname: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = parse(deep.as_bytes(), "deep").unwrap_err().to_string();
    assert!(
        e.starts_with("deep:2:267: flow collections ([ ] and { }) nested more than 256 deep"),
        "{e}"
    );
}

#[test]
fn big_yaml_is_read_in_reasonable_time() {
    // 1 MiB inputs of the shapes a parser may be slow on; each must be
    // answered (either way) quickly even in a debug build.
    let inputs = [
        format!("#cloud-config\n{}", "a: b\n".repeat(200_000)),
        format!("#cloud-config\nhostname: {}\n", "x".repeat(1_000_000)),
        format!(
            "#cloud-config\nntp:\n  servers: [{}]\n",
            "a, ".repeat(300_000)
        ),
        format!(
            "#cloud-config\nx: {}1{}\n",
            "[".repeat(256),
            "]".repeat(256)
        )
        .repeat(1000),
        format!("#cloud-config\n{}", "- ".repeat(400_000)),
    ];
    for text in inputs {
        let t = std::time::Instant::now();
        let _ = parse(&text.as_bytes()[..text.len().min(MAX_CONFIG_BYTES)], "big");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{:?} for {}…",
            t.elapsed(),
            &text[..40]
        );
    }
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut text = "#cloud-config\natoll:\n  sysctl: {}\n  files: []\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n".to_string();
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    // Unknown keys stop it anyway, but never after expanding 10^10 nodes.
    assert!(parse(text.as_bytes(), "bomb").is_err());
}
