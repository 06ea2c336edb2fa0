//! hyper and axum serving across graceful upgrades.
//!
//! Not written yet: this crate exports nothing. Until it is, serve hyper connections from the
//! tracked connections of `graceful::listen` and stop them with hyper-util's graceful shutdown
//! when `graceful::upgrade_requested()` completes.
