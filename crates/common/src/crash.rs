//! Crashes a test can arm in a debug build, to show that a function dying at a given
//! point loses nothing. Release builds, which are what `sam build` deploys, have none.
//!
//! A crash point `name` is armed by creating the file `name` in the directory that
//! `CRASH_ARMED_DIR` names. The first process to reach the point removes the file and
//! aborts, as a Lambda that runs out of time or memory there would. A file holding a
//! number `n` above 1 makes the next `n` arrivals abort, one after the other; it is for
//! points that one process at a time reaches.

/// Aborts the process if the crash point `name` is armed.
pub fn crash_point(name: &str) {
    #[cfg(debug_assertions)]
    {
        let Some(dir) = std::env::var_os("CRASH_ARMED_DIR") else {
            return;
        };
        let armed = std::path::Path::new(&dir).join(name);
        let Ok(times) = std::fs::read_to_string(&armed) else {
            return;
        };
        let claimed = match times.trim().parse::<u32>() {
            Ok(left) if left > 1 => std::fs::write(&armed, (left - 1).to_string()).is_ok(),
            _ => std::fs::remove_file(&armed).is_ok(),
        };
        if claimed {
            tracing::error!(point = name, "crashing, as a test armed");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
