//! Running a process in a running container (in progress).
