//! Healthchecks (in progress).
