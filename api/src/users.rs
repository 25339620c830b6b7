//! User names for uids, through NSS (`getpwuid_r` and `getpwnam_r`, called by
//! `nix`), as `getent passwd` resolves them. A lookup may block (a directory
//! service that does not answer): collectors call it off the async thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::unistd::{Uid, User};
use tracing::debug;

/// Resolves uids to user names, each uid once (a cache for one scan). Clones
/// share the cache, so a clone can move onto a blocking thread.
#[derive(Debug, Default, Clone)]
pub struct UserNames {
    cache: Arc<Mutex<HashMap<u32, String>>>,
}

impl UserNames {
    /// A new, empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name of `uid`, or the uid as text when NSS knows no such user.
    pub fn name(&self, uid: u32) -> String {
        if let Ok(cache) = self.cache.lock() {
            if let Some(name) = cache.get(&uid) {
                return name.clone();
            }
        }
        let name = lookup_uid(uid).unwrap_or_else(|| uid.to_string());
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(uid, name.clone());
        }
        name
    }
}

/// The user name of `uid`; `None` when the uid has no entry or NSS fails.
pub fn lookup_uid(uid: u32) -> Option<String> {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(user) => user.map(|u| u.name),
        Err(e) => {
            debug!(uid, "NSS lookup failed: {e}");
            None
        }
    }
}

/// The uid of a user name; `None` when NSS knows no such user or fails.
pub fn lookup_name(name: &str) -> Option<u32> {
    match User::from_name(name) {
        Ok(user) => user.map(|u| u.uid.as_raw()),
        Err(e) => {
            debug!(name, "NSS lookup failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root_and_unknown_uids_are_numbers() {
        let names = UserNames::new();
        assert_eq!(names.name(0), "root");
        assert_eq!(names.name(3_999_999_999), "3999999999");
        assert_eq!(lookup_name("root"), Some(0));
        assert_eq!(lookup_name("no-such-user-here"), None);
        assert_eq!(lookup_name("nul\0inside"), None);
    }

    #[test]
    fn clones_share_one_cache() {
        let names = UserNames::new();
        let clone = names.clone();
        assert_eq!(clone.name(0), "root");
        let cached = names.cache.lock().map(|c| c.get(&0).cloned());
        assert_eq!(cached.ok().flatten().as_deref(), Some("root"));
    }
}
