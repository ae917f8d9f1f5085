//! THE clock of the worker. The rules take "today" as an argument; this is
//! where it comes from: the school's local date (Europe/Amsterdam, R9), or a
//! pinned date for tests and demos.

use std::time::Duration;

use chrono::TimeZone;

/// Where "today" comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Local,
    Pinned(chrono::NaiveDate),
}

impl Clock {
    pub fn today(self) -> chrono::NaiveDate {
        match self {
            Clock::Local => local_today(),
            Clock::Pinned(d) => d,
        }
    }

    /// How long the daily job sleeps until its next run: until one minute
    /// past the next local midnight, or a day with a pinned date.
    pub fn until_next_day(self) -> Duration {
        match self {
            Clock::Pinned(_) => Duration::from_secs(24 * 3600),
            Clock::Local => until_after_local_midnight(),
        }
    }
}

/// Today's date in the Netherlands.
pub fn local_today() -> chrono::NaiveDate {
    chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::Amsterdam)
        .date_naive()
}

/// Time until one minute past the next midnight in Europe/Amsterdam.
fn until_after_local_midnight() -> Duration {
    let tz = chrono_tz::Europe::Amsterdam;
    let now = chrono::Utc::now().with_timezone(&tz);
    let next = now
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 1, 0));
    match next.and_then(|n| tz.from_local_datetime(&n).earliest()) {
        Some(at) => (at - now).to_std().unwrap_or(Duration::from_secs(3600)),
        None => Duration::from_secs(3600),
    }
}
