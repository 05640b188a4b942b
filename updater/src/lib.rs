//! Atoll's update agent: signed A/B whole-system updates with automatic
//! rollback (shared/DESIGN.md, "Updates").
//!
//! Not built yet: the agent, release metadata and slot writer come with the
//! updates issue. Today the boot state it will change is defined in
//! `atoll_common::bootstate`, and PID 1 already marks good boots there.
