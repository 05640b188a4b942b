//! Property tests: generated configs survive `to_toml` → `parse`, and
//! `parse` never panics, whatever the bytes.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

use super::admin::tests::{ECDSA, ED25519};
use super::system::tests::TEST_CERT;
use super::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}[a-z0-9]"
}

fn hostname() -> impl Strategy<Value = String> {
    vec(label(), 1..4).prop_map(|l| l.join("."))
}

fn ipv4() -> impl Strategy<Value = String> {
    any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string())
}

fn ipv6() -> impl Strategy<Value = String> {
    any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string())
}

fn ip() -> impl Strategy<Value = String> {
    prop_oneof![ipv4(), ipv6()]
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (ipv4(), 0u8..=32).prop_map(|(a, p)| format!("{a}/{p}")),
        (ipv6(), 0u8..=128).prop_map(|(a, p)| format!("{a}/{p}")),
    ]
}

/// Free text, including quotes, backslashes, newlines and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    "[ -~\n\té☃\"'\\\\]{0,30}"
}

fn duration() -> impl Strategy<Value = String> {
    (1u64..10_000_000).prop_map(|ms| units::format_duration(std::time::Duration::from_millis(ms)))
}

fn interface() -> impl Strategy<Value = Interface> {
    (
        prop_oneof![
            "(eth|en|wl)[a-z0-9*?]{0,8}".prop_map(|n| (Some(n), None)),
            any::<[u8; 6]>().prop_map(|m| (None, Some(Parsed::new(MacAddr(m).to_string())))),
        ],
        vec(cidr(), 0..3),
        option::of(ipv4()),
        option::of(ipv6()),
        vec((ipv4(), 0u8..=32, ipv4(), option::of(any::<u32>())), 0..2),
        vec(ip(), 0..2),
        option::of(68u32..=65535),
        any::<bool>(),
        option::of(any::<bool>()),
    )
        .prop_map(
            |((name, mac), addrs, gw4, gw6, routes, dns, mtu, slaac, dhcp4)| {
                let addresses: Vec<Parsed<IpCidr>> = addrs.into_iter().map(Parsed::new).collect();
                // Some address source, or validation refuses the interface.
                let dhcp4 = if !slaac && addresses.is_empty() {
                    Some(true)
                } else {
                    dhcp4
                };
                let mut i = Interface {
                    name,
                    mac,
                    dhcp4,
                    addresses,
                    gateway4: gw4.map(Parsed::new),
                    gateway6: gw6.map(Parsed::new),
                    routes: routes
                        .into_iter()
                        .map(|(to, p, via, metric)| Route {
                            to: Parsed::new(format!("{to}/{p}")),
                            via: Parsed::new(via),
                            metric,
                        })
                        .collect(),
                    dns: dns.into_iter().map(Parsed::new).collect(),
                    mtu,
                    ipv6_slaac: slaac,
                };
                i.dhcp4 = Some(i.dhcp4());
                i
            },
        )
}

fn network() -> impl Strategy<Value = Network> {
    (
        any::<bool>(),
        vec(interface(), 0..4),
        vec(ip(), 0..3),
        vec(hostname(), 0..2),
    )
        .prop_map(|(dhcp_default, mut interfaces, dns, search)| {
            // One entry per name or MAC.
            let mut seen = Vec::new();
            interfaces.retain(|i| {
                let id = (i.name.clone(), i.mac.as_ref().map(|m| m.text().to_string()));
                let fresh = !seen.contains(&id);
                seen.push(id);
                fresh
            });
            Network {
                dhcp_default,
                interfaces,
                dns: dns.into_iter().map(Parsed::new).collect(),
                search,
            }
        })
}

