//! User names for uids, through NSS (`getpwuid_r`), as `getent passwd` resolves them.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Mutex;

/// Resolves uids to user names, each uid once (a cache for one scan).
#[derive(Debug, Default)]
pub struct UserNames {
    cache: Mutex<HashMap<u32, String>>,
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

/// Runs one `getpw*_r` call (`call(pwd, buf, len, result)`) with a buffer
/// that grows on `ERANGE`, and reads the entry it found with `read`.
fn with_passwd<T>(
    call: impl Fn(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> i32,
    read: impl FnOnce(&libc::passwd) -> Option<T>,
) -> Option<T> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `pwd`, `buf` and `result` outlive the call; getpw*_r writes
        // only within `buf.len()` bytes and sets `result` to null or to `&pwd`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(&mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        return read(&pwd);
    }
}

/// One `getpwuid_r` call; `None` when the uid has no entry or NSS fails.
pub fn lookup_uid(uid: u32) -> Option<String> {
    with_passwd(
        // SAFETY: the pointers come from `with_passwd` and are valid for the call.
        |pwd, buf, len, result| unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) },
        |pwd| {
            if pwd.pw_name.is_null() {
                return None;
            }
            // SAFETY: pw_name points into the buffer, NUL-terminated by getpwuid_r.
            let name = unsafe { CStr::from_ptr(pwd.pw_name) };
            Some(name.to_string_lossy().into_owned())
        },
    )
}

/// The uid of a user name, through NSS (`getpwnam_r`).
pub fn lookup_name(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    with_passwd(
        // SAFETY: as above; `cname` outlives the call.
        |pwd, buf, len, result| unsafe { libc::getpwnam_r(cname.as_ptr(), pwd, buf, len, result) },
        |pwd| Some(pwd.pw_uid),
    )
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
    }
}
