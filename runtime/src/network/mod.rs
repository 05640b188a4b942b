//! Bridge networking for containers (in progress).
