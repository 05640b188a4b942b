//! The bridge's nftables table, spoken to the kernel as nfnetlink batches
//! built by hand (Atoll has no `nft` binary; the pure-Rust crates are GPL
//! or too young, see docs/container-networking.md).
//!
//! One table, `ip atoll`:
//!
//! ```text
//! table ip atoll {
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr SUBNET oifname != BRIDGE masquerade   # containers -> world
//!     ip saddr SUBNET oifname BRIDGE ct status dnat masquerade  # hairpin: container -> published port
//!     ip saddr 127.0.0.0/8 oifname BRIDGE masquerade # host's 127.0.0.1:PORT -> container
//!   }
//!   chain prerouting { type nat hook prerouting priority dstnat;
//!     fib daddr type local meta l4proto tcp th dport HOST dnat to ADDR:PORT  # one per published port
//!   }
//!   chain output { type nat hook output priority dstnat;  (the same rules) }
//! }
//! ```
//!
//! Every change is one batch, so the kernel applies it whole or not at all.
//! Published ports are not added and removed rule by rule: the two DNAT
//! chains are flushed and refilled from the bridge's list in one batch,
//! so no rule handles need tracking and a failed batch leaves the previous
//! rules in force.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::netlink::{Msg, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const RTN_LOCAL: u32 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 1 << 5;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

const HOOK_PREROUTING: u32 = 0;
const HOOK_OUTPUT: u32 = 3;
const HOOK_POSTROUTING: u32 = 4;
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;
const IFNAMSIZ: usize = 16;

pub const TABLE: &str = "atoll";
pub const CHAIN_POSTROUTING: &str = "postrouting";
pub const CHAIN_PREROUTING: &str = "prerouting";
pub const CHAIN_OUTPUT: &str = "output";

/// One published port as a DNAT rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dnat {
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub l4proto: u8,
    pub host_port: u16,
    pub address: Ipv4Addr,
    pub port: u16,
}

impl Dnat {
    fn describe(&self) -> String {
        let proto = if self.l4proto == 6 { "tcp" } else { "udp" };
        format!(
            "DNAT rule {proto} port {} -> {}:{}",
            self.host_port, self.address, self.port
        )
    }
}

/// A batch of nf_tables messages, each with an ack requested and a
/// description for the error if the kernel refuses it.
#[derive(Debug)]
pub struct Batch {
    msgs: Vec<(Msg, u32, String)>,
    begin_seq: u32,
}

/// `struct nfgenmsg`: family, version (NFNETLINK_V0), resource id (BE).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

impl Batch {
    /// An empty batch whose messages are numbered from `seq`.
    pub fn new(seq: u32) -> Batch {
        Batch {
            msgs: Vec::new(),
            begin_seq: seq,
        }
    }