fn container(name: String) -> impl Strategy<Value = Container> {
    (
        (
            "[a-z]{1,8}(/[a-z]{1,8})?(:[0-9]{1,3})?",
            vec(text(), 0..3),
            vec(text(), 0..3),
            btree_map("[A-Z_][A-Z0-9_]{0,8}", text(), 0..3),
            prop_oneof![
                Just((RestartPolicy::Always, None)),
                Just((RestartPolicy::No, None)),
                option::of(any::<u32>()).prop_map(|r| (RestartPolicy::OnFailure, r)),
            ],
            vec(
                (
                    prop_oneof!["[a-z][a-z0-9]{0,6}", "/var/[a-z]{1,6}"],
                    prop::sample::select(vec!["", ":ro", ":rw"]),
                ),
                0..3,
            ),
        ),
        (
            any::<bool>(),
            option::of("[0-9]{1,5}(:[0-9]{1,5})?"),
            option::of("/[a-z]{1,8}"),
            option::of((1u64..4096, prop::sample::select(vec!["M", "G", "MiB", ""]))),
            option::of(0.01f64..64.0),
            option::of(1u32..100_000),
            vec(prop::sample::select(workload::CAPABILITIES.to_vec()), 0..3),
            vec(prop::sample::select(workload::CAPABILITIES.to_vec()), 0..3),
            any::<bool>(),
            option::of((
                vec(text(), 1..3),
                duration(),
                duration(),
                any::<u32>(),
                prop_oneof![Just("0s".to_string()), duration()],
            )),
            option::of(any::<[u8; 32]>().prop_map(hex::encode)),
        ),
    )
        .prop_map(
            move |(
                (image, command, args, env, (restart, max_retries), volumes),
                (
                    read_only,
                    user,
                    workdir,
                    memory,
                    cpus,
                    pids_limit,
                    cap_add,
                    cap_drop,
                    privileged,
                    hc,
                    key,
                ),
            )| {
                // One target per volume.
                let volumes = volumes
                    .into_iter()
                    .enumerate()
                    .map(|(i, (src, opt))| Parsed::new(format!("{src}:/t{i}{opt}")))
                    .collect();
                Container {
                    name: name.clone(),
                    image,
                    command,
                    args,
                    env,
                    restart,
                    max_retries,
                    network: NetworkMode::Bridge,
                    ports: Vec::new(),
                    volumes,
                    read_only,
                    user,
                    workdir,
                    memory: memory
                        .map(|(n, u)| Parsed::new(format!("{n}{u}")))
                        .filter(|m: &Parsed<ByteSize>| m.get().is_some_and(|s| s.0 >= 1 << 20)),
                    cpus,
                    pids_limit,
                    capabilities_add: cap_add.into_iter().map(String::from).collect(),
                    capabilities_drop: cap_drop.into_iter().map(String::from).collect(),
                    privileged,
                    user_namespace: UserNamespace::Off,
                    depends_on: Vec::new(),
                    healthcheck: hc.map(|(command, interval, timeout, retries, start_period)| {
                        Healthcheck {
                            command,
                            interval: Parsed::new(interval),
                            timeout: Parsed::new(timeout),
                            retries,
                            start_period: Parsed::new(start_period),
                        }
                    }),
                    signature_key: key.map(Parsed::new),
                }
            },
        )
}

fn containers() -> impl Strategy<Value = Vec<Container>> {
    (0usize..3)
        .prop_flat_map(|n| {
            (0..n)
                .map(|i| container(format!("c{i}")))
                .collect::<Vec<_>>()
        })
        .prop_map(|mut cs| {
            // Each may depend on the ones before it (no cycles); ports unique.
            for (i, c) in cs.iter_mut().enumerate() {
                if i > 0 {
                    c.depends_on = vec![format!("c{}", i - 1)];
                }
                c.ports = vec![Parsed::new(format!("{}:80/tcp", 8000 + i))];
            }
            cs
        })
}

fn pods() -> impl Strategy<Value = Vec<Pod>> {
    option::of((
        container("main".into()),
        option::of(container("init".into())),
    ))
    .prop_map(|p| {
        p.map(|(mut main, init)| {
            let clean = |c: &mut Container| {
                c.restart = RestartPolicy::Always;
                c.max_retries = None;
                c.ports.clear();
                c.depends_on.clear();
            };
            clean(&mut main);
            let init: Vec<Container> = init
                .map(|mut c| {
                    clean(&mut c);
                    c
                })
                .into_iter()
                .collect();
            Pod {
                name: "pod".into(),
                init_containers: init,
                containers: vec![main],
                restart: RestartPolicy::OnFailure,
                max_retries: Some(3),
                network: NetworkMode::Bridge,
                ports: vec![Parsed::new("9000:9000/udp")],
            }
        })
        .into_iter()
        .collect()
    })
}

fn update() -> impl Strategy<Value = Update> {
    (
        option::of(hostname().prop_map(|h| format!("https://{h}/atoll"))),
        any::<bool>(),
        vec(prop::sample::select(Weekday::ALL.to_vec()), 1..3),
        (0u8..24, 0u8..60),
        (1u64..=24 * 60),
        prop::sample::select(vec!["UTC", "+02:00", "-05:30", "Z"]),
        (60u64..100_000),
        label(),
    )
        .prop_map(
            |(server, window, mut days, (h, m), len_min, tz, check, group)| {
                days.dedup();
                let window = window && server.is_some();
                let mut u = Update {
                    server,
                    strategy: None,
                    window: window.then(|| UpdateWindow {
                        days,
                        start: Parsed::new(format!("{h:02}:{m:02}")),
                        length: Parsed::new(units::format_duration(
                            std::time::Duration::from_secs(len_min * 60),
                        )),
                        time_zone: Parsed::new(tz),
                    }),
                    check_interval: Parsed::new(units::format_duration(
                        std::time::Duration::from_secs(check),
                    )),
                    group,
                    health_deadline: Parsed::new(units::format_duration(
                        std::time::Duration::from_secs(check),
                    )),
                    tries: (check % 9) as u8 + 1,
                    ready_deadline: Parsed::new(units::format_duration(
                        std::time::Duration::from_secs(check / 2 + 10),
                    )),
                };
                if window {
                    u.strategy = Some(UpdateStrategy::Window);
                }
                u.fill_defaults();
                u
            },
        )
}

