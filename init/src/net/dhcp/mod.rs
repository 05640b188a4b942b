pub mod client;
pub mod frame;
pub mod lease;
pub mod socket;
