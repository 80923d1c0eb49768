//! The one reload path: read the configuration file again and put in force what can
//! change in place (SIGHUP).
//!
//! An invalid file changes nothing, and neither do TLS files (certificate, key, client
//! CA) that no longer load: the reload fails as a whole. Keys that only a restart can change (listen
//! addresses, threads, the dialect and the CRM's address…, see
//! [`crate::config::Config::keep_restart_only`]) keep their running values and are named
//! in a warning line. Every reload is counted (`cardgate_config_reloads_total{result}`)
//! and logged with what it changed; a successful one sets
//! `cardgate_config_last_reload_timestamp_seconds`.

use std::path::Path;

use serde_json::json;

use crate::config::{Config, LogLevel};
use crate::gateway::{Gateway, Reloaded};
use crate::logs;

/// Reload from `path` (None: the configuration came from no file, as in the demo).
pub fn reload(gw: &Gateway, path: Option<&Path>, trigger: &str) -> Result<Reloaded, String> {
    let result = match path {
        None => Err("the configuration was not read from a file".to_string()),
        Some(path) => Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| gw.reload(cfg)),
    };
    gw.observe_reload(result.is_ok());
    match &result {
        Ok(done) => {
            logs::event_with(
                LogLevel::Info,
                "configuration reloaded",
                json!({ "trigger": trigger, "changed": done.changed }),
            );
            if !done.need_restart.is_empty() {
                logs::event_with(
                    LogLevel::Warn,
                    "configuration keys changed that need a restart: left as they were",
                    json!({ "trigger": trigger, "keys": done.need_restart }),
                );
            }
        }
        Err(why) => logs::event_with(
            LogLevel::Error,
            "configuration not reloaded: nothing changed",
            json!({ "trigger": trigger, "error": why }),
        ),
    }
    result
}
