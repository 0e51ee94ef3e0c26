//! Tenant resolution and the tenant directory.

pub mod directory;
pub mod discovery;
pub mod twophase;
