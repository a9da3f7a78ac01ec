//! The object model and everything that reads it without running anything: the objects
//! ([`object`]), quantities ([`quantity`]), validation with field paths ([`validate`]),
//! multi-document manifests ([`manifest`]), Kubernetes' `$(VAR)` expansion ([`expand`]) and
//! cron schedules ([`cron`]).

pub mod cron;
pub mod expand;
pub mod field_ref;
pub(crate) mod jsondiff;
pub mod manifest;
pub mod object;
pub mod quantity;
pub mod validate;
