pub mod dhcp;
pub mod netlink;
pub mod plan;
pub mod sysctl;
