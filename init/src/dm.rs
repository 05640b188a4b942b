//! Device-mapper ioctls (owned by the stage-1 work).
