//! Kernel module coldplug (owned by the stage-1 work).