    fn push(&mut self, ty: u16, flags: u16, what: String, f: impl FnOnce(&mut Msg)) {
        let seq = self.begin_seq.wrapping_add(1 + self.msgs.len() as u32);
        let mut msg = Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            &nfgenmsg(NFPROTO_IPV4, 0),
        );
        f(&mut msg);
        self.msgs.push((msg, seq, what));
    }

    /// The sequence numbers to expect acks for.
    pub fn seqs(&self) -> Vec<u32> {
        self.msgs.iter().map(|(_, s, _)| *s).collect()
    }

    /// What message `seq` did.
    pub fn describe(&self, seq: u32) -> Option<&str> {
        self.msgs
            .iter()
            .find(|(_, s, _)| *s == seq)
            .map(|(_, _, w)| w.as_str())
    }

    /// The last sequence number used (BATCH_END's).
    pub fn last_seq(&self) -> u32 {
        self.begin_seq.wrapping_add(1 + self.msgs.len() as u32)
    }

    /// BATCH_BEGIN, the messages, BATCH_END: what goes in one send.
    pub fn bytes(&self) -> Vec<u8> {
        let subsys = nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES);
        let mut out =
            Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, self.begin_seq, &subsys).finish();
        for (msg, _, _) in &self.msgs {
            out.extend_from_slice(&msg.clone().finish());
        }
        out.extend(Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.last_seq(), &subsys).finish());
        out
    }

    pub fn new_table(&mut self) {
        self.push(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            format!("create table ip {TABLE}"),
            |m| {
                m.attr_str(NFTA_TABLE_NAME, TABLE)
                    .attr_be32(NFTA_TABLE_FLAGS, 0);
            },
        );
    }

    pub fn delete_table(&mut self) {
        self.push(
            NFT_MSG_DELTABLE,
            0,
            format!("delete table ip {TABLE}"),
            |m| {
                m.attr_str(NFTA_TABLE_NAME, TABLE);
            },
        );
    }

    /// A base chain of type nat.
    pub fn new_nat_chain(&mut self, name: &str, hook: u32, priority: i32) {
        self.push(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            format!("create chain {name}"),
            |m| {
                m.attr_str(NFTA_CHAIN_TABLE, TABLE)
                    .attr_str(NFTA_CHAIN_NAME, name)
                    .attr_str(NFTA_CHAIN_TYPE, "nat")
                    .nest(NFTA_CHAIN_HOOK, |m| {
                        m.attr_be32(NFTA_HOOK_HOOKNUM, hook)
                            .attr_be32(NFTA_HOOK_PRIORITY, priority as u32);
                    });
            },
        );
    }

    /// Removes every rule of `chain`.
    pub fn flush_chain(&mut self, chain: &str) {
        self.push(NFT_MSG_DELRULE, 0, format!("flush chain {chain}"), |m| {
            m.attr_str(NFTA_RULE_TABLE, TABLE)
                .attr_str(NFTA_RULE_CHAIN, chain);
        });
    }

    fn rule(&mut self, chain: &str, what: String, exprs: impl FnOnce(&mut Msg)) {
        self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what, |m| {
            m.attr_str(NFTA_RULE_TABLE, TABLE)
                .attr_str(NFTA_RULE_CHAIN, chain)
                .nest(NFTA_RULE_EXPRESSIONS, exprs);
        });
    }

    /// The whole table from scratch: created if missing, deleted (with any
    /// rules an earlier run left) and created again, in one transaction.
    pub fn recreate_table(&mut self, subnet: Ipv4Net, bridge: &str) {
        self.new_table();
        self.delete_table();
        self.new_table();
        self.new_nat_chain(CHAIN_POSTROUTING, HOOK_POSTROUTING, PRIO_SRCNAT);
        self.new_nat_chain(CHAIN_PREROUTING, HOOK_PREROUTING, PRIO_DSTNAT);
        self.new_nat_chain(CHAIN_OUTPUT, HOOK_OUTPUT, PRIO_DSTNAT);
        // Leaving through any other interface.
        self.rule(
            CHAIN_POSTROUTING,
            format!("masquerade rule: ip saddr {subnet} oifname != {bridge}"),
            |m| {
                saddr_in(m, subnet);
                oifname(m, NFT_CMP_NEQ, bridge);
                expr(m, "masq", |_| {});
            },
        );
        // Hairpin: a container reaching a published port through a host
        // address comes back out of the bridge; without masquerade the
        // answer would go straight back over the bridge, not through the
        // NAT. `ct status dnat` keeps plain container-to-container traffic
        // (seen here when br_netfilter is loaded) untouched.
        self.rule(
            CHAIN_POSTROUTING,
            format!("masquerade rule: ip saddr {subnet} oifname {bridge} ct status dnat"),
            |m| {
                saddr_in(m, subnet);
                oifname(m, NFT_CMP_EQ, bridge);
                ct_status_dnat(m);
                expr(m, "masq", |_| {});
            },
        );
        // The host's own 127.0.0.1:PORT, DNATed in output, would leave
        // with a loopback source the container cannot answer.
        let loopback: Ipv4Net = "127.0.0.0/8".parse().expect("a valid prefix");
        self.rule(
            CHAIN_POSTROUTING,
            format!("masquerade rule: ip saddr {loopback} oifname {bridge}"),
            |m| {
                saddr_in(m, loopback);
                oifname(m, NFT_CMP_EQ, bridge);
                expr(m, "masq", |_| {});
            },
        );
    }

    /// Flushes the DNAT chains and fills them with `rules`.
    pub fn replace_dnat(&mut self, rules: &[Dnat]) {
        for chain in [CHAIN_PREROUTING, CHAIN_OUTPUT] {
            self.flush_chain(chain);
            for r in rules {
                self.rule(chain, format!("{} in {chain}", r.describe()), |m| {
                    dnat(m, r)
                });
            }
        }
    }
}

