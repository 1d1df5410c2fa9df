//! The failure report, root cause first, in the shape of torchrun's ChildFailedError.

use std::time::SystemTime;

use crate::workers::Failure;

/// `rank 1 (local_rank 1) exited with code 3` / `... was killed by signal 9 (SIGKILL)`.
pub fn describe(f: &Failure) -> String {
    let how = match (f.exit_code, f.signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => "ended for an unknown reason".into(),
    };
    format!("rank {} (local_rank {}) {how}", f.rank, f.local_rank)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

/// The message a rank left in TORCHELASTIC_ERROR_FILE (torchrun's layout or a plain string).
fn error_file_message(f: &Failure) -> Option<String> {
    let text = std::fs::read_to_string(&f.error_file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let m = &json["message"];
    m["message"].as_str().or(m.as_str()).map(str::to_string)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// UTC `YYYY-MM-DD_HH:MM:SS`.
fn utc(time: SystemTime) -> String {
    let secs = time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}_{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn render(command: &[String], failures: &[Failure]) -> String {
    let bar = "=".repeat(60);
    let mut out = format!("{bar}\n{} FAILED\n{}\n", command.join(" "), "-".repeat(60));
    let host = hostname();
    for (i, f) in failures.iter().enumerate() {
        let title = if i == 0 { "Root Cause (first observed failure)" } else { "Other Failures" };
        if i <= 1 {
            out.push_str(&format!("{title}:\n"));
        }
        let exit = match (f.exit_code, f.signal) {
            (Some(code), _) => format!("{code} (pid: {})", f.pid),
            (None, Some(sig)) => format!("-{sig} (pid: {}) signal {sig} ({})", f.pid, signal_name(sig)),
            _ => format!("unknown (pid: {})", f.pid),
        };
        let message = error_file_message(f).unwrap_or_else(|| match &f.stderr_log {
            Some(log) => format!("no error file; see the rank's stderr: {}", log.display()),
            None => "no error file; the rank's stderr went to this console".into(),
        });
        out.push_str(&format!(
            "[{i}]:\n  time      : {}\n  host      : {host}\n  rank      : {} (local_rank: {})\n  exitcode  : {exit}\n  error_file: {}\n  message   : {message}\n",
            utc(f.time),
            f.rank,
            f.local_rank,
            f.error_file.display(),
        ));
    }
    out.push_str(&format!("{bar}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01_00:00:00");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc(SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096)), "2024-02-29_12:34:56");
    }
}
