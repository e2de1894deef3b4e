//! One service, locked: the session every command that touches a service's
//! databases works through (open, lock, recover, inspect, apply), taking its
//! snapshots, and reading its status.

pub mod deployment_lock;
pub mod rehearse;
pub mod restore_point;
pub mod session;
pub mod status;
pub mod take;