/// One expression: its name and attributes (an empty NFTA_EXPR_DATA for
/// `masq`, as libnftnl sends it).
fn expr(m: &mut Msg, name: &str, data: impl FnOnce(&mut Msg)) {
    m.nest(NFTA_LIST_ELEM, |m| {
        m.attr_str(NFTA_EXPR_NAME, name).nest(NFTA_EXPR_DATA, data);
    });
}

fn data_value(m: &mut Msg, ty: u16, value: &[u8]) {
    m.nest(ty, |m| {
        m.attr(NFTA_DATA_VALUE, value);
    });
}

fn cmp(m: &mut Msg, op: u32, value: &[u8]) {
    expr(m, "cmp", |m| {
        m.attr_be32(NFTA_CMP_SREG, NFT_REG_1)
            .attr_be32(NFTA_CMP_OP, op);
        data_value(m, NFTA_CMP_DATA, value);
    });
}

fn payload(m: &mut Msg, base: u32, offset: u32, len: u32) {
    expr(m, "payload", |m| {
        m.attr_be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .attr_be32(NFTA_PAYLOAD_BASE, base)
            .attr_be32(NFTA_PAYLOAD_OFFSET, offset)
            .attr_be32(NFTA_PAYLOAD_LEN, len);
    });
}

fn meta(m: &mut Msg, key: u32) {
    expr(m, "meta", |m| {
        m.attr_be32(NFTA_META_KEY, key)
            .attr_be32(NFTA_META_DREG, NFT_REG_1);
    });
}

/// `ip saddr NET`, as nft encodes it: a prefix of whole bytes is loaded
/// and compared alone; any other is loaded whole and masked.
fn saddr_in(m: &mut Msg, net: Ipv4Net) {
    let prefix = net.prefix_len();
    if prefix.is_multiple_of(8) && prefix > 0 {
        let len = usize::from(prefix / 8);
        payload(m, NFT_PAYLOAD_NETWORK_HEADER, 12, len as u32);
        cmp(m, NFT_CMP_EQ, &net.network().octets()[..len]);
        return;
    }
    payload(m, NFT_PAYLOAD_NETWORK_HEADER, 12, 4);
    expr(m, "bitwise", |m| {
        m.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .attr_be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .attr_be32(NFTA_BITWISE_LEN, 4);
        data_value(m, NFTA_BITWISE_MASK, &net.netmask().octets());
        data_value(m, NFTA_BITWISE_XOR, &[0; 4]);
    });
    cmp(m, NFT_CMP_EQ, &net.network().octets());
}

/// `ct status dnat`: the connection's destination was NATed.
fn ct_status_dnat(m: &mut Msg) {
    expr(m, "ct", |m| {
        m.attr_be32(NFTA_CT_KEY, NFT_CT_STATUS)
            .attr_be32(NFTA_CT_DREG, NFT_REG_1);
    });
    expr(m, "bitwise", |m| {
        m.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .attr_be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .attr_be32(NFTA_BITWISE_LEN, 4);
        data_value(m, NFTA_BITWISE_MASK, &IPS_DST_NAT.to_ne_bytes());
        data_value(m, NFTA_BITWISE_XOR, &[0; 4]);
    });
    cmp(m, NFT_CMP_NEQ, &[0; 4]);
}

