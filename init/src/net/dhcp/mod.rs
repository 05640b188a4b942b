//! DHCPv4 client: the RFC 2131 state machine ([`client`]), the lease it
//! yields ([`lease`]), and the driver that runs it on a link ([`driver`])
//! through a packet socket ([`socket`]) with hand-built IPv4/UDP headers
//! ([`frame`]).

pub mod client;
pub mod driver;
pub mod frame;
pub mod lease;
pub mod socket;