fn config() -> impl Strategy<Value = Config> {
    (
        (
            option::of(hostname()),
            vec(Just(TEST_CERT.to_string()), 0..2),
            network(),
            (any::<bool>(), vec(prop_oneof![hostname(), ip()], 0..3)),
            (
                btree_map(
                    hostname(),
                    vec(hostname().prop_map(|h| format!("https://{h}")), 1..3),
                    0..2,
                ),
                vec((text(), text(), any::<bool>()), 0..2),
            ),
            btree_map(
                "[a-z]{1,5}(\\.[a-z0-9_]{1,6}){1,3}",
                prop_oneof!["[ -~]{0,10}", any::<i64>().prop_map(|i| i.to_string())],
                0..3,
            ),
        ),
        (
            update(),
            (
                any::<bool>(),
                vec(prop::sample::select(vec![ED25519, ECDSA]), 0..2),
            ),
            containers(),
            pods(),
            vec(
                (
                    text(),
                    any::<bool>(),
                    prop::sample::select(vec!["0644", "0600", "755", "1777"]),
                    option::of("(root|[0-9]{1,5})(:[0-9]{1,5})?"),
                ),
                0..3,
            ),
        ),
    )
        .prop_map(
            |(
                (hostname, ca_certs, network, (ntp_enabled, ntp_servers), (mirrors, creds), sysctl),
                (update, (admin_enabled, keys), containers, pods, files),
            )| {
                let sysctl: BTreeMap<String, SysctlValue> = sysctl
                    .into_iter()
                    .map(|(k, v)| (k, SysctlValue(v)))
                    .collect();
                Config {
                    hostname,
                    ca_certs,
                    network,
                    ntp: Ntp {
                        enabled: ntp_enabled,
                        servers: ntp_servers,
                    },
                    registries: Registries {
                        mirrors,
                        credentials: creds
                            .into_iter()
                            .enumerate()
                            .map(|(i, (user, secret, token))| Credential {
                                registry: format!("registry{i}.example.com:5000"),
                                username: (!token).then(|| format!("u{user}")),
                                password: (!token).then(|| secret.clone()),
                                token: token.then(|| format!("t{secret}")),
                            })
                            .collect(),
                        insecure: vec!["10.0.2.100:5000".to_string()],
                    },
                    sysctl,
                    update,
                    admin: Admin {
                        enabled: admin_enabled,
                        image: admin_enabled.then(|| "admin:1".to_string()),
                        ssh_authorized_keys: keys.into_iter().map(String::from).collect(),
                    },
                    containers,
                    pods,
                    files: files
                        .into_iter()
                        .enumerate()
                        .map(|(i, (content, b64, mode, owner))| File {
                            path: format!("/var/lib/f{i}"),
                            content: if b64 {
                                base64::Engine::encode(
                                    &base64::engine::general_purpose::STANDARD,
                                    content.as_bytes(),
                                )
                            } else {
                                content
                            },
                            encoding: if b64 {
                                FileEncoding::Base64
                            } else {
                                FileEncoding::Plain
                            },
                            mode: Parsed::new(mode),
                            owner,
                        })
                        .collect(),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failures are printed; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_configs_are_valid_and_round_trip(cfg in config()) {
        if let Err(errors) = cfg.validate() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            prop_assert!(false, "generated config is invalid:\n{}", list.join("\n"));
        }
        let text = cfg.to_toml();
        let back = match parse(text.as_bytes(), "round trip") {
            Ok(c) => c,
            Err(e) => return Err(TestCaseError::fail(format!("{e}\n{text}"))),
        };
        prop_assert_eq!(&back, &cfg, "{}", text);
        // The effective config is a fixed point.
        prop_assert_eq!(back.to_toml(), text);
    }

    #[test]
    fn parse_never_panics_on_bytes(bytes in vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes, "fuzz");
    }

    #[test]
    fn parse_never_panics_on_text(text in "\\PC{0,300}") {
        let _ = parse(text.as_bytes(), "fuzz");
        let _ = parse(format!("#cloud-config\n{text}").as_bytes(), "fuzz");
    }

    #[test]
    fn parse_never_panics_on_config_like_text(
        lines in vec(prop_oneof![
            Just("[network]".to_string()),
            Just("[[network.interfaces]]".to_string()),
            Just("[[containers]]".to_string()),
            Just("[update.window]".to_string()),
            Just("atoll:".to_string()),
            Just("write_files:".to_string()),
            Just("  - path: /var/x".to_string()),
            "[a-z_]{1,12} = (\"[ -~]{0,12}\"|[0-9]{1,6}|true|\\[\\])",
            "  ?[a-z_]{1,12}: [ -~]{0,12}",
        ], 0..20),
        cloud in any::<bool>(),
        gz in any::<bool>(),
    ) {
        let mut text = if cloud { "#cloud-config\n".to_string() } else { String::new() };
        text.push_str(&lines.join("\n"));
        let bytes = if gz {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, text.as_bytes()).unwrap();
            e.finish().unwrap()
        } else {
            text.into_bytes()
        };
        if let Err(e) = parse(&bytes, "fuzz") {
            // Every problem names its source.
            for line in e.lines() {
                prop_assert!(line.starts_with("fuzz"), "{}", line);
            }
        }
    }
}