/// `oifname [!=] NAME`: the name NUL-padded to IFNAMSIZ, as nft does.
fn oifname(m: &mut Msg, op: u32, name: &str) {
    let mut padded = [0u8; IFNAMSIZ];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    meta(m, NFT_META_OIFNAME);
    cmp(m, op, &padded);
}

/// `fib daddr type local meta l4proto P th dport H dnat ip to A:C`.
fn dnat(m: &mut Msg, r: &Dnat) {
    expr(m, "fib", |m| {
        m.attr_be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR)
            .attr_be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
            .attr_be32(NFTA_FIB_DREG, NFT_REG_1);
    });
    cmp(m, NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
    meta(m, NFT_META_L4PROTO);
    cmp(m, NFT_CMP_EQ, &[r.l4proto]);
    payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    cmp(m, NFT_CMP_EQ, &r.host_port.to_be_bytes());
    for (reg, value) in [
        (NFT_REG_1, &r.address.octets()[..]),
        (NFT_REG_2, &r.port.to_be_bytes()[..]),
    ] {
        expr(m, "immediate", |m| {
            m.attr_be32(NFTA_IMMEDIATE_DREG, reg);
            data_value(m, NFTA_IMMEDIATE_DATA, value);
        });
    }
    expr(m, "nat", |m| {
        m.attr_be32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
            .attr_be32(NFTA_NAT_FAMILY, NFPROTO_IPV4 as u32)
            .attr_be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1)
            .attr_be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2)
            .attr_be32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    // What `nft --debug=mnl -f` (nftables 1.0.x, this build host) sends for
    // the same table, as bytes after the nlmsghdr (the nfgenmsg and the
    // attributes); the nft input is in each constant's comment. Made with:
    //   unshare -n nft --debug=mnl -f rules.nft
    /// table ip atoll
    const TABLE: &str = "020000000a00010061746f6c6c0000000800020000000000";
    /// chain postrouting { type nat hook postrouting priority 100; }
    const CHAIN_POSTROUTING: &str = concat!(
        "020000000a00010061746f6c6c00000010000300706f7374726f7574696e6700080007006e617400",
        "1400048008000100000000040800020000000064",
    );
    /// chain prerouting { type nat hook prerouting priority -100; }
    const CHAIN_PREROUTING: &str = concat!(
        "020000000a00010061746f6c6c0000000f000300707265726f7574696e670000080007006e617400",
        "14000480080001000000000008000200ffffff9c",
    );
    /// chain output { type nat hook output priority -100; }
    const CHAIN_OUTPUT: &str = concat!(
        "020000000a00010061746f6c6c0000000b0003006f75747075740000080007006e61740014000480",
        "080001000000000308000200ffffff9c",
    );
    /// add rule ip atoll postrouting ip saddr 10.88.0.0/16 oifname != "atoll0" masquerade
    const RULE_MASQ_LEAVING: &str = concat!(
        "020000000a00010061746f6c6c00000010000200706f7374726f7574696e6700d400048034000180",
        "0c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c",
        "08000400000000022c00018008000100636d70002000028008000100000000010800020000000000",
        "0c000380060001000a58000024000180090001006d65746100000000140002800800020000000007",
        "08000100000000013800018008000100636d70002c00028008000100000000010800020000000001",
        "180003801400010061746f6c6c300000000000000000000014000180090001006d61737100000000",
        "04000280",
    );
    /// add rule ip atoll postrouting ip saddr 10.88.0.0/16 oifname "atoll0" ct status dnat masquerade
    const RULE_MASQ_HAIRPIN: &str = concat!(
        "020000000a00010061746f6c6c00000010000200706f7374726f7574696e67006401048034000180",
        "0c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c",
        "08000400000000022c00018008000100636d70002000028008000100000000010800020000000000",
        "0c000380060001000a58000024000180090001006d65746100000000140002800800020000000007",
        "08000100000000013800018008000100636d70002c00028008000100000000010800020000000000",
        "180003801400010061746f6c6c300000000000000000000020000180070001006374000014000280",
        "08000200000000020800010000000001440001800c00010062697477697365003400028008000100",
        "00000001080002000000000108000300000000040c00048008000100200000000c00058008000100",
        "000000002c00018008000100636d700020000280080001000000000108000200000000010c000380",
        "080001000000000014000180090001006d6173710000000004000280",
    );
    /// add rule ip atoll postrouting ip saddr 127.0.0.0/8 oifname "atoll0" masquerade
    const RULE_MASQ_LOOPBACK: &str = concat!(
        "020000000a00010061746f6c6c00000010000200706f7374726f7574696e6700d400048034000180",
        "0c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c",
        "08000400000000012c00018008000100636d70002000028008000100000000010800020000000000",
        "0c000380050001007f00000024000180090001006d65746100000000140002800800020000000007",
        "08000100000000013800018008000100636d70002c00028008000100000000010800020000000000",
        "180003801400010061746f6c6c300000000000000000000014000180090001006d61737100000000",
        "04000280",
    );
    /// add rule ip atoll prerouting fib daddr type local meta l4proto tcp th dport 8080 dnat ip to 10.88.0.2:80
    const RULE_DNAT_TCP: &str = concat!(
        "020000000a00010061746f6c6c0000000f000200707265726f7574696e6700009801048028000180",
        "08000100666962001c0002800800030000000002080002000000000308000100000000012c000180",
        "08000100636d700020000280080001000000000108000200000000000c0003800800010002000000",
        "24000180090001006d6574610000000014000280080002000000001008000100000000012c000180",
        "08000100636d700020000280080001000000000108000200000000000c0003800500010006000000",
        "340001800c0001007061796c6f616400240002800800010000000001080002000000000208000300",
        "0000000208000400000000022c00018008000100636d700020000280080001000000000108000200",
        "000000000c000380060001001f9000002c0001800e000100696d6d65646961746500000018000280",
        "08000100000000010c000280080001000a5800022c0001800e000100696d6d656469617465000000",
        "1800028008000100000000020c000280060001000050000038000180080001006e6174002c000280",
        "08000100000000010800020000000002080003000000000108000500000000020800070000000002",
    );
    /// add rule ip atoll prerouting fib daddr type local meta l4proto udp th dport 5353 dnat ip to 10.88.1.7:53
    const RULE_DNAT_UDP: &str = concat!(
        "020000000a00010061746f6c6c0000000f000200707265726f7574696e6700009801048028000180",
        "08000100666962001c0002800800030000000002080002000000000308000100000000012c000180",
        "08000100636d700020000280080001000000000108000200000000000c0003800800010002000000",
        "24000180090001006d6574610000000014000280080002000000001008000100000000012c000180",
        "08000100636d700020000280080001000000000108000200000000000c0003800500010011000000",
        "340001800c0001007061796c6f616400240002800800010000000001080002000000000208000300",
        "0000000208000400000000022c00018008000100636d700020000280080001000000000108000200",
        "000000000c0003800600010014e900002c0001800e000100696d6d65646961746500000018000280",
        "08000100000000010c000280080001000a5801072c0001800e000100696d6d656469617465000000",
        "1800028008000100000000020c000280060001000035000038000180080001006e6174002c000280",
        "08000100000000010800020000000002080003000000000108000500000000020800070000000002",
    );
    /// add rule ip atoll postrouting ip saddr 10.88.0.0/20 oifname != "atoll0" masquerade
    const RULE_MASQ_LEAVING_20: &str = concat!(
        "020000000a00010061746f6c6c00000010000200706f7374726f7574696e67001801048034000180",
        "0c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c",
        "0800040000000004440001800c000100626974776973650034000280080001000000000108000200",
        "0000000108000300000000040c00048008000100fffff0000c00058008000100000000002c000180",
        "08000100636d700020000280080001000000000108000200000000000c000380080001000a580000",
        "24000180090001006d65746100000000140002800800020000000007080001000000000138000180",
        "08000100636d70002c00028008000100000000010800020000000001180003801400010061746f6c",
        "6c300000000000000000000014000180090001006d6173710000000004000280",
    );

    /// The messages of a batch: (type, bytes after the nlmsghdr).
    fn split(bytes: &[u8]) -> Vec<(u16, String)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([rest[4], rest[5]]);
            out.push((ty, hex::encode(&rest[16..len])));
            rest = &rest[len..];
        }
        out
    }

    fn nft_type(msg: u16) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | msg
    }

    #[test]
    fn table_chains_and_masquerade_as_nft_sends_them() {
        let mut b = Batch::new(100);
        b.recreate_table("10.88.0.0/16".parse().unwrap(), "atoll0");
        let msgs = split(&b.bytes());
        let types: Vec<u16> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            [
                vec![NFNL_MSG_BATCH_BEGIN],
                [NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE]
                    .map(nft_type)
                    .to_vec(),
                vec![nft_type(NFT_MSG_NEWCHAIN); 3],
                vec![nft_type(NFT_MSG_NEWRULE); 3],
                vec![NFNL_MSG_BATCH_END],
            ]
            .concat()
        );
        // BATCH_BEGIN/END name the nftables subsystem, big-endian.
        assert_eq!(msgs[0].1, "0000000a");
        assert_eq!(msgs[10].1, "0000000a");
        assert_eq!(msgs[1].1, TABLE);
        assert_eq!(msgs[3].1, TABLE);
        assert_eq!(msgs[4].1, CHAIN_POSTROUTING);
        assert_eq!(msgs[5].1, CHAIN_PREROUTING);
        assert_eq!(msgs[6].1, CHAIN_OUTPUT);
        assert_eq!(msgs[7].1, RULE_MASQ_LEAVING);
        assert_eq!(msgs[8].1, RULE_MASQ_HAIRPIN);
        assert_eq!(msgs[9].1, RULE_MASQ_LOOPBACK);
        assert_eq!(b.seqs(), (101..110).collect::<Vec<_>>());
        assert_eq!(b.last_seq(), 110);
        assert_eq!(b.describe(102), Some("delete table ip atoll"));
    }

    #[test]
    fn prefix_not_on_a_byte_boundary_is_masked() {
        let mut b = Batch::new(0);
        b.recreate_table("10.88.0.0/20".parse().unwrap(), "atoll0");
        assert_eq!(split(&b.bytes())[7].1, RULE_MASQ_LEAVING_20);
    }

    #[test]
    fn dnat_rules_as_nft_sends_them() {
        let rules = [
            Dnat {
                l4proto: 6,
                host_port: 8080,
                address: Ipv4Addr::new(10, 88, 0, 2),
                port: 80,
            },
            Dnat {
                l4proto: 17,
                host_port: 5353,
                address: Ipv4Addr::new(10, 88, 1, 7),
                port: 53,
            },
        ];
        let mut b = Batch::new(0);
        b.replace_dnat(&rules);
        let msgs = split(&b.bytes());
        assert_eq!(msgs.len(), 8);
        // Flush = DELRULE naming only the table and the chain.
        assert_eq!(msgs[1].0, nft_type(NFT_MSG_DELRULE));
        assert_eq!(
            msgs[1].1,
            "020000000a00010061746f6c6c0000000f000200707265726f7574696e670000"
        );
        assert_eq!(msgs[2].1, RULE_DNAT_TCP);
        assert_eq!(msgs[3].1, RULE_DNAT_UDP);
        // The output chain gets the same rules.
        assert_eq!(msgs[4].0, nft_type(NFT_MSG_DELRULE));
        let output = |s: &str| {
            s.replace(
                "0f000200707265726f7574696e670000",
                "0b0002006f75747075740000",
            )
        };
        assert_eq!(msgs[5].1, output(RULE_DNAT_TCP));
        assert_eq!(msgs[6].1, output(RULE_DNAT_UDP));
        assert_eq!(
            b.describe(3),
            Some("DNAT rule udp port 5353 -> 10.88.1.7:53 in prerouting")
        );
    }
}
